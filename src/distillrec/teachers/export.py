"""The teacher export contract: the only thing the rest of distillrec knows about teachers.

`data/teacher/<name>/` holds Parquet files keyed by (user_idx, position) of the split stage's
examples (DLLM2Rec aligned teacher rows by row order, docs/methods.md §1; we never do), and
`teacher.json`. Every key is checked against the split when written, and again when loaded.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from distillrec.errors import DataError
from distillrec.io import atomic_dir, sha256_file, write_json

log = logging.getLogger(__name__)
KEY = ["user_idx", "position"]


@dataclass
class TopK:
    """K ranked items per example: items/scores [E, K], best first, higher score = better."""

    users: np.ndarray
    positions: np.ndarray
    items: np.ndarray
    scores: np.ndarray


@dataclass
class States:
    """One vector per example: the teacher's representation of the history before the target."""

    users: np.ndarray
    positions: np.ndarray
    states: np.ndarray


@dataclass
class ExportTables:
    """What a teacher family returns from `export`; `write_export` validates and writes it."""

    topk: TopK
    item_embeddings: np.ndarray | None = None   # [N, D]: row i-1 is item i
    states: States | None = None
    explanations: pl.DataFrame | None = None    # user_idx, position, item_idx, generated, reference
    info: dict[str, Any] = field(default_factory=dict)


def select_examples(examples: pl.DataFrame, train_positions: str | int) -> pl.DataFrame:
    """The examples a teacher exports: training ones (all, or each user's last N) plus valid/test."""
    if train_positions == "all":
        return examples.sort(KEY)
    train = examples.filter(pl.col("split") == "train")
    last = train.filter(pl.col("position") > pl.col("position").max().over("user_idx") - train_positions)
    return pl.concat([last, examples.filter(pl.col("split") != "train")]).sort(KEY)


def _keys(users: np.ndarray, positions: np.ndarray, what: str, examples: pl.DataFrame) -> pl.DataFrame:
    """The split of each key; raises on duplicate keys and keys that are not examples."""
    keys = pl.DataFrame({"user_idx": np.asarray(users, np.int32), "position": np.asarray(positions, np.int32)})
    duplicated = keys.filter(keys.is_duplicated())
    if duplicated.height:
        raise DataError(f"{what}: duplicate key (user_idx, position) {duplicated.row(0)}")
    joined = keys.with_row_index("row").join(examples.select(*KEY, "split"), on=KEY, how="left")
    foreign = joined.filter(pl.col("split").is_null())
    if foreign.height:
        raise DataError(f"{what}: {foreign.height} keys are not examples of the split, e.g. "
                        f"(user_idx, position) = {foreign.select(KEY).row(0)}")
    return joined.sort("row").select(*KEY, "split")


def _finite(array: np.ndarray, what: str) -> None:
    bad = ~np.isfinite(array)
    if bad.any():
        raise DataError(f"{what}: {int(bad.sum())} non-finite values (first at index "
                        f"{tuple(int(i) for i in np.argwhere(bad)[0])})")


def check_topk(topk: TopK, n_items: int, examples: pl.DataFrame) -> pl.DataFrame:
    """Validates a top-K table against the split; returns its long Parquet form."""
    items, scores = np.asarray(topk.items), np.asarray(topk.scores, np.float32)
    if items.ndim != 2 or items.shape != scores.shape or len(items) != len(topk.users):
        raise DataError(f"top-K: items {items.shape}, scores {scores.shape} and {len(topk.users)} keys disagree")
    keys = _keys(topk.users, topk.positions, "top-K", examples)
    if items.size and (items.min() < 1 or items.max() > n_items):
        raise DataError(f"top-K: item ids must be in 1..{n_items}, found {items.min()}..{items.max()}")
    ordered = np.sort(items, axis=1)
    if (ordered[:, 1:] == ordered[:, :-1]).any():
        row = int(np.nonzero((ordered[:, 1:] == ordered[:, :-1]).any(axis=1))[0][0])
        raise DataError(f"top-K: an item repeats in the list of {keys.row(row)[:2]}: {items[row].tolist()}")
    _finite(scores, "top-K scores")
    if (np.diff(scores, axis=1) > 1e-6 * np.abs(scores[:, :-1]).clip(1.0)).any():
        raise DataError("top-K: scores must not increase with rank (best first)")
    k = items.shape[1]
    return pl.DataFrame({
        "user_idx": np.repeat(keys["user_idx"].to_numpy(), k),
        "position": np.repeat(keys["position"].to_numpy(), k),
        "split": keys["split"].to_numpy().repeat(k),
        "rank": np.tile(np.arange(1, k + 1, dtype=np.int16), len(items)),
        "item_idx": items.reshape(-1).astype(np.int32),
        "score": scores.reshape(-1),
    }).with_columns(pl.col("split").cast(examples["split"].dtype))


