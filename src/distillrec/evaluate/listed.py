"""Metrics of a ranker that only lists its top K (an exported teacher), on the students' protocol.

The rank of a listed target is 1 + the listed items scoring at least as high (ties count against
the model, history items dropped when the protocol excludes them); an unlisted target ranks beyond
K, so metrics@k are exact for k <= K and undefined (None) for k > K.
"""

from __future__ import annotations

import logging

import numpy as np
import polars as pl
import torch

from distillrec.data.splitdata import SplitData
from distillrec.errors import DataError
from distillrec.teachers.export import TeacherExport
from distillrec.train.metrics import metrics_from_ranks

log = logging.getLogger(__name__)


def listed_ranks(items: np.ndarray, scores: np.ndarray, targets: np.ndarray,
                 excluded: np.ndarray | None = None) -> np.ndarray:
    """1-based rank of each target in its list [E, K]; 0 where the target is not listed.

    `excluded` [E, K] marks listed items removed from the ranking (never the target itself).
    """
    hit = items == targets[:, None]
    listed = hit.any(axis=1)
    target_score = np.where(hit, scores, -np.inf).max(axis=1)
    beats = (scores >= target_score[:, None]) & ~hit
    if excluded is not None:
        beats &= ~excluded
    return np.where(listed, 1 + beats.sum(axis=1), 0)


def _history_mask(data: SplitData, users: np.ndarray, positions: np.ndarray, items: np.ndarray) -> np.ndarray:
    """[E, K]: listed items the user interacted with before the target."""
    row, item = data.history_sets(users, positions)
    width = data.n_items + 1
    seen = np.unique(row.astype(np.int64) * width + item)
    keys = np.arange(len(items))[:, None] * width + items
    return np.isin(keys, seen)


def listed_metrics(export: TeacherExport, data: SplitData, split: str, ks: list[int],
                   exclude_history: bool) -> tuple[np.ndarray, dict[str, float | None]]:
    """Per-example ranks (0 = beyond K) of `split`, aligned with `data.targets(split)`, and metrics."""
    users, positions, targets = data.targets(split)
    topk = export.topk(split)
    if not len(topk.users):  # e.g. an imported DLLM2Rec teacher: training rows only
        log.warning("%s has no %s rows: its %s metrics are undefined", export.folder, split, split)
        return np.zeros(len(users), np.int64), dict.fromkeys(metrics_from_ranks(torch.ones(1), ks))
    expected = pl.DataFrame({"user_idx": users, "position": positions})
    got = pl.DataFrame({"user_idx": topk.users, "position": topk.positions})
    if not expected.equals(got):
        missing = expected.join(got, on=["user_idx", "position"], how="anti")
        raise DataError(f"{export.folder}: the {split} top-K does not cover the {split} examples "
                        f"({missing.height} missing, e.g. {missing.row(0) if missing.height else None}; "
                        f"{got.height} rows for {expected.height} examples): re-run export_teacher")
    excluded = _history_mask(data, users, positions, topk.items) if exclude_history else None
    ranks = listed_ranks(topk.items, topk.scores, targets, excluded)
    k_max = topk.items.shape[1]
    beyond = torch.as_tensor(np.where(ranks == 0, data.n_items + 1, ranks))
    metrics: dict[str, float | None] = {}
    for k in ks:
        exact = metrics_from_ranks(beyond, [k]) if k <= k_max else dict.fromkeys(metrics_from_ranks(beyond, [k]))
        metrics.update(exact)
    if max(ks) > k_max:
        log.warning("%s lists %d items: metrics@k for k > %d are undefined", export.folder, k_max, k_max)
    return ranks, metrics
