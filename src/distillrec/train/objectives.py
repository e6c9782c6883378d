"""Student training objectives; each maps (model, batch) to a loss and loggable numbers.

Distillation methods wrap these (they add terms keyed by the batch's (user, position) keys), so
the trainer never needs to know which method it runs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from distillrec.students.base import Student


@dataclass
class Batch:
    """One training step: targets > 0 are supervised; `positions` key them into the split."""

    inputs: torch.Tensor      # [B, L] left-padded item ids
    targets: torch.Tensor     # [B, L] next (or masked) item per position, 0 = no target
    users: torch.Tensor       # [B] user_idx
    positions: torch.Tensor   # [B, L] sequence position of each target
    generator: torch.Generator


Objective = Callable[[Student, Batch], tuple[torch.Tensor, dict[str, float]]]


def supervised_states(model: Student, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """States and targets at supervised positions only: no logits are computed for padding."""
    states = model.encode(batch.inputs).states
    keep = batch.targets > 0
    return states[keep], batch.targets[keep]


def cross_entropy(model: Student, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
    """Softmax cross-entropy over the full catalogue at every supervised position."""
    states, targets = supervised_states(model, batch)
    loss = F.cross_entropy(model.score(states), targets)
    return loss, {"ce": loss.item()}


def sampled_bce(negatives: int) -> Objective:
    """BCE with `negatives` uniformly sampled items per target (SASRec/DLLM2Rec style)."""

    def objective(model: Student, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        states, targets = supervised_states(model, batch)
        table = model.item_embeddings()
        shape = (len(targets), negatives)
        neg = torch.randint(1, model.n_items + 1, shape, generator=batch.generator).to(targets.device)
        clash = neg == targets[:, None]
        neg = torch.where(clash, neg % model.n_items + 1, neg)  # never the positive itself
        pos_logit = (states * table[targets]).sum(-1)
        neg_logit = torch.einsum("bd,bkd->bk", states, table[neg])
        loss = -(F.logsigmoid(pos_logit).mean() + F.logsigmoid(-neg_logit).sum(-1).mean())
        return loss, {"bce": loss.item()}

    return objective
