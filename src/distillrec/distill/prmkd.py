"""PRM-KD (docs/methods.md §4.2): in-batch distillation from several teachers with consistency weights.

Per example i and teacher k, over the J distinct positive items of the batch:
1. raw scores: state_i · e_j when the export has both sequence states and item embeddings
   (same D, else DataError); otherwise the teacher's top-K score for listed items and a floor,
   min(listed scores of i) − floor_margin, for unlisted ones (the teacher ranked them lower
   than everything it listed; the margin says how much lower);
2. per-teacher normalisation: z-score over the J items, so that one temperature means the same
   for log-probabilities, z-scores and raw dot products (whose scale is arbitrary);
3. s̃_ijk = softmax_j(z / τ), a distribution over the in-batch items;
4. conf_ik = Σ_{k'≠k} Σ_j (s̃_ijk − s̃_ijk')²; if max_k conf_ik > ε the least consistent teacher is
   dropped for i and its weight shared equally by the others (only with ≥ 3 teachers present:
   with two, the disagreement is symmetric and says nothing about which one is wrong);
5. q_i = Σ_k ŵ_ik s̃_ik (renormalised), and the loss is KL(q‖p) (default) or KL(p‖q), p_i the
   student's softmax over the same J items at `student_temperature`.
A teacher without a row for i is left out for i (its default weight is shared in proportion);
an example no teacher covers adds no term. The J items are de-duplicated: an item that is the
target of several examples is one column, not several.
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


def topk_scores(items: torch.Tensor, scores: torch.Tensor, columns: torch.Tensor, width: int,
                floor_margin: float) -> torch.Tensor:
    """[M, width] scores of the in-batch items from top-K lists: listed score or the row's floor.

    columns [N + 1] maps an item id to its in-batch column (-1 = not in the batch).
    """
    floor = scores.min(-1, keepdim=True).values - floor_margin
    dense = floor.expand(-1, width + 1).clone()  # last column receives the unlisted items
    cols = columns[items]
    dense.scatter_(1, torch.where(cols >= 0, cols, width), scores)
    return dense[:, :width]


def zscore(scores: torch.Tensor) -> torch.Tensor:
    """Per-row standardisation over the last dim; constant rows become 0 (a uniform softmax)."""
    mean = scores.mean(-1, keepdim=True)
    std = scores.std(-1, unbiased=False, keepdim=True)
    return (scores - mean) / std.clamp_min(1e-6)


def teacher_consistency(probs: torch.Tensor, present: torch.Tensor, defaults: torch.Tensor,
                        epsilon: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(ŵ [M, T] summing to 1 over present teachers, dropped teacher per example [M] or -1).

    probs [M, T, J] per-teacher distributions; present [M, T] bool; defaults [T] ≥ 0.
    """
    weights = defaults * present
    weights = weights / weights.sum(-1, keepdim=True).clamp_min(1e-30)
    gram = probs @ probs.transpose(1, 2)                      # [M, T, T]; ‖a−b‖² = a·a + b·b − 2a·b
    norms = gram.diagonal(dim1=1, dim2=2)
    distance = (norms[:, :, None] + norms[:, None, :] - 2 * gram).clamp_min(0)
    conf = (distance * present[:, None, :]).sum(-1).masked_fill(~present, float("-inf"))
    worst_conf, worst = conf.max(-1)
    n_present = present.sum(-1)
    drop = (n_present >= 3) & (worst_conf > epsilon)
    share = weights.gather(1, worst[:, None]) / (n_present[:, None] - 1).clamp_min(1)
    others = present & (torch.arange(probs.shape[1], device=probs.device) != worst[:, None])
    dropped = torch.where(others, weights + share, torch.zeros_like(weights))
    return torch.where(drop[:, None], dropped, weights), torch.where(drop, worst, -1)


def kl(q: torch.Tensor, log_p: torch.Tensor, direction: str) -> torch.Tensor:
    """Per-row KL(q‖p) ('qp') or KL(p‖q) ('pq'); q may hold zeros."""
    if direction == "qp":
        return F.kl_div(log_p, q, reduction="none").sum(-1)
    return F.kl_div(q.clamp_min(1e-12).log(), log_p, reduction="none", log_target=True).sum(-1)


