"""DLLM2Rec (docs/methods.md §4.1): importance-aware ranking distillation + embedding distillation.

Ranking distillation (RD): each of the teacher's top-K items is a weighted extra positive,
  ℓ_b = Σ_k w_bk · (−log σ(s_b,C_bk)) + Σ_n (−log σ(−s_b,n)),   Σ_k w_bk = 1,
with w_bk ∝ γ_p·w^p_k + γ_c·w^c_bk + γ_o·w^o_bk. Differences from the original code, on purpose:
- the negative term is −log σ(−s) through logsigmoid (B1), so it is exact and finite;
- weights stay per example: the loss is mean_b ℓ_b, never mean(w)·mean(ℓ) (B2);
- confidence w^c = softmax(score / τ_c) over the K listed items. Exports give higher-is-better
  scores on a known scale (T5: log-probabilities, so τ_c = 1 renormalises the teacher's own
  probabilities over its list; BIGRec grounding: row z-scores), unlike exp(−L2 distance),
  which collapsed to uniform or one-hot (B6);
- the negatives are drawn here (uniform, never the target nor a listed item) because the base
  objective keeps its own; the DROS term is not part of our base objectives, so RD has none (B9);
- teacher rows are looked up by key (B5); projector dims follow the data (B7).
Consistency w^o = 1[C_bk in the student's current top-K] is computed without gradient and
left unnormalised (as DLLM2Rec): it adds γ_o per overlapping item before the normalisation.

Collaborative embedding distillation (CED): `ItemAdapter` adds ed_weight · Linear(D → d)(z_i)
of a frozen item table to the student's INPUT item vectors, at training and at inference
(students/base.py hook; saved.py folds it into fixed offsets). The table is the teacher's exported
item embeddings, or (`ed_vectors`, params `ed_table: <embed entry>`) a language model's own item
vectors, which is what DLLM2Rec projects (the LLM's title embeddings, not a trained teacher's table).
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


class ItemAdapter(nn.Module):
    """ed_weight · (W z_i + b) for input item i; z = the teacher's item table, column-standardised.

    The table is frozen and can be large (N × 4096), so it is a plain tensor, not state: it is
    neither checkpointed nor saved (saved.py stores `offsets()` instead) and the distillation
    builder re-attaches it on every run. Standardising the columns and a N(0, 0.02²/D) init make
    the projected vectors start at the scale of the students' own item embeddings (std 0.02)
    instead of the LLM's hidden-state scale, which would drown the ID embeddings.
    """

    def __init__(self, table: torch.Tensor, hidden: int, ed_weight: float):
        super().__init__()
        mean, std = standardised(table[1:])
        self.teacher = torch.cat([torch.zeros_like(table[:1]), (table[1:] - mean) / std])
        self.projector = nn.Linear(table.shape[1], hidden)
        nn.init.normal_(self.projector.weight, std=0.02 / table.shape[1] ** 0.5)
        nn.init.zeros_(self.projector.bias)
        self.ed_weight = ed_weight

    def _apply(self, fn, recurse=True):  # noqa: ANN001 - nn.Module's signature
        self.teacher = fn(self.teacher)
        return super()._apply(fn, recurse)

    def forward(self, history: torch.Tensor) -> torch.Tensor:
        rows = len(self.teacher)
        known = (history > 0) & (history < rows)
        z = self.teacher[history.clamp(0, rows - 1)]
        return self.ed_weight * self.projector(z) * known.unsqueeze(-1)

    def offsets(self) -> torch.Tensor:
        """[N + 1, d] what forward adds per item (row 0 = padding = 0): the served form."""
        offsets = self.ed_weight * self.projector(self.teacher)
        offsets[0] = 0
        return offsets


def attach_item_adapter(student: Student, table: torch.Tensor, ed_weight: float) -> ItemAdapter:
    """Give `student` a CED input adapter; call before the optimiser is built (its parameters
    then come with `student.parameters()` and are checkpointed and saved with the student)."""
    if student.item_adapter is not None:
        log.warning("replacing the student's existing item adapter")
    device = next(student.parameters()).device
    student.item_adapter = ItemAdapter(table, student.hidden, ed_weight).to(device)
    return student.item_adapter


def position_weights(k: int, temperature: float, device: torch.device | None = None) -> torch.Tensor:
    """w^p_k = exp(−k/T) / Σ exp(−k'/T), k = 1..K (T = 1 as DLLM2Rec's hard-coded λ)."""
    return torch.softmax(-torch.arange(1, k + 1, dtype=torch.float32, device=device) / temperature, 0)


def confidence_weights(scores: torch.Tensor, temperature: float) -> torch.Tensor:
    """w^c = softmax(score / τ_c) over the listed items: scores are higher-is-better and calibrated."""
    return torch.softmax(scores / temperature, -1)


def student_consistency(candidates: torch.Tensor, student_top: torch.Tensor) -> torch.Tensor:
    """w^o_bk = 1 if the teacher's k-th item is in the student's current top list, else 0."""
    return (candidates[:, :, None] == student_top[:, None, :]).any(-1).float()


def importance_weights(position: torch.Tensor, confidence: torch.Tensor, consistency: torch.Tensor,
                       gammas: tuple[float, float, float]) -> torch.Tensor:
    """γ-mix of the three weights [M, K], normalised to sum to 1 per example (uniform if all 0)."""
    raw = gammas[0] * position + gammas[1] * confidence + gammas[2] * consistency
    total = raw.sum(-1, keepdim=True)
    return torch.where(total > 0, raw / total.clamp_min(1e-30), torch.full_like(raw, 1 / raw.shape[-1]))


def ranking_distillation(pos_logits: torch.Tensor, neg_logits: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Per-example RD loss [M]: Σ_k w_k (−log σ(s_k) − Σ_n log σ(−s_n)) with logsigmoid (B1)."""
    negative = -F.logsigmoid(-neg_logits).sum(-1, keepdim=True)
    return (weights * (-F.logsigmoid(pos_logits) + negative)).sum(-1)


