"""Teacher rows by batch key, and the wrapper every distillation loss shares.

DLLM2Rec aligned teacher rows to student rows by row order (docs/methods.md §1). Here a teacher
row is only ever found by its (user_idx, position) key, through a dense index over the split's
flat sequence array: row = index[offsets[user - 1] + position], -1 where the teacher has none.
Keys are validated against the split once, when the lookup is built.

Only TRAINING examples are indexed: a student never distils a teacher's valid/test rows.
"""

from __future__ import annotations

import itertools
import logging
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl
import torch
from torch import nn

from distillrec.data.splitdata import SplitData
from distillrec.errors import DataError
from distillrec.students.base import Encoded, Student
from distillrec.teachers.export import TeacherExport

log = logging.getLogger(__name__)

SPLIT_CODES = {"train": 0, "valid": 1, "test": 2}


def _split_codes(data: SplitData) -> np.ndarray:
    """Dense int8 [total interactions]: the split of the example at each flat index, -1 = none."""
    examples = data.examples
    codes = np.full(len(data.items), -1, np.int8)
    users = examples["user_idx"].to_numpy().astype(np.int64)
    flat = data.flat(users, examples["position"].to_numpy())
    codes[flat] = examples["split"].cast(pl.Utf8).replace_strict(SPLIT_CODES, return_dtype=pl.Int8).to_numpy()
    return codes


