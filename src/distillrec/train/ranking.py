"""Rank every target of a split against the full catalogue with a student (or any scorer).

Scores are computed a slice of the catalogue at a time (`SCORE_BUDGET` floats per slice), so
ranking 10^6 items needs memory for one slice, not for batch x catalogue. The rank is exact (ties
count against the model, see `chunked_ranks`): a first pass reads each target's score from the slice
that holds it, a second counts the items that score at least as much. A catalogue that fits one
slice is ranked in one pass; `rank_split` shrinks
its batch (down to `MIN_ROWS` histories) so that a catalogue of up to SCORE_BUDGET / MIN_ROWS items
(262,144) still does. A scorer that gives every history the same scores (popularity) is ranked by
a sort and a binary search per target instead.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

from distillrec.data.splitdata import SplitData
from distillrec.students.base import Student, trim_padding

SCORE_BUDGET = 2 ** 26  # scores held at once while ranking (256 MiB of float32)
MIN_ROWS = 256          # the smallest batch rank_split shrinks to so that the catalogue fits one slice
SAMPLE_STRIDE = 16      # top_k: every 16th score of a row bounds its k-th largest from below


@dataclass(frozen=True)
class Scorer:
    """encode: left-padded histories [B, L] -> what `scores` reads (a student's states);
    scores: (encoded, start, stop) -> [B, stop - start] scores of items start..stop-1 (item 0 = padding);
    shared: the scores [N + 1] of every history when they do not depend on it (popularity), else None."""

    encode: Callable[[torch.Tensor], torch.Tensor]
    scores: Callable[[torch.Tensor, int, int], torch.Tensor]
    n_items: int
    shared: torch.Tensor | None = None

    def __call__(self, history: torch.Tensor) -> torch.Tensor:
        """Scores [B, N + 1] of the whole catalogue."""
        return self.scores(self.encode(history), 0, self.n_items + 1)


def student_scorer(model: Student) -> Scorer:
    return Scorer(model.user_states, model.score, model.n_items)


def table_scorer(table: torch.Tensor) -> Scorer:
    """The same scores [N + 1] for every history (popularity)."""
    return Scorer(lambda history: table.to(history.device).expand(len(history), -1),
                  lambda every, start, stop: every[:, start:stop], len(table) - 1, table)


def unique_pairs(row: torch.Tensor, item: torch.Tensor, columns: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(row, item) pairs with repeats dropped: an item seen twice in a history is removed once."""
    pairs = torch.unique(row * columns + item)
    return pairs // columns, pairs % columns


def shared_ranks(table: torch.Tensor, targets: torch.Tensor,
                 exclude: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
    """`chunked_ranks` when every history has the scores `table` [N + 1]: the items scoring at least
    the target's score are counted by a binary search in the sorted table (O(B log N), not B x N),
    then the excluded (row, item) pairs among them are taken off."""
    table = table.to(targets.device)
    target_score = table[targets]
    beats = len(table) - 2 - torch.searchsorted(table[1:].sort().values, target_score)  # the target not counted
    if exclude is not None:
        row, item = unique_pairs(*exclude, len(table))
        counted = (item > 0) & (item != targets[row]) & (table[item] >= target_score[row])
        beats = beats - torch.bincount(row[counted], minlength=len(targets))
    return torch.where(target_score.isnan(), len(table) - 1, 1 + beats)


@functools.cache
def _pool(threads: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(threads, thread_name_prefix="distillrec-rows")


def _count_rows(rows: np.ndarray, limits: np.ndarray) -> np.ndarray:
    return np.fromiter((np.count_nonzero(r >= t) for r, t in zip(rows, limits)), dtype=np.int64, count=len(rows))


def count_at_least(scores: torch.Tensor, threshold: torch.Tensor) -> torch.Tensor:
    """Per row of `scores` [B, W], how many are >= threshold[row]. On CPU a row at a time through
    numpy's count_nonzero, blocks of rows on torch.get_num_threads() threads at once (numpy's loops
    release the GIL): torch's bool reduction `(scores >= t).sum(1)` took 1.7 ms per row of 200k
    items on one core, this 0.1 ms, and it was most of the cost of ranking a large catalogue."""
    if scores.device.type != "cpu":
        return (scores >= threshold[:, None]).sum(1)
    rows, limits = scores.detach().numpy(), threshold.detach().numpy()
    threads = min(torch.get_num_threads(), len(rows))
    if threads <= 1:
        return torch.from_numpy(_count_rows(rows, limits))
    blocks = _pool(threads).map(_count_rows, np.array_split(rows, threads), np.array_split(limits, threads))
    return torch.from_numpy(np.concatenate(list(blocks)))


def _top_rows(k: int, rows: np.ndarray, out: np.ndarray, totals: np.ndarray) -> None:
    """Writes the column indices of each row's k largest values (by value descending, ties by lower
    index) into `out` [b, k] and each row's log-sum-exp, taken from its largest value, into `totals`."""
    shifted = np.empty(rows.shape[1], dtype=rows.dtype)   # one row's exp(score - max), reused
    for i, row in enumerate(rows):
        sample = row[::SAMPLE_STRIDE]
        floor = np.partition(sample, len(sample) - k)[len(sample) - k] if len(sample) >= k else -np.inf
        candidates = np.flatnonzero(row >= floor)   # at least the k sampled ones, ~k x stride in all
        if len(candidates) < k:   # only when the bound is NaN
            raise ValueError(f"top_k: a row of scores holds NaN ({np.isnan(row).sum()} of {len(row)})")
        values = row[candidates]
        kth = np.partition(values, len(values) - k)[len(values) - k]
        chosen = np.concatenate([candidates[values > kth], candidates[values == kth]])[:k]
        out[i] = chosen[np.lexsort((chosen, -row[chosen]))]
        top = row[out[i, 0]]
        np.exp(np.subtract(row, top, out=shifted), out=shifted)
        totals[i] = top + np.log(shifted.sum())


def top_k(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(values [B, k], indices [B, k], logsumexp [B]) of each row: its k largest scores, descending,
    ties by lower index, and the log-sum-exp of all its scores.

    On CPU each row's k-th largest score is bounded from below by the k-th largest of every
    16th score, only the scores above that bound (~16 k) are selected exactly, and the log-sum-exp
    is taken while the row is still in cache: at 200k items and k = 100, 0.42 ms per row against
    0.57 ms for torch.topk + torch.logsumexp on 2 threads. One thread: with blocks of rows on two
    threads (as `count_at_least`) an export's resident memory grew ~25 MB per batch of 256 rows (to
    11.7 GiB) until its part was written, which one thread and torch.topk did not. NaN scores are never
    selected (and make the row's log-sum-exp NaN, which the export rejects); a row with too many of
    them is a ValueError."""
    if scores.device.type != "cpu":
        top = scores.topk(k, dim=1)
        return top.values, top.indices, torch.logsumexp(scores, dim=1)
    indices, totals = torch.empty(len(scores), k, dtype=torch.long), torch.empty(len(scores))
    _top_rows(k, scores.detach().numpy(), indices.numpy(), totals.numpy())
    return scores.gather(1, indices), indices, totals


def slice_beats(scores: torch.Tensor, start: int, targets: torch.Tensor, target_score: torch.Tensor,
                exclude: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
    """Items of a slice (columns start.. of `scores`) scoring at least each target's score, not
    counting padding, the target itself or the excluded (row, item) pairs (without repeats)."""
    stop = start + scores.shape[1]
    beats = count_at_least(scores, target_score)
    if start == 0:
        beats -= (scores[:, 0] >= target_score).long()  # padding
    rows = torch.nonzero((targets >= start) & (targets < stop))[:, 0]
    beats[rows] -= (scores[rows, targets[rows] - start] >= target_score[rows]).long()  # the target itself
    if exclude is not None:
        row, item = exclude
        inside = (item >= max(start, 1)) & (item < stop) & (item != targets[row])
        row, item = row[inside], item[inside]
        beats -= torch.bincount(row[scores[row, item - start] >= target_score[row]], minlength=len(targets))
    return beats


def chunked_ranks(scorer: Scorer, encoded: torch.Tensor, targets: torch.Tensor,
                  exclude: tuple[torch.Tensor, torch.Tensor] | None, chunk: int) -> torch.Tensor:
    """1-based rank of each target among items 1..N, `chunk` items scored at a time. Ties count
    against the model (rank = 1 + other items scoring >= the target), so a constant scorer ranks
    every target last; a NaN target score ranks last; exclude = (row, item) pairs removed from the
    ranking (a user's history), never the target itself."""
    if scorer.shared is not None:
        return shared_ranks(scorer.shared, targets, exclude)
    columns = scorer.n_items + 1
    if exclude is not None:
        exclude = unique_pairs(*exclude, columns)
    if columns <= chunk:
        scores = scorer.scores(encoded, 0, columns).float()
        target_score = scores.gather(1, targets[:, None])[:, 0]
        beats = slice_beats(scores, 0, targets, target_score, exclude)
    else:
        target_score = torch.empty(len(targets), device=targets.device)
        for start in range(0, columns, chunk):
            stop = min(start + chunk, columns)
            inside = (targets >= start) & (targets < stop)
            if inside.any():
                scores = scorer.scores(encoded, start, stop).float()
                target_score[inside] = scores[inside, targets[inside] - start]
        beats = sum(slice_beats(scorer.scores(encoded, start, min(start + chunk, columns)).float(), start,
                                targets, target_score, exclude) for start in range(0, columns, chunk))
    return torch.where(target_score.isnan(), scorer.n_items, 1 + beats)


def chunked_topk(scorer: Scorer, encoded: torch.Tensor, k: int, chunk: int
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(items [B, k], scores [B, k], logsumexp [B]) over slices of `chunk` items, padding excluded:
    a running top-k and an online log-sum-exp, so a teacher's log-softmax top-k never holds more
    than [B, chunk] scores."""
    best_scores = best_items = total = None
    for start in range(1, scorer.n_items + 1, chunk):   # item 0 is padding: never scored
        stop = min(start + chunk, scorer.n_items + 1)
        values, items, part = top_k(scorer.scores(encoded, start, stop).float(), min(k, stop - start))
        total = part if total is None else torch.logaddexp(total, part)
        items += start
        if best_scores is None:
            best_scores, best_items = values, items
        else:   # earlier slices hold lower item ids: ties still go to the lower id
            best_scores, order, _ = top_k(torch.cat([best_scores, values], 1),
                                          min(k, best_scores.shape[1] + values.shape[1]))
            best_items = torch.cat([best_items, items], 1).gather(1, order)
    return best_items, best_scores, total


def score_layout(batch_size: int, columns: int) -> tuple[int, int]:
    """(histories per batch, items per slice): `batch_size`, shrunk (down to MIN_ROWS) so that a
    batch's scores of `columns` items fit SCORE_BUDGET (a catalogue of up to SCORE_BUDGET / MIN_ROWS
    items, 262,144, is scored in one pass), and the slice width that the budget leaves."""
    if batch_size * columns > SCORE_BUDGET:
        batch_size = min(batch_size, max(MIN_ROWS, SCORE_BUDGET // columns))
    return batch_size, max(1024, SCORE_BUDGET // batch_size)


@torch.no_grad()
def rank_split(scorer: Scorer, data: SplitData, split: str, max_length: int, batch_size: int,
               device: torch.device, exclude_history: bool = False) -> tuple[np.ndarray, torch.Tensor]:
    """(user_idx, 1-based rank) of each target of `split`; the caller puts models in eval mode."""
    users, positions, items = data.targets(split)
    batch_size, chunk = score_layout(batch_size, scorer.n_items + 1)
    ranks = []
    for start in range(0, len(users), batch_size):
        u, p = users[start:start + batch_size], positions[start:start + batch_size]
        history, = trim_padding(torch.as_tensor(data.histories(u, p, max_length), device=device))
        exclude = None
        if exclude_history:
            row, item = data.history_sets(u, p)
            exclude = torch.as_tensor(row, device=device), torch.as_tensor(item, device=device)
        target = torch.as_tensor(items[start:start + batch_size], device=device)
        ranks.append(chunked_ranks(scorer, scorer.encode(history), target, exclude, chunk).cpu())
    return users, torch.cat(ranks)