def sample_negatives(forbidden: torch.Tensor, n_items: int, count: int, generator: torch.Generator) -> torch.Tensor:
    """`count` uniform items per row [M, count], none of them in `forbidden` [M, F] (F < n_items).

    A clash moves to the next id (cyclically); F + 1 moves always clear a row's F forbidden ids.
    """
    neg = torch.randint(1, n_items + 1, (len(forbidden), count), generator=generator).to(forbidden.device)
    for _ in range(forbidden.shape[1] + 1):
        clash = (neg[:, :, None] == forbidden[:, None, :]).any(-1)
        if not clash.any():
            break
        neg = torch.where(clash, neg % n_items + 1, neg)
    return neg


class DLLM2Rec(DistillObjective):
    """base + weight · RD over the teacher's first `top_k` items; optional CED (ed_weight > 0).

    Defaults are DLLM2Rec's (λ 0.8, K 10, γ 0.3/0.5/0.1, position temperature 1, ed_weight 0.2
    as its argparse; 0 turns CED off). The negatives use the batch's generator.
    """

    name = "dllm2rec"

    def __init__(self, base: Any, lookup: TeacherLookup, student: Student, *, weight: float = 0.8,
                 top_k: int = 10, position_temperature: float = 1.0, confidence_temperature: float = 1.0,
                 gamma_position: float = 0.3, gamma_confidence: float = 0.5, gamma_consistency: float = 0.1,
                 negatives: int = 1, ed_weight: float = 0.2, ed_vectors: torch.Tensor | None = None):
        super().__init__(base, weight)
        gammas = (gamma_position, gamma_confidence, gamma_consistency)
        if min(gammas) < 0 or sum(gammas) <= 0:
            raise ValueError(f"gammas must be >= 0 and not all 0, got {gammas}")
        if position_temperature <= 0 or confidence_temperature <= 0 or top_k < 1 or negatives < 1:
            raise ValueError("temperatures must be > 0, top_k and negatives >= 1")
        self.lookup, self.gammas, self.negatives = lookup, gammas, negatives
        self.top_k = min(top_k, lookup.k)
        if self.top_k < top_k:
            log.warning("teacher %s lists %d items per example; RD uses %d, not top_k=%d",
                        lookup.folder, lookup.k, self.top_k, top_k)
        if student.n_items <= self.top_k + 1:
            raise DataError(f"RD needs more than top_k + 1 = {self.top_k + 1} items to draw negatives")
        self.position_temperature, self.confidence_temperature = position_temperature, confidence_temperature
        if ed_weight > 0 and ed_vectors is not None:  # an LM's own item vectors, as DLLM2Rec projects
            attach_item_adapter(student, ed_vectors.float(), ed_weight)
        elif ed_weight > 0:
            if lookup.item_embeddings is None:
                raise DataError(f"teacher export {lookup.folder} has no item embeddings: embedding "
                                "distillation (ed_weight > 0) needs item_embeddings.parquet; set ed_weight: 0")
            attach_item_adapter(student, lookup.item_embeddings, ed_weight)

    def teacher_term(self, model: Student, sup: Supervised, batch: Any) -> TermResult:
        rows = self.lookup.topk_rows(sup.users, sup.positions)
        covered = rows >= 0
        rows = rows[covered]
        candidates, teacher_scores = self.lookup.topk(rows, self.top_k)
        states, targets = sup.states[covered], sup.targets[covered]
        table = model.item_embeddings()
        pos_logits = torch.einsum("md,mkd->mk", states, table[candidates])
        forbidden = torch.cat([targets[:, None], candidates], 1)
        neg = sample_negatives(forbidden, model.n_items, self.negatives, batch.generator)
        neg_logits = torch.einsum("md,mkd->mk", states, table[neg])
        with torch.no_grad():
            logits = sup.logits[covered] if sup.logits is not None else model.score(states)
            consistency = student_consistency(candidates, logits.topk(self.top_k, dim=-1).indices)
            weights = importance_weights(
                position_weights(self.top_k, self.position_temperature, states.device).expand_as(pos_logits),
                confidence_weights(teacher_scores, self.confidence_temperature),
                consistency, self.gammas)
        values = ranking_distillation(pos_logits, neg_logits, weights)
        overlap = consistency.sum(-1).mean().item() if len(rows) else 0.0
        return values, covered, {"rd_overlap": overlap}
