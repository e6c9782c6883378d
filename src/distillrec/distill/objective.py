"""The base of every distillation loss: the supervised loss plus a weighted, gated teacher term.

One training step of a distilled student reads in two places: `train/objectives.py` (the batch
encoded once into a `Step`, the base loss on it) and here (the teacher term added to it, found by
batch key through `distill/lookup.py`); each method's own term is in `distill/<method>.py`.
"""

from __future__ import annotations

import itertools
import logging
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from distillrec.students.base import Encoded, Student
from distillrec.train.objectives import BaseLoss, Step, encode_step

log = logging.getLogger(__name__)


@dataclass
class Supervised:
    """The batch's supervised positions, flattened in `targets > 0` order: what teacher terms see."""

    encoded: Encoded
    keep: torch.Tensor            # [B, L] bool
    states: torch.Tensor          # [M, d]
    targets: torch.Tensor         # [M]
    users: torch.Tensor           # [M]
    positions: torch.Tensor       # [M]
    logits: torch.Tensor | None   # [M, N + 1] if the base loss scored the full catalogue (with grad)

    @classmethod
    def of(cls, step: Step, batch: Any) -> Supervised:
        users = batch.users[:, None].expand_as(batch.targets)[step.keep]
        return cls(step.encoded, step.keep, step.states, step.targets, users, batch.positions[step.keep], step.logits)


TermResult = tuple[torch.Tensor, torch.Tensor, dict[str, float]]


class DistillObjective(nn.Module, ABC):
    """base loss + weight · (Σ over covered supervised examples of the teacher term) / M.

    M counts every supervised example, so an example without a teacher row adds its base loss
    only and a covered one adds base + weight · term: the teacher's per-example weight does not
    depend on how many neighbours in the batch happen to be covered. Subclasses implement
    `teacher_term`; `student_term` may add teacher-free extras (multi-block heads). Parameters
    of the loss (projectors, heads) are this module's; the student is never registered here.
    """

    name = "distill"

    def __init__(self, base: BaseLoss, weight: float):
        super().__init__()
        if weight < 0:
            raise ValueError(f"weight must be >= 0, got {weight}")
        self.base, self.weight = base, weight
        self.register_buffer("gate", torch.ones(()))  # a buffer: checkpointed, so a resumed run keeps it
        self.gate_metric: tuple[str, float] | None = None

    def enable_gate(self, metric: str, teacher_value: float) -> None:
        """Teacher terms only while the teacher's validation `metric` is at least the student's latest."""
        self.gate_metric = (metric, teacher_value)

    def observe(self, valid: dict[str, float]) -> None:
        """After each validation: a student that now ranks validation better than its teacher stops
        learning from it (a weaker teacher would pull it down); it resumes if it falls behind again."""
        if self.gate_metric is not None:
            metric, teacher_value = self.gate_metric
            self.gate.fill_(float(valid[metric] <= teacher_value))

    def _follow(self, device: torch.device) -> None:
        """Moves the loss's own tensors to the batch's device if the trainer has not (first call only:
        parameters keep their identity, so an optimiser built before still holds them)."""
        first = next(itertools.chain(self.parameters(), self.buffers()), None)
        if first is not None and first.device != device:
            log.info("moving the %s loss's parameters to %s", self.name, device)
            self.to(device)

    @abstractmethod
    def teacher_term(self, model: Student, sup: Supervised, batch: Any) -> TermResult:
        """(per-example values [M_covered], covered [M] bool, logs)."""

    def student_term(self, model: Student, sup: Supervised) -> tuple[torch.Tensor | None, dict[str, float]]:
        return None, {}

    def forward(self, model: Student, batch: Any) -> tuple[torch.Tensor, dict[str, float]]:
        self._follow(batch.inputs.device)
        step = encode_step(model, batch)          # one forward pass for the base loss and the teacher term
        loss, logs = self.base(model, batch, step)
        sup = Supervised.of(step, batch)
        values, covered, extra = self.teacher_term(model, sup, batch)
        term = values.sum() / max(len(sup.targets), 1)
        logs = {**logs, **extra, self.name: term.item(), "teacher_rows": int(covered.sum()),
                "no_teacher": int((~covered).sum()), "gate": self.gate.item()}
        loss = loss + self.weight * self.gate * term
        more, more_logs = self.student_term(model, sup)
        if more is not None:
            loss = loss + more
        return loss, {**logs, **more_logs}


def standardised(table: torch.Tensor, rows: int = 1 << 16) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, std) per column: teacher vectors (LLM hidden states) have arbitrary, large scales.
    Summed in float64 a block of rows at a time: the table may be memory-mapped and not fit in memory."""
    n, dim = table.shape
    total, squares = torch.zeros(dim, dtype=torch.float64), torch.zeros(dim, dtype=torch.float64)
    for start in range(0, n, rows):
        block = table[start:start + rows].double()
        total += block.sum(0)
        squares += (block * block).sum(0)
    mean = total / max(n, 1)
    var = (squares - n * mean * mean) / (n - 1) if n > 1 else torch.ones(dim, dtype=torch.float64)
    return mean.float(), var.clamp_min(0).sqrt().float().clamp_min(1e-6)
