"""Rows over several seeds: mean ± std, gain over the baseline and a paired test over users.

The test pairs users, not runs: each user's metric is averaged over a row's seeds, and a paired
t-test (scipy) asks whether the per-user differences to the baseline average zero. With three
seeds a test over runs would have two degrees of freedom; over users it has hundreds, and it
still reflects seed noise through the per-user averages.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from scipy import stats

from distillrec.train.metrics import metric_per_example


def aggregate(runs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Mean of every metric and cost over runs; `test_std` is the standard deviation over runs."""
    first = next(iter(runs.values()))
    row: dict[str, Any] = {}
    for section in ("valid", "test", "cost"):
        row[section] = {key: float(np.mean([r[section][key] for r in runs.values()]))
                        for key, value in first[section].items() if isinstance(value, (int, float))}
    row["test_std"] = {key: float(np.std([r["test"][key] for r in runs.values()], ddof=1)) if len(runs) > 1 else 0.0
                       for key in first["test"]}
    row["runs"] = runs
    return row


def per_user(ranks: list[np.ndarray], metric: str) -> np.ndarray:
    """[users] metric of each user averaged over runs."""
    return np.mean([metric_per_example(torch.as_tensor(r), metric).numpy() for r in ranks], axis=0)


def paired_comparison(baseline: list[np.ndarray], other: list[np.ndarray], metric: str,
                      mask: np.ndarray | None = None) -> dict[str, float | None]:
    """Relative gain of the mean, its 95 % confidence interval and the two-sided paired t-test p-value.

    The interval is the paired t interval of the mean per-user difference, divided by the
    baseline's mean. `mask` [users] restricts both to a subset of users (a bucket); an empty subset
    gives None, and a single user no p-value or interval.
    """
    base, new = per_user(baseline, metric), per_user(other, metric)
    if mask is not None:
        base, new = base[mask], new[mask]
    out: dict[str, float | None] = {"metric": metric, "gain": None, "p_value": None, "ci_low": None, "ci_high": None}
    if not len(base):
        return out
    scale = base.mean()
    out["gain"] = float(new.mean() / scale - 1) if scale > 0 else None
    diff = new - base
    if len(diff) < 2 or np.allclose(diff, 0):
        return out
    p = float(stats.ttest_rel(new, base).pvalue)
    out["p_value"] = None if math.isnan(p) else p
    if scale > 0:
        half = stats.t.ppf(0.975, len(diff) - 1) * diff.std(ddof=1) / math.sqrt(len(diff))
        out["ci_low"], out["ci_high"] = float((diff.mean() - half) / scale), float((diff.mean() + half) / scale)
    return out