class TeacherLookup:
    """One teacher export, checked against the split and indexed by (user_idx, position).

    items/scores [E, K] (best first, higher = better), states [S, D] or None and
    item_embeddings [N + 1, D] (row 0 = padding, zeros) or None are tensors; `topk_rows` and
    `state_rows` map batch keys to their rows. `covered` counts the training examples with and
    without a top-K row (examples without one are trained without the teacher term).
    """

    def __init__(self, export: TeacherExport, data: SplitData):
        self.folder, self.name, self.n_items = export.folder, export.name, data.n_items
        self._offsets = torch.as_tensor(data.offsets[:-1])
        self._lengths = torch.as_tensor(data.lengths)
        codes = _split_codes(data)

        topk = export.topk("train")
        flat = self._flat(data, topk.users, topk.positions, "top-K", codes)
        if topk.items.size and (topk.items.min() < 1 or topk.items.max() > data.n_items):
            raise DataError(f"teacher export {self.folder}: top-K item ids must be in 1..{data.n_items}, "
                            f"found {topk.items.min()}..{topk.items.max()} (exported for another catalogue?)")
        self.items = torch.tensor(topk.items, dtype=torch.long)
        self.scores = torch.tensor(topk.scores, dtype=torch.float32)
        self._topk_index = self._dense(flat, len(codes))

        self.states: torch.Tensor | None = None
        self._state_index: torch.Tensor | None = None
        states = export.states()
        if states is not None:
            flat = self._flat(data, states.users, states.positions, "sequence states", codes, train_only=False)
            train = codes[flat] == SPLIT_CODES["train"]
            self.states = torch.tensor(states.states[train], dtype=torch.float32)
            self._state_index = self._dense(flat[train], len(codes))

        self.item_embeddings: torch.Tensor | None = None
        table = export.item_embeddings()
        if table is not None:
            if table.ndim != 2 or table.shape[0] != data.n_items:
                raise DataError(f"teacher export {self.folder}: item embeddings are {table.shape}, "
                                f"expected [{data.n_items}, D] (row i-1 = item i)")
            self.item_embeddings = torch.cat([torch.zeros(1, table.shape[1]), torch.tensor(table, dtype=torch.float32)])

        n_train = int((codes == SPLIT_CODES["train"]).sum())
        self.covered = {"with": len(self.items), "without": n_train - len(self.items)}
        log.info("teacher %s: top-K rows for %d of %d training examples (K=%d)%s%s", self.folder,
                 self.covered["with"], n_train, self.k,
                 "" if self.states is None else f", {len(self.states)} states",
                 "" if self.item_embeddings is None else ", item embeddings")
        if not len(self.items):
            log.warning("teacher %s has no top-K rows for training examples: it adds nothing", self.folder)

    @property
    def k(self) -> int:
        return int(self.items.shape[1])

    def _flat(self, data: SplitData, users: np.ndarray, positions: np.ndarray, what: str, codes: np.ndarray,
              train_only: bool = True) -> np.ndarray:
        """Flat index of every key; raises on duplicates and on keys that are not (training) examples."""
        users, positions = np.asarray(users, np.int64), np.asarray(positions, np.int64)
        where = f"teacher export {self.folder}: {what}"
        known = (users >= 1) & (users <= data.n_users)
        length = np.where(known, data.lengths[np.clip(users - 1, 0, data.n_users - 1)], 0)
        inside = known & (positions >= 0) & (positions < length)
        flat = np.where(inside, data.offsets[np.clip(users - 1, 0, data.n_users - 1)] + positions, 0)
        code = np.where(inside, codes[flat], -1)
        foreign = code < 0
        if foreign.any():
            i = int(np.argmax(foreign))
            raise DataError(f"{where}: {int(foreign.sum())} keys are not examples of the split, e.g. "
                            f"(user_idx, position) = ({users[i]}, {positions[i]}); was it exported for another split?")
        if train_only and (code != SPLIT_CODES["train"]).any():
            i = int(np.argmax(code != SPLIT_CODES["train"]))
            raise DataError(f"{where}: the export calls (user_idx, position) = ({users[i]}, {positions[i]}) a "
                            "training example but the split does not; was it exported for another split?")
        ordered = np.sort(flat)
        repeated = ordered[1:][ordered[1:] == ordered[:-1]]
        if repeated.size:
            i = int(np.argmax(flat == repeated[0]))
            raise DataError(f"{where}: duplicate key (user_idx, position) = ({users[i]}, {positions[i]})")
        return flat

    @staticmethod
    def _dense(flat: np.ndarray, size: int) -> torch.Tensor:
        """int32 [total interactions] -> row (-1 = none): 4 bytes per interaction, not 8."""
        index = torch.full((size,), -1, dtype=torch.int32)
        index[torch.as_tensor(flat, dtype=torch.long)] = torch.arange(len(flat), dtype=torch.int32)
        return index

    def to(self, device: torch.device | str) -> TeacherLookup:
        """Moves every tensor (in place); a no-op when they are there already."""
        device = torch.device(device)
        if self.items.device != device:
            for name, value in list(vars(self).items()):
                if isinstance(value, torch.Tensor):
                    setattr(self, name, value.to(device))
        return self

    def _rows(self, index: torch.Tensor, users: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        self.to(positions.device)
        users = users.reshape(users.shape + (1,) * (positions.dim() - users.dim())).expand_as(positions)
        inside = (positions >= 0) & (positions < self._lengths[users - 1])
        flat = (self._offsets[users - 1] + positions).clamp(0, len(index) - 1)
        return torch.where(inside, index[flat].long(), -1)

    def topk_rows(self, users: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Row of `items`/`scores` for each key (users [B] or like positions; positions [B, ...]), -1 = none."""
        return self._rows(self._topk_index, users, positions)

    def state_rows(self, users: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Row of `states` for each key, -1 = none (all -1 when the teacher exports no states)."""
        if self._state_index is None:
            return torch.full_like(positions, -1)
        return self._rows(self._state_index, users, positions)


@dataclass
class Supervised:
    """The batch's supervised positions, flattened in `targets > 0` order: what teacher terms see."""

    encoded: Encoded
    keep: torch.Tensor            # [B, L] bool
    states: torch.Tensor          # [M, d]
    targets: torch.Tensor         # [M]
    users: torch.Tensor           # [M]
    positions: torch.Tensor       # [M]
    logits: torch.Tensor | None   # [M, N + 1] if the base objective scored the full catalogue (with grad)


class SharedEncode:
    """The student as the base objective sees it: `encode` of the batch returns the states already
    computed, so base loss and teacher term share one forward pass. The first full-catalogue
    `score` of the M supervised states is kept (CE computes it anyway; RD reuses it for the
    student's top-K and logit KD for its softmax)."""

    def __init__(self, model: Student, inputs: torch.Tensor, encoded: Encoded, supervised: int):
        self.model, self.inputs, self.encoded, self.supervised = model, inputs, encoded, supervised
        self.logits: torch.Tensor | None = None

    def encode(self, history: torch.Tensor) -> Encoded:
        return self.encoded if history is self.inputs else self.model.encode(history)

    def score(self, states: torch.Tensor) -> torch.Tensor:
        logits = self.model.score(states)
        if self.logits is None and logits.shape == (self.supervised, self.model.n_items + 1):
            self.logits = logits
        return logits

    def __getattr__(self, name: str) -> Any:
        return getattr(self.model, name)


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

    def __init__(self, base: Callable[..., tuple[torch.Tensor, dict[str, float]]], weight: float):
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
    def teacher_term(self, model: SharedEncode, sup: Supervised, batch: Any) -> TermResult:
        """(per-example values [M_covered], covered [M] bool, logs)."""

    def student_term(self, model: SharedEncode, sup: Supervised) -> tuple[torch.Tensor | None, dict[str, float]]:
        return None, {}

    def forward(self, model: Student, batch: Any) -> tuple[torch.Tensor, dict[str, float]]:
        self._follow(batch.inputs.device)
        encoded = model.encode(batch.inputs)
        keep = batch.targets > 0
        m = int(keep.sum())
        shared = SharedEncode(model, batch.inputs, encoded, m)
        loss, logs = self.base(shared, batch)
        users = batch.users[:, None].expand_as(batch.targets)[keep]
        sup = Supervised(encoded, keep, encoded.states[keep], batch.targets[keep], users,
                         batch.positions[keep], shared.logits)
        values, covered, extra = self.teacher_term(shared, sup, batch)
        term = values.sum() / max(m, 1)
        logs = {**logs, **extra, self.name: term.item(), "teacher_rows": int(covered.sum()),
                "no_teacher": int((~covered).sum()), "gate": self.gate.item()}
        loss = loss + self.weight * self.gate * term
        more, more_logs = self.student_term(shared, sup)
        if more is not None:
            loss = loss + more
        return loss, {**logs, **more_logs}


def standardised(table: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, std) per column: teacher vectors (LLM hidden states) have arbitrary, large scales."""
    mean = table.mean(0) if len(table) else torch.zeros(table.shape[1])
    std = table.std(0) if len(table) > 1 else torch.ones(table.shape[1])
    return mean, std.clamp_min(1e-6)
