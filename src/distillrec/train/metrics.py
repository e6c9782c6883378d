"""Full-ranking metrics from 1-based ranks (`train.ranking` computes them; ties count against the
model, so a constant scorer ranks every target last and cannot look good by accident).
"""

from __future__ import annotations

import torch


def metric_per_example(ranks: torch.Tensor, name: str) -> torch.Tensor:
    """Per-example value of a metric named like `ndcg@10` (one relevant item per example)."""
    metric, k = name.split("@")
    ranks = ranks.double()
    value = {"hr": torch.ones_like(ranks), "ndcg": 1.0 / torch.log2(ranks + 1), "mrr": 1.0 / ranks}[metric]
    return torch.where(ranks <= int(k), value, 0.0)


def metrics_from_ranks(ranks: torch.Tensor, ks: list[int]) -> dict[str, float]:
    """Mean HR@K, NDCG@K and MRR@K over examples."""
    return {f"{metric}@{k}": metric_per_example(ranks, f"{metric}@{k}").mean().item()
            for k in ks for metric in ("hr", "ndcg", "mrr")}
