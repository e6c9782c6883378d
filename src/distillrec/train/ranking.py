"""Rank every target of a split against the full catalogue with a student (or any scorer).

Scores are computed a slice of the catalogue at a time (`SCORE_BUDGET` floats per slice), so
ranking 10^6 items needs memory for one slice, not for batch x catalogue. The rank is exact and
follows `train.metrics.target_ranks` (ties count against the model): a first pass reads each
target's score from the slice that holds it, a second counts the items that score at least as much.
A catalogue that fits one slice is ranked in one pass, as `target_ranks` does.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from distillrec.data.splitdata import SplitData
from distillrec.students.base import Student, trim_padding
from distillrec.train.metrics import target_ranks

SCORE_BUDGET = 2 ** 26  # scores held at once while ranking (256 MiB of float32)


@dataclass(frozen=True)
class Scorer:
    """encode: left-padded histories [B, L] -> what `scores` reads (a student's states);
    scores: (encoded, start, stop) -> [B, stop - start] scores of items start..stop-1 (item 0 = padding)."""

    encode: Callable[[torch.Tensor], torch.Tensor]
    scores: Callable[[torch.Tensor, int, int], torch.Tensor]
    n_items: int

    def __call__(self, history: torch.Tensor) -> torch.Tensor:
        """Scores [B, N + 1] of the whole catalogue."""
        return self.scores(self.encode(history), 0, self.n_items + 1)


def student_scorer(model: Student) -> Scorer:
    return Scorer(model.user_states, model.score, model.n_items)


def table_scorer(table: torch.Tensor) -> Scorer:
    """The same scores [N + 1] for every history (popularity)."""
    return Scorer(lambda history: table.to(history.device).expand(len(history), -1),
                  lambda every, start, stop: every[:, start:stop], len(table) - 1)


def chunked_ranks(scorer: Scorer, encoded: torch.Tensor, targets: torch.Tensor,
                  exclude: tuple[torch.Tensor, torch.Tensor] | None, chunk: int) -> torch.Tensor:
    """`target_ranks` over slices of `chunk` items; exclude = (row, item) pairs removed from the ranking."""
    columns = scorer.n_items + 1
    device = targets.device

    def mask(start: int, stop: int, width: int) -> torch.Tensor | None:
        if exclude is None:
            return None
        row, item = exclude
        inside = (item >= start) & (item < stop)
        out = torch.zeros((len(targets), width), dtype=torch.bool, device=device)
        out[row[inside], item[inside] - start] = True
        return out

    if columns <= chunk:
        return target_ranks(scorer.scores(encoded, 0, columns).float(), targets, mask(0, columns, columns))
    target_score = torch.empty(len(targets), device=device)
    for start in range(0, columns, chunk):
        stop = min(start + chunk, columns)
        inside = (targets >= start) & (targets < stop)
        if inside.any():
            scores = scorer.scores(encoded, start, stop).float()
            target_score[inside] = scores[inside, targets[inside] - start]
    beats = torch.zeros(len(targets), dtype=torch.long, device=device)
    for start in range(0, columns, chunk):
        stop = min(start + chunk, columns)
        above = scorer.scores(encoded, start, stop).float() >= target_score[:, None]
        if start == 0:
            above[:, 0] = False  # padding
        removed = mask(start, stop, stop - start)
        if removed is not None:
            above &= ~removed
        inside = (targets >= start) & (targets < stop)
        above[inside, targets[inside] - start] = False  # the target itself
        beats += above.sum(1)
    return torch.where(target_score.isnan(), scorer.n_items, 1 + beats)


def chunked_topk(scorer: Scorer, encoded: torch.Tensor, k: int, chunk: int
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(items [B, k], scores [B, k], logsumexp [B]) over slices of `chunk` items, padding excluded:
    a running top-k and an online log-sum-exp, so a teacher's log-softmax top-k never holds
    [B, N] scores (at 180k items and B = 1024, slices of 65,536 items took ~9 % more time than one
    pass on 2 cores, for about a third of the memory)."""
    best_scores = best_items = None
    total = None
    for start in range(1, scorer.n_items + 1, chunk):   # item 0 is padding: never scored
        stop = min(start + chunk, scorer.n_items + 1)
        scores = scorer.scores(encoded, start, stop).float()
        part = torch.logsumexp(scores, dim=1)
        total = part if total is None else torch.logaddexp(total, part)
        top = scores.topk(min(k, stop - start), dim=1)
        if best_scores is None:
            best_scores, best_items = top.values, top.indices + start
        else:
            merged = torch.cat([best_scores, top.values], 1).topk(min(k, best_scores.shape[1] + top.values.shape[1]),
                                                                 dim=1)
            best_items = torch.cat([best_items, top.indices + start], 1).gather(1, merged.indices)
            best_scores = merged.values
    return best_items, best_scores, total


@torch.no_grad()
def rank_split(scorer: Scorer, data: SplitData, split: str, max_length: int, batch_size: int,
               device: torch.device, exclude_history: bool = False) -> tuple[np.ndarray, torch.Tensor]:
    """(user_idx, 1-based rank) of each target of `split`; the caller puts models in eval mode."""
    users, positions, items = data.targets(split)
    chunk = max(1024, SCORE_BUDGET // batch_size)
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
