"""Rank every target of a split against the full catalogue with a student (or any scorer)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from distillrec.data.splitdata import SplitData
from distillrec.students.base import Student, trim_padding
from distillrec.train.metrics import target_ranks

Scorer = Callable[[torch.Tensor], torch.Tensor]  # left-padded histories [B, L] → scores [B, N+1]


def student_scorer(model: Student) -> Scorer:
    return lambda history: model.score(model.user_states(history))


@torch.no_grad()
def rank_split(scorer: Scorer, data: SplitData, split: str, max_length: int, batch_size: int,
               device: torch.device, exclude_history: bool = False) -> tuple[np.ndarray, torch.Tensor]:
    """(user_idx, 1-based rank) of each target of `split`; the caller puts models in eval mode."""
    users, positions, items = data.targets(split)
    ranks = []
    for start in range(0, len(users), batch_size):
        u, p = users[start:start + batch_size], positions[start:start + batch_size]
        history, = trim_padding(torch.as_tensor(data.histories(u, p, max_length), device=device))
        scores = scorer(history).float()
        exclude = None
        if exclude_history:
            row, item = data.history_sets(u, p)
            exclude = torch.zeros_like(scores, dtype=torch.bool)
            exclude[torch.as_tensor(row, device=device), torch.as_tensor(item, device=device)] = True
        target = torch.as_tensor(items[start:start + batch_size], device=device)
        ranks.append(target_ranks(scores, target, exclude).cpu())
    return users, torch.cat(ranks)
