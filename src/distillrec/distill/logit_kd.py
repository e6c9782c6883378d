"""Hinton knowledge distillation on the teacher's ranked list (the baseline the others must beat).

term_i = T² · KL(q_i ‖ p_i), q = softmax(teacher score / T), p = softmax(student logit / T), over
- the teacher's top-K items (default): both distributions live on the K listed items, so an
  unlisted item is neither pushed up nor down; or
- the whole catalogue (`full_catalogue=True`): unlisted items get a floor score and the
  student's full softmax is matched (this also pushes down what the teacher did not list).
  `floor="margin"`: min(listed) − floor_margin ("below everything I listed"), for any score
  scale; `floor="residual"`: when the scores are log-probabilities (id, text and T5 teachers),
  the probability the list leaves over, spread evenly: log((1 − Σ exp(listed)) / (N − K)), so
  the teacher's full distribution is matched without inventing mass for the tail.
T² keeps the gradient scale independent of T (Hinton et al. 2015).
"""

from __future__ import annotations

import logging
from typing import Any

import torch
import torch.nn.functional as F

from distillrec.students.base import Student
from distillrec.distill.lookup import TeacherLookup
from distillrec.distill.objective import DistillObjective, Supervised, TermResult
from distillrec.errors import DataError

log = logging.getLogger(__name__)


def softened_kl(teacher: torch.Tensor, student: torch.Tensor, temperature: float) -> torch.Tensor:
    """Per-row T² · KL(softmax(teacher/T) ‖ softmax(student/T)) over the last dim."""
    q = torch.softmax(teacher / temperature, -1)
    log_p = torch.log_softmax(student / temperature, -1)
    return temperature**2 * F.kl_div(log_p, q, reduction="none").sum(-1)


def catalogue_scores(items: torch.Tensor, scores: torch.Tensor, n_items: int, floor_margin: float,
                     residual: bool = False) -> torch.Tensor:
    """[M, n_items] teacher scores (column j = item j + 1): listed score, else the row's floor."""
    if residual:
        rest = (1 - scores.exp().sum(-1, keepdim=True)).clamp_min(1e-12)
        floor = (rest / max(n_items - items.shape[1], 1)).log()
    else:
        floor = scores.min(-1, keepdim=True).values - floor_margin
    return floor.expand(-1, n_items).clone().scatter_(1, items - 1, scores)


class LogitKD(DistillObjective):
    """base + weight · T² · KL over the teacher's first `top_k` items (None = all it lists)."""

    name = "logit_kd"

    def __init__(self, base: Any, lookup: TeacherLookup, *, weight: float = 1.0, temperature: float = 2.0,
                 top_k: int | None = None, full_catalogue: bool = False, floor_margin: float = 1.0,
                 floor: str = "margin"):
        super().__init__(base, weight)
        if temperature <= 0 or (top_k is not None and top_k < 1):
            raise ValueError("temperature must be > 0 and top_k >= 1")
        if floor not in ("margin", "residual"):
            raise ValueError(f"floor must be 'margin' or 'residual', got {floor!r}")
        self.lookup, self.temperature, self.full_catalogue = lookup, temperature, full_catalogue
        self.top_k = lookup.k if top_k is None else min(top_k, lookup.k)
        if top_k is not None and self.top_k < top_k:
            log.warning("teacher %s lists %d items per example; logit KD uses %d, not top_k=%d",
                        lookup.folder, lookup.k, self.top_k, top_k)
        self.floor_margin, self.residual = floor_margin, full_catalogue and floor == "residual"
        if self.residual:
            mass = max((block.exp().sum(-1).max().item() for block in lookup.scores.split(1 << 16)), default=0.0)
            if mass > 1 + 1e-3:
                raise DataError(f"teacher export {lookup.folder}: its scores are not log-probabilities "
                                f"(a row's exp(score) sums to {mass:.3g} > 1); logit_kd.floor 'residual' "
                                "needs them, use floor: margin")

    def teacher_term(self, model: Student, sup: Supervised, batch: Any) -> TermResult:
        rows = self.lookup.topk_rows(sup.users, sup.positions)
        covered = rows >= 0
        rows = rows[covered]
        items, scores = self.lookup.topk(rows, self.top_k)
        states = sup.states[covered]
        if self.full_catalogue:
            logits = sup.logits[covered] if sup.logits is not None else model.score(states)
            teacher = catalogue_scores(items, scores, model.n_items, self.floor_margin, self.residual)
            values = softened_kl(teacher, logits[:, 1:], self.temperature)  # column 0 is padding
        else:
            logits = torch.einsum("md,mkd->mk", states, model.item_embeddings()[items])
            values = softened_kl(scores, logits, self.temperature)
        return values, covered, {}