def _vectors(columns: dict[str, Any], name: str, matrix: np.ndarray) -> pa.Table:
    matrix = np.ascontiguousarray(matrix, np.float32)
    flat = pa.array(matrix.reshape(-1), pa.float32())
    vectors = pa.FixedSizeListArray.from_arrays(flat, matrix.shape[1])
    return pa.table({**{k: pa.array(v) for k, v in columns.items()}, name: vectors})


def write_export(folder: Path | str, tables: ExportTables, examples: pl.DataFrame, n_items: int,
                 info: dict[str, Any]) -> dict[str, Any]:
    """Validate every table against the split and write the export folder atomically."""
    long = check_topk(tables.topk, n_items, examples)
    meta = {**info, **tables.info, "top_k": int(tables.topk.items.shape[1]), "n_items": n_items,
            "counts": {"topk_examples": {s: int(c) for s, c in long.filter(pl.col("rank") == 1)
                                         .group_by("split").len().iter_rows()}},
            "score": tables.info.get("score", "log-probability; higher = better")}
    with atomic_dir(folder) as tmp:
        long.write_parquet(tmp / "topk.parquet")
        if tables.item_embeddings is not None:
            emb = np.asarray(tables.item_embeddings)
            if emb.ndim != 2 or emb.shape[0] != n_items:
                raise DataError(f"item embeddings: expected [{n_items}, D] (item_idx 1..{n_items}), got {emb.shape}")
            _finite(emb, "item embeddings")
            pq.write_table(_vectors({"item_idx": np.arange(1, n_items + 1, dtype=np.int32)}, "embedding", emb),
                           tmp / "item_embeddings.parquet")
            meta["item_embedding_dim"] = int(emb.shape[1])
        if tables.states is not None:
            st = tables.states
            keys = _keys(st.users, st.positions, "sequence states", examples)
            _finite(np.asarray(st.states), "sequence states")
            pq.write_table(_vectors({"user_idx": keys["user_idx"].to_numpy(), "position": keys["position"].to_numpy()},
                                    "state", np.asarray(st.states)), tmp / "sequence_states.parquet")
            meta["state_dim"] = int(np.asarray(st.states).shape[1])
            meta["counts"]["states"] = len(st.users)
        if tables.explanations is not None:
            exp = tables.explanations
            keys = _keys(exp["user_idx"].to_numpy(), exp["position"].to_numpy(), "explanations", examples)
            exp.drop("split", strict=False).with_columns(keys["split"]).write_parquet(tmp / "explanations.parquet")
            meta["counts"]["explanations"] = exp.height
        write_json(tmp / "teacher.json", meta)
    log.info("exported %s: %s", folder, meta["counts"])
    return meta


class TeacherExport:
    """Read side of an export folder, checked against the split it claims to describe."""

    def __init__(self, folder: Path | str):
        self.folder = Path(folder)
        path = self.folder / "teacher.json"
        if not path.is_file():
            raise DataError(f"{self.folder} is not a teacher export (no teacher.json): run export_teacher")
        self.info: dict[str, Any] = json.loads(path.read_text())

    @property
    def name(self) -> str:
        return self.folder.name

    def content_id(self) -> str:
        """Hash of the exported tables (not teacher.json, whose time stamp changes on every export),
        so a student distilled from an identical re-export resumes instead of retraining."""
        digest = hashlib.sha256()
        for name in ("topk.parquet", "item_embeddings.parquet", "sequence_states.parquet"):
            if (self.folder / name).exists():
                digest.update(sha256_file(self.folder / name).encode())
        return digest.hexdigest()

    def topk(self, split: str | None = None) -> TopK:
        """Top-K arrays sorted by key, optionally of one split."""
        frame = pl.scan_parquet(self.folder / "topk.parquet")
        if split is not None:
            frame = frame.filter(pl.col("split") == split)
        frame = frame.sort(*KEY, "rank").collect()
        k = int(self.info["top_k"])
        heads = frame.filter(pl.col("rank") == 1)
        return TopK(heads["user_idx"].to_numpy().astype(np.int64), heads["position"].to_numpy().astype(np.int64),
                    frame["item_idx"].to_numpy().reshape(-1, k).astype(np.int64),
                    frame["score"].to_numpy().reshape(-1, k))

    def item_embeddings(self) -> np.ndarray | None:
        path = self.folder / "item_embeddings.parquet"
        if not path.exists():
            return None
        table = pq.read_table(path).sort_by("item_idx")
        return np.stack(table["embedding"].to_numpy(zero_copy_only=False)).astype(np.float32)

    def states(self) -> States | None:
        path = self.folder / "sequence_states.parquet"
        if not path.exists():
            return None
        table = pq.read_table(path).sort_by([("user_idx", "ascending"), ("position", "ascending")])
        return States(table["user_idx"].to_numpy().astype(np.int64), table["position"].to_numpy().astype(np.int64),
                      np.stack(table["state"].to_numpy(zero_copy_only=False)).astype(np.float32))

    def explanations(self) -> pl.DataFrame | None:
        path = self.folder / "explanations.parquet"
        return pl.read_parquet(path) if path.exists() else None
