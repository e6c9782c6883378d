"""Teacher rows by batch key (the base of every distillation loss is `distill/objective.py`).

DLLM2Rec aligned teacher rows to student rows by row order (docs/methods.md §1). Here a teacher
row is only ever found by its (user_idx, position) key, through a dense index over the split's
flat sequence array: row = index[offsets[user - 1] + position], -1 where the teacher has none.
Keys are validated against the split once, when the lookup is built.

Only TRAINING examples are indexed: a student never distils a teacher's valid/test rows.
"""

from __future__ import annotations

import logging
import tempfile

import numpy as np
import torch

from distillrec.data.splitdata import SplitData
from distillrec.errors import DataError
from distillrec.teachers.export import TeacherExport
from distillrec.teachers.keys import SPLIT_CODES, ExampleKeys, claim

log = logging.getLogger(__name__)


def mapped(shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """A zero-filled array backed by an anonymous temporary file (in $TMPDIR, deleted on close):
    the OS pages it in and out, so a teacher table larger than memory costs disk, not RSS."""
    if not np.prod(shape):
        return np.zeros(shape, dtype)
    return np.memmap(tempfile.TemporaryFile(prefix="distillrec-teacher-"), dtype=dtype, mode="w+", shape=shape)


class TeacherLookup:
    """One teacher export, checked against the split and indexed by (user_idx, position).

    The top-K lists (items int32 / scores float32 [E, K], best first, higher = better) and the
    sequence states [S, D] are streamed from the export into memory-mapped arrays, training rows
    only: resident memory does not grow with the export. `topk(rows, k)` and `state_vectors(rows)`
    gather a batch's rows and move them to the batch's device; `topk_rows`/`state_rows` map batch
    keys to rows. item_embeddings [N + 1, D] (row 0 = padding, zeros) is small and a tensor.
    `covered` counts the training examples with and without a top-K row (examples without one are
    trained without the teacher term).
    """

    def __init__(self, export: TeacherExport, data: SplitData):
        self.folder, self.name, self.n_items = export.folder, export.name, data.n_items
        keys = ExampleKeys(data.examples, data.n_users)
        self._offsets, self._lengths = torch.as_tensor(keys.offsets[:-1]), torch.as_tensor(keys.lengths)
        where = f"teacher export {self.folder}"
        train_rows = int(export.info.get("counts", {}).get("topk_examples", {}).get("train", 0))
        k = int(export.info["top_k"])
        items, scores = mapped((train_rows, k), np.int32), mapped((train_rows, k), np.float32)
        index = np.full(keys.size, -1, np.int32)
        filled = 0
        for chunk in export.iter_topk("train"):
            slots = self._training(keys, chunk.users, chunk.positions, f"{where}: top-K")
            claim(index, slots, filled, chunk.users, chunk.positions, f"{where}: top-K")
            if filled + len(slots) > train_rows:
                raise DataError(f"{where}: topk.parquet holds more training rows than teacher.json counts "
                                f"({train_rows}); the folder was changed after export")
            if chunk.items.size and (chunk.items.min() < 1 or chunk.items.max() > data.n_items):
                raise DataError(f"{where}: top-K item ids must be in 1..{data.n_items}, found "
                                f"{chunk.items.min()}..{chunk.items.max()} (exported for another catalogue?)")
            items[filled:filled + len(slots)], scores[filled:filled + len(slots)] = chunk.items, chunk.scores
            filled += len(slots)
        self.items, self.scores = torch.from_numpy(items[:filled]), torch.from_numpy(scores[:filled])
        self._topk_index = torch.from_numpy(index)

        self.states: torch.Tensor | None = None
        self._state_index: torch.Tensor | None = None
        if "state_dim" in export.info:
            states = mapped((int(export.info["counts"]["states"]), int(export.info["state_dim"])), np.float32)
            index = np.full(keys.size, -1, np.int32)
            filled = 0
            for chunk in export.iter_states():
                slots = keys.locate(chunk.users, chunk.positions, f"{where}: sequence states")
                train = keys.split_codes(slots) == SPLIT_CODES["train"]
                claim(index, slots[train], filled, chunk.users[train], chunk.positions[train],
                      f"{where}: sequence states")
                states[filled:filled + int(train.sum())] = chunk.states[train]
                filled += int(train.sum())
            self.states, self._state_index = torch.from_numpy(states[:filled]), torch.from_numpy(index)

        self.item_embeddings: torch.Tensor | None = None
        table = export.item_embeddings()
        if table is not None:
            if table.ndim != 2 or table.shape[0] != data.n_items:
                raise DataError(f"teacher export {self.folder}: item embeddings are {table.shape}, "
                                f"expected [{data.n_items}, D] (row i-1 = item i)")
            self.item_embeddings = torch.cat([torch.zeros(1, table.shape[1]), torch.tensor(table, dtype=torch.float32)])

        n_train = int((keys.codes == SPLIT_CODES["train"]).sum())
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

    @staticmethod
    def _training(keys: ExampleKeys, users: np.ndarray, positions: np.ndarray, where: str) -> np.ndarray:
        """Slots of keys the export files as training rows; raises when the split disagrees."""
        slots = keys.locate(users, positions, where)
        wrong = keys.split_codes(slots) != SPLIT_CODES["train"]
        if wrong.any():
            i = int(np.argmax(wrong))
            raise DataError(f"{where}: the export calls (user_idx, position) = ({users[i]}, {positions[i]}) a "
                            "training example but the split does not; was it exported for another split?")
        return slots

    def to(self, device: torch.device | str) -> TeacherLookup:
        """Moves the key index and the item table (in place); the top-K lists and states stay
        mapped in host memory and travel a batch at a time."""
        device = torch.device(device)
        if self._topk_index.device != device:
            for name in ("_offsets", "_lengths", "_topk_index", "_state_index", "item_embeddings"):
                value = getattr(self, name)
                if value is not None:
                    setattr(self, name, value.to(device))
        return self

    def _rows(self, index: torch.Tensor, users: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        self.to(positions.device)
        users = users.reshape(users.shape + (1,) * (positions.dim() - users.dim())).expand_as(positions)
        inside = (positions >= 0) & (positions < self._lengths[users - 1])
        flat = (self._offsets[users - 1] + positions).clamp(0, len(index) - 1)
        return torch.where(inside, index[flat].long(), -1)

    def topk_rows(self, users: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Row of the top-K lists for each key (users [B] or like positions; positions [B, ...]), -1 = none."""
        return self._rows(self._topk_index, users, positions)

    def state_rows(self, users: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Row of `states` for each key, -1 = none (all -1 when the teacher exports no states)."""
        if self._state_index is None:
            return torch.full_like(positions, -1)
        return self._rows(self._state_index, users, positions)

    def topk(self, rows: torch.Tensor, k: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(items long, scores float) [M, k] of these rows (each >= 0), on the rows' device."""
        picked = rows.cpu()
        items, scores = self.items[picked, :k], self.scores[picked, :k]
        return items.to(rows.device, torch.long), scores.to(rows.device)

    def state_vectors(self, rows: torch.Tensor) -> torch.Tensor:
        """States [M, D] of these rows (each >= 0), on the rows' device."""
        return self.states[rows.cpu()].to(rows.device)
