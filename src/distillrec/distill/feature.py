"""SLMRec-style feature distillation (docs/methods.md §4.3).

The student's block outputs at a supervised position are pulled toward the teacher's exported
sequence state for the same key:
  term_i = Σ_blocks [ cosine_weight · (1 − cos(P h_i, t_i)) + l2_weight · ‖P h_i − t_i‖₂ / √D ].
Choices:
- our exports hold one teacher state per example (its final representation), so each chosen
  student block (default: the last) is aligned with that state; SLMRec aligned block pairs of
  two models of the same family;
- P maps the student INTO the teacher's space (Linear(d → D), one per block, identity when
  d = D): the target stays fixed, so the projection cannot collapse both sides to a constant;
- teacher states are standardised per column over the training rows (LLM hidden states have
  large, uneven scales), and the L2 distance is divided by √D so its weight does not depend on
  the teacher's width (SLMRec: weight 0.1 on the raw norm, same width on both sides).
Multi-block supervision (`multi_block_weight` > 0): each intermediate block gets a head
Linear(d → d, no bias, initialised to identity) scored by the student's own item table with
cross-entropy on the true target (SLMRec's is_cls_multiple); it needs no teacher.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from distillrec.distill.lookup import TeacherLookup
from distillrec.distill.objective import DistillObjective, Supervised, TermResult, standardised
from distillrec.errors import DataError
from distillrec.students.base import Student

log = logging.getLogger(__name__)


def feature_distance(student: torch.Tensor, teacher: torch.Tensor, cosine_weight: float,
                     l2_weight: float) -> torch.Tensor:
    """Per-row cosine_weight·(1 − cos) + l2_weight·‖s − t‖₂/√D of [M, D] pairs."""
    cosine = 1 - F.cosine_similarity(student, teacher, dim=-1, eps=1e-8)
    l2 = (student - teacher).norm(dim=-1) / teacher.shape[-1] ** 0.5
    return cosine_weight * cosine + l2_weight * l2


def _block_count(student: Student) -> int:
    """Blocks differ by model (layers, or one for Caser): ask the student with a one-item history."""
    device = next(student.parameters()).device
    with torch.no_grad():
        return len(student.encode(torch.ones(1, 1, dtype=torch.long, device=device)).blocks)


class FeatureDistill(DistillObjective):
    """base + weight · feature term (+ multi_block_weight · Σ intermediate-block CE)."""

    name = "feature"

    def __init__(self, base: Any, lookup: TeacherLookup, student: Student, *, weight: float = 1.0,
                 blocks: list[int] | tuple[int, ...] = (-1,), cosine_weight: float = 1.0, l2_weight: float = 0.1,
                 multi_block_weight: float = 0.0):
        super().__init__(base, weight)
        if lookup.states is None:
            raise DataError(f"teacher export {lookup.folder} has no sequence states: feature distillation "
                            "needs sequence_states.parquet (export the teacher with states)")
        n_blocks = _block_count(student)
        chosen = sorted({b % n_blocks for b in blocks if -n_blocks <= b < n_blocks})
        if len(chosen) != len(set(blocks)):
            raise ValueError(f"blocks {list(blocks)} are not distinct block indices of a {n_blocks}-block student")
        self.lookup, self.blocks = lookup, chosen
        self.cosine_weight, self.l2_weight, self.multi_block_weight = cosine_weight, l2_weight, multi_block_weight
        mean, std = standardised(lookup.states)
        self.register_buffer("mean", mean, persistent=False)
        self.register_buffer("std", std, persistent=False)
        dim, hidden = lookup.states.shape[1], student.hidden
        self.projectors = nn.ModuleList(nn.Identity() if dim == hidden else nn.Linear(hidden, dim) for _ in chosen)
        self.heads = nn.ModuleList()
        if multi_block_weight > 0:
            if n_blocks < 2:
                log.warning("multi-block supervision: the %s student has one block, nothing to supervise",
                            type(student).__name__)
            for _ in range(n_blocks - 1):
                head = nn.Linear(hidden, hidden, bias=False)
                nn.init.eye_(head.weight)
                self.heads.append(head)

    def teacher_term(self, model: Student, sup: Supervised, batch: Any) -> TermResult:
        rows = self.lookup.state_rows(sup.users, sup.positions)
        covered = rows >= 0
        teacher = (self.lookup.state_vectors(rows[covered]) - self.mean) / self.std
        values = torch.zeros(int(covered.sum()), device=teacher.device)
        logs = {}
        for block, projector in zip(self.blocks, self.projectors):
            student = projector(sup.encoded.blocks[block][sup.keep][covered])
            distance = feature_distance(student, teacher, self.cosine_weight, self.l2_weight)
            values = values + distance
            logs[f"feature_block{block}"] = distance.mean().item() if len(distance) else 0.0
        return values, covered, logs

    def student_term(self, model: Student, sup: Supervised) -> tuple[torch.Tensor | None, dict[str, float]]:
        if not len(self.heads):
            return None, {}
        losses = [F.cross_entropy(model.score(head(block[sup.keep])), sup.targets)
                  for head, block in zip(self.heads, sup.encoded.blocks[:-1])]
        total = torch.stack(losses).sum()
        return self.multi_block_weight * total, {"multi_block_ce": total.item()}