class PRMKD(DistillObjective):
    """base + weight · KL between the student's and the teachers' combined in-batch distributions.

    `teacher_weights`: default weight per teacher (e.g. each teacher's validation NDCG@10),
    normalised here; uniform when None.
    """

    name = "prmkd"

    def __init__(self, base: Any, lookups: list[TeacherLookup], *, weight: float = 1.0, temperature: float = 1.0,
                 student_temperature: float = 1.0, teacher_weights: list[float] | None = None,
                 epsilon: float = 0.1, floor_margin: float = 1.0, direction: str = "qp", use_states: bool = True):
        super().__init__(base, weight)
        if not lookups:
            raise DataError("PRM-KD needs at least one teacher export")
        if direction not in ("qp", "pq"):
            raise ValueError(f"direction must be 'qp' (KL(q‖p)) or 'pq' (KL(p‖q)), got {direction!r}")
        if temperature <= 0 or student_temperature <= 0:
            raise ValueError("temperatures must be > 0")
        defaults = [1.0] * len(lookups) if teacher_weights is None else [float(w) for w in teacher_weights]
        if len(defaults) != len(lookups) or min(defaults) < 0 or sum(defaults) <= 0:
            raise ValueError(f"teacher_weights must be {len(lookups)} values >= 0, not all 0; got {teacher_weights}")
        self.register_buffer("defaults", torch.tensor(defaults) / sum(defaults), persistent=False)
        self.lookups, self.temperature, self.student_temperature = lookups, temperature, student_temperature
        self.epsilon, self.floor_margin, self.direction = epsilon, floor_margin, direction
        self.by_states = []
        for lookup in lookups:
            both = use_states and lookup.states is not None and lookup.item_embeddings is not None
            if both and lookup.states.shape[1] != lookup.item_embeddings.shape[1]:
                raise DataError(f"teacher export {lookup.folder}: sequence states have dim {lookup.states.shape[1]} "
                                f"but item embeddings {lookup.item_embeddings.shape[1]}; their dot product is "
                                "undefined (set use_states: false to use the top-K lists)")
            self.by_states.append(both)
            log.info("PRM-KD teacher %s scores in-batch items from %s", lookup.folder,
                     "states · item embeddings" if both else "its top-K lists with a floor")

    def teacher_scores(self, lookup: TeacherLookup, by_states: bool, sup: Supervised, items: torch.Tensor,
                       columns: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(raw scores [M, J], present [M]) of one teacher for the in-batch items."""
        if by_states:
            rows = lookup.state_rows(sup.users, sup.positions)
            present = rows >= 0
            scores = lookup.state_vectors(rows.clamp_min(0)) @ lookup.item_embeddings[items].T
            return scores, present
        rows = lookup.topk_rows(sup.users, sup.positions)
        present = rows >= 0
        return topk_scores(*lookup.topk(rows.clamp_min(0)), columns, len(items), self.floor_margin), present

    def teacher_term(self, model: Student, sup: Supervised, batch: Any) -> TermResult:
        items = torch.unique(sup.targets)
        columns = torch.full((model.n_items + 1,), -1, dtype=torch.long, device=items.device)
        columns[items] = torch.arange(len(items), device=items.device)
        probs, present = [], []
        for lookup, by_states in zip(self.lookups, self.by_states):
            scores, here = self.teacher_scores(lookup, by_states, sup, items, columns)
            probs.append(torch.softmax(zscore(scores) / self.temperature, -1))
            present.append(here)
        probs, present = torch.stack(probs, 1), torch.stack(present, 1)
        covered = present.any(-1)
        probs, present = probs[covered], present[covered]
        weights, dropped = teacher_consistency(probs, present, self.defaults, self.epsilon)
        target = (weights[:, :, None] * probs).sum(1)
        target = target / target.sum(-1, keepdim=True).clamp_min(1e-30)
        logits = sup.states[covered] @ model.item_embeddings()[items].T
        values = kl(target, torch.log_softmax(logits / self.student_temperature, -1), self.direction)
        share = [(dropped == k).float().mean().item() if len(dropped) else 0.0 for k in range(len(self.lookups))]
        logs = {f"prmkd_dropped_{lookup.name}": value for lookup, value in zip(self.lookups, share)}
        return values, covered, logs
