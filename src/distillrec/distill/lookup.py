"""Teacher rows by batch key (the base of every distillation loss is `distill/objective.py`).

DLLM2Rec aligned teacher rows to student rows by row order (docs/methods.md §1). Here a teacher
row is only ever found by its (user_idx, position) key, through a dense index over the split's
flat sequence array: row = index[offsets[user - 1] + position], -1 where the teacher has none.
Keys are validated against the split once, when the lookup is built.

Only TRAINING examples are indexed: a student never distils a teacher's valid/test rows.
"""

from __future__ import annotations

import logging

import numpy as np
import polars as pl
import torch

from distillrec.data.splitdata import SplitData
from distillrec.errors import DataError
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
