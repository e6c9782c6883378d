"""Full-ranking metrics. Ties count against the model: rank = 1 + #other items scoring >= target.

With that rule a constant scorer ranks every target last, so it cannot look good by accident.
"""

from __future__ import annotations

import torch


def target_ranks(scores: torch.Tensor, targets: torch.Tensor,
                 exclude: torch.Tensor | None = None) -> torch.Tensor:
    """1-based rank of each target among items 1..N of `scores` [B, N + 1] (column 0 = padding).

    `exclude` [B, N + 1] marks items removed from the ranking (e.g. the user's history); the
    target itself is never removed. A NaN target score ranks last.
    """
    items = scores[:, 1:]
    target_score = scores.gather(1, targets[:, None])
    beats = items >= target_score
    if exclude is not None:
        beats &= ~exclude[:, 1:]
    beats.scatter_(1, (targets - 1)[:, None], False)
    ranks = 1 + beats.sum(dim=1)
    return torch.where(target_score[:, 0].isnan(), items.shape[1], ranks)


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
