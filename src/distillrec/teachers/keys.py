"""Teacher rows are found by their (user_idx, position) key, never by row order (docs/methods.md §1).

`ExampleKeys` is a dense index over the split's examples: key -> flat slot -> split. Writing an
export and loading it for distillation check keys against the split with it, chunk by chunk, so
neither holds a join of the whole export in memory: 1 byte per interaction for the split codes,
and the caller's own row index (4 bytes per interaction) to detect duplicates across chunks.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from distillrec.errors import DataError

SPLIT_CODES = {"train": 0, "valid": 1, "test": 2}
SPLIT_NAMES = tuple(SPLIT_CODES)


class ExampleKeys:
    """Every example of the split: slot = offsets[user - 1] + position, with its split code."""

    def __init__(self, examples: pl.DataFrame, n_users: int | None = None):
        users = examples["user_idx"].to_numpy().astype(np.int64)
        positions = examples["position"].to_numpy().astype(np.int64)
        self.n_users = max(int(users.max()) if len(users) else 0, n_users or 0)
        self.lengths = np.zeros(self.n_users, np.int64)
        if len(users):
            np.maximum.at(self.lengths, users - 1, positions + 1)
        self.offsets = np.concatenate([[0], np.cumsum(self.lengths)]).astype(np.int64)
        self.codes = np.full(int(self.offsets[-1]), -1, np.int8)
        self.codes[self.offsets[users - 1] + positions] = (
            examples["split"].cast(pl.Utf8).replace_strict(SPLIT_CODES, return_dtype=pl.Int8).to_numpy())

    @property
    def size(self) -> int:
        return len(self.codes)

    def locate(self, users: np.ndarray, positions: np.ndarray, where: str) -> np.ndarray:
        """Slot of every key; raises (naming the first offender) on keys that are not examples."""
        users, positions = np.asarray(users, np.int64), np.asarray(positions, np.int64)
        slots, inside = np.zeros(len(users), np.int64), np.zeros(len(users), bool)
        if self.n_users:
            owner = np.clip(users - 1, 0, self.n_users - 1)
            inside = (users >= 1) & (users <= self.n_users) & (positions >= 0) & (positions < self.lengths[owner])
            slots = np.where(inside, self.offsets[owner] + positions, 0)
            inside &= self.codes[slots] >= 0
        foreign = ~inside
        if foreign.any():
            i = int(np.argmax(foreign))
            raise DataError(f"{where}: {int(foreign.sum())} keys are not examples of the split, e.g. "
                            f"(user_idx, position) = ({users[i]}, {positions[i]}); was it exported for another split?")
        return slots

    def split_codes(self, slots: np.ndarray) -> np.ndarray:
        return self.codes[slots]


def claim(index: np.ndarray, slots: np.ndarray, first_row: int, users: np.ndarray, positions: np.ndarray,
          where: str) -> None:
    """Records rows first_row.. for these slots in `index` (-1 = free); raises on a key seen twice."""
    ordered = np.sort(slots)
    repeated = ordered[1:][ordered[1:] == ordered[:-1]]
    taken = index[slots] >= 0
    if repeated.size or taken.any():
        i = int(np.argmax(taken)) if taken.any() else int(np.argmax(slots == repeated[0]))
        raise DataError(f"{where}: duplicate key (user_idx, position) = ({users[i]}, {positions[i]})")
    index[slots] = np.arange(first_row, first_row + len(slots), dtype=index.dtype)
