"""Rows over several seeds: mean ± std, gain over the baseline, paired tests over users, and the
multiple-comparison correction over a table's rows.

The tests pair users, not runs: each user's metric is averaged over a row's seeds, and a paired
t-test (scipy) asks whether the per-user differences to the baseline average zero. With three
seeds a test over runs would have two degrees of freedom; over users it has hundreds, and it
still reflects seed noise through the per-user averages.

Per-user NDCG@10 is mostly zeros (both rows miss), so the t-test's normal approximation is checked
by a paired sign-flip permutation test on the same differences (`p_perm`): it assumes nothing about
their distribution, only that under the null each user's difference is as likely to be flipped.
The headline keeps the t-test's p (exact to any size, and with hundreds of users the mean of a
bounded difference is close to normal); `p_perm` beside it shows where the two disagree. Rows of
one table are several tests against one baseline: `holm` gives Holm–Bonferroni adjusted p-values.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from scipy import stats

from distillrec.train.metrics import metric_per_example

PERMUTATION_SEED = 0  # the sign flips are drawn from a fixed generator: the same p on every run
PERMUTATION_CELLS = 2**24  # flips x users scored at once (~128 MB of float64)


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


def sign_flip_p(diff: np.ndarray, resamples: int) -> float:
    """Two-sided p of a paired sign-flip permutation test of mean(diff) = 0 (scipy). Users whose
    difference is zero flip to themselves, so only the others are resampled (same p, less work)."""
    moved = diff[diff != 0]
    if not len(moved):
        return 1.0
    result = stats.permutation_test((moved,), np.mean, permutation_type="samples", vectorized=True,
                                    n_resamples=resamples, batch=max(1, PERMUTATION_CELLS // len(moved)),
                                    rng=np.random.default_rng(PERMUTATION_SEED))
    return float(result.pvalue)


def paired_comparison(baseline: list[np.ndarray], other: list[np.ndarray], metric: str,
                      mask: np.ndarray | None = None, resamples: int = 0) -> dict[str, float | None]:
    """Relative gain of the mean, its 95 % confidence interval and the two-sided paired t-test p-value.

    The interval is scipy's paired t interval of the mean per-user difference, divided by the
    baseline's mean. `mask` [users] restricts both to a subset of users (a bucket); an empty subset
    gives None, and a single user no p-value or interval. `resamples` > 0 adds `p_perm`, the
    sign-flip permutation test's p-value (`sign_flip_p`).
    """
    base, new = per_user(baseline, metric), per_user(other, metric)
    if mask is not None:
        base, new = base[mask], new[mask]
    out: dict[str, float | None] = {"metric": metric, "gain": None, "p_value": None, "ci_low": None, "ci_high": None}
    if resamples:
        out["p_perm"] = None
    if not len(base):
        return out
    scale = base.mean()
    out["gain"] = float(new.mean() / scale - 1) if scale > 0 else None
    diff = new - base
    if len(diff) < 2 or np.allclose(diff, 0):
        return out
    test = stats.ttest_rel(new, base)
    out["p_value"] = None if math.isnan(test.pvalue) else float(test.pvalue)
    if scale > 0:
        low, high = test.confidence_interval(0.95)
        out["ci_low"], out["ci_high"] = float(low / scale), float(high / scale)
    if resamples:
        out["p_perm"] = sign_flip_p(diff, resamples)
    return out


def holm(pvalues: dict[str, float | None]) -> dict[str, float | None]:
    """Holm–Bonferroni adjusted p-values of one family of tests (None: not tested, not counted).

    The i-th smallest of m p-values is multiplied by m - i + 1, kept monotone and capped at 1: a
    row is significant at level a after the correction when its adjusted p is below a, with the
    family-wise error rate at most a whatever the tests' dependence (all rows share the baseline).
    """
    tested = sorted((p, name) for name, p in pvalues.items() if p is not None)
    adjusted: dict[str, float | None] = dict.fromkeys(pvalues)
    running = 0.0
    for i, (p, name) in enumerate(tested):
        running = max(running, min(1.0, (len(tested) - i) * p))
        adjusted[name] = running
    return adjusted
