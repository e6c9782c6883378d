"""Read-side of the split contract: sequences as flat arrays, histories by vectorised slicing.

Later stages never re-derive positions: a target is (user_idx, position) and its history is
`sequence[:position]`, taken here without Python loops over users.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from distillrec.errors import DataError

FILES = ("sequences.parquet", "examples.parquet", "item_map.parquet", "user_map.parquet")


@dataclass(frozen=True)
class SplitData:
    """Sequences in CSR form: user u's items are `items[offsets[u-1]:offsets[u]]` (u is 1-based)."""

    items: np.ndarray        # int64 [total interactions]
    offsets: np.ndarray      # int64 [n_users + 1]
    item_map: pl.DataFrame
    user_map: pl.DataFrame
    examples: pl.DataFrame

    @property
    def n_items(self) -> int:
        return self.item_map.height

    @property
    def n_users(self) -> int:
        return self.user_map.height

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    @classmethod
    def load(cls, directory: Path | str) -> SplitData:
        directory = Path(directory)
        missing = [name for name in FILES if not (directory / name).is_file()]
        if missing:
            raise DataError(f"{directory} lacks {', '.join(missing)}: run the `split` stage first")
        sequences = pl.read_parquet(directory / "sequences.parquet").sort("user_idx")
        lengths = sequences["items"].list.len().to_numpy()
        return cls(
            items=sequences["items"].explode(empty_as_null=False).to_numpy().astype(np.int64),
            offsets=np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
            item_map=pl.read_parquet(directory / "item_map.parquet"),
            user_map=pl.read_parquet(directory / "user_map.parquet"),
            examples=pl.read_parquet(directory / "examples.parquet"),
        )

    def flat(self, users: np.ndarray, positions: np.ndarray) -> np.ndarray:
        """Index into `items` of each (user_idx, position) key: the one place that arithmetic lives."""
        return self.offsets[np.asarray(users, np.int64) - 1] + np.asarray(positions, np.int64)

    @property
    def train_lengths(self) -> np.ndarray:
        """Items of each user before the validation target (leave-one-out: all but the last two)."""
        return self.lengths - 2

    def histories(self, users: np.ndarray, positions: np.ndarray, max_length: int) -> np.ndarray:
        """Left-padded [B, max_length] histories: the last `max_length` items before `position`."""
        ends = self.flat(users, positions)
        index = ends[:, None] - max_length + np.arange(max_length)[None, :]
        valid = index >= self.flat(users, 0)[:, None]
        return np.where(valid, self.items[np.clip(index, 0, None)], 0)

    def targets(self, split: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(user_idx, position, item_idx) of every example of `split`, sorted by user."""
        rows = self.examples.filter(pl.col("split") == split).sort("user_idx", "position")
        return (rows["user_idx"].to_numpy().astype(np.int64), rows["position"].to_numpy().astype(np.int64),
                rows["item_idx"].to_numpy().astype(np.int64))

    def training_windows(self, max_length: int, stride: int | None = None
                         ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Left-padded windows [W, max_length + 1] that supervise every training target once.

        A user's training part (everything before the validation target) is cut from the end into
        windows of max_length + 1 items, one every `stride` positions (default max_length). A
        window supervises only its last `stride` targets, except the user's earliest window,
        which supervises all of its targets; so with stride < max_length every target keeps at
        least max_length - stride items of context (or all it has). Truncating long histories
        instead would lose most targets on datasets like MovieLens.

        Returns (windows, user_idx, end, first): a window holds positions end - max_length - 1 ..
        end - 1 of the user's sequence, and target columns before `first` are not supervised.
        """
        stride = stride or max_length
        train_len = self.train_lengths
        later = np.maximum(0, -(-(train_len - 1 - max_length) // stride))
        n_windows = later + 1
        users = np.repeat(np.arange(1, self.n_users + 1), n_windows)
        k = np.arange(n_windows.sum()) - np.repeat(np.cumsum(n_windows) - n_windows, n_windows)
        ends = np.repeat(train_len, n_windows) - k * stride
        first = np.where(k == np.repeat(later, n_windows), 0, max_length - stride)
        return self.histories(users, ends, max_length + 1), users, ends, first

    def training_counts(self) -> np.ndarray:
        """Occurrences [N + 1] of each item in the training part of the sequences (before validation)."""
        within = np.arange(len(self.items)) - np.repeat(self.offsets[:-1], self.lengths)
        in_train = within < np.repeat(self.train_lengths, self.lengths)
        return np.bincount(self.items[in_train], minlength=self.n_items + 1)

    def history_sets(self, users: np.ndarray, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(row, item) pairs of every item before `position` for each example (for exclusion)."""
        starts = self.flat(users, 0)
        counts = np.asarray(positions)
        row = np.repeat(np.arange(len(counts)), counts)
        within = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
        return row, self.items[np.repeat(starts, counts) + within]
