"""Where quality comes from: test metrics within buckets of test users.

Each test example is one user. `tail`/`head` split them by the target item's training popularity
(`SplitData.training_counts()`: occurrences before validation), `short`/`long` by the length of the
history before the target. An LLM teacher's knowledge of items is expected to show first on tail
items and short histories, where the interactions alone say little.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from distillrec.data.splitdata import SplitData
from distillrec.evaluate.compare import paired_comparison, per_user
from distillrec.params import BucketParams

BUCKETS = ("tail", "head", "short", "long")


def tail_items(counts: np.ndarray, tail_share: float) -> np.ndarray:
    """[N + 1] bool: the floor(tail_share * N) items with the fewest training occurrences, and every
    item never seen in training.

    Items are ranked by (count, item_idx), so ties at the boundary are broken by item_idx and the
    split is deterministic. Index 0 (padding) is never tail.
    """
    n = len(counts) - 1
    items = np.arange(1, n + 1)
    order = items[np.lexsort((items, counts[1:]))]
    tail = np.zeros(n + 1, dtype=bool)
    tail[order[:math.floor(tail_share * n + 1e-9)]] = True
    tail[1:] |= counts[1:] == 0
    return tail


def assign_buckets(data: SplitData, cfg: BucketParams) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Boolean masks [test users] per bucket (aligned with `data.targets("test")`) and a summary:
    user counts and the thresholds used (eval.json's top-level `buckets`)."""
    _, positions, targets = data.targets("test")
    counts = data.training_counts()
    tail = tail_items(counts, cfg.tail_share)
    in_tail = tail[targets]
    short = positions <= cfg.short_history
    masks = {"tail": in_tail, "head": ~in_tail, "short": short, "long": ~short}
    info = {"users": {name: int(mask.sum()) for name, mask in masks.items()},
            "tail_share": cfg.tail_share, "tail_items": int(tail.sum()),
            "tail_max_count": int(counts[tail].max()) if tail.any() else None,
            "short_history": cfg.short_history}
    return masks, info


def bucket_metrics(ranks: list[np.ndarray], masks: dict[str, np.ndarray], metrics: list[str],
                   listed: int | None = None) -> dict[str, dict[str, Any]]:
    """Per bucket: its user count and the mean of each metric over its users (and over runs).

    `ranks`: one [users] array per run (a miss may be any rank beyond the largest k). `listed`: a
    ranker that lists only its top K has undefined (None) metrics@k for k > K. An empty bucket has
    None metrics.
    """
    values = {m: per_user(ranks, m) for m in metrics}
    table: dict[str, dict[str, Any]] = {}
    for bucket, mask in masks.items():
        entry: dict[str, Any] = {"users": int(mask.sum())}
        for m in metrics:
            k = int(m.split("@")[1])
            defined = mask.any() and (listed is None or k <= listed)
            entry[m] = float(values[m][mask].mean()) if defined else None
        table[bucket] = entry
    return table


def compare_buckets(baseline: list[np.ndarray], other: list[np.ndarray], metric: str,
                    masks: dict[str, np.ndarray]) -> dict[str, dict[str, float | None]]:
    """Per bucket: gain over the baseline and paired t-test p-value on `metric`, over its users."""
    result = {}
    for bucket, mask in masks.items():
        cmp = paired_comparison(baseline, other, metric, mask)
        result[bucket] = {"gain": cmp["gain"], "p": cmp["p_value"]}
    return result


@dataclass(frozen=True)
class BucketReport:
    """Bucket metrics of every row: `rows[row][bucket]` = {users, <metric@k>..., [gain, p, p_holm]}.

    `gain`, `p` and Holm's `p_holm` over the bucket's rows (on `metric`, against the baseline) exist
    for the rows compared to it.
    """

    info: dict[str, Any]
    metric: str
    metrics: list[str]
    rows: dict[str, dict[str, dict[str, Any]]]

    def headline(self, row: str) -> dict[str, dict[str, Any]]:
        """eval.json's per-row `buckets`: the compare metric (and gain, p) per bucket."""
        return {bucket: {key: entry[key] for key in (self.metric, "gain", "p", "p_holm") if key in entry}
                for bucket, entry in self.rows[row].items()}

    def records(self) -> list[dict[str, Any]]:
        """One flat record per (row, bucket): row, bucket, users, metrics, gain, p, p_holm."""
        return [{"row": row, "bucket": bucket, "users": entry["users"],
                 **{m: entry[m] for m in self.metrics}, "gain": entry.get("gain"), "p": entry.get("p"),
                 "p_holm": entry.get("p_holm")}
                for row, buckets in self.rows.items() for bucket, entry in buckets.items()]
