"""The teacher export contract: the only thing the rest of distillrec knows about teachers.

`data/teacher/<name>/` holds Parquet files keyed by (user_idx, position) of the split stage's
examples (DLLM2Rec aligned teacher rows by row order, docs/methods.md §1; we never do), and
`teacher.json`. Every key is checked against the split when written, and again when loaded.

Exports are written and read in chunks of rows (`ExportTables.chunks`, `TeacherExport.iter_topk`):
a teacher that streams its rows never holds the whole export (at K = 100, 4.7M examples are 3.8 GB
of lists), and neither does the writer.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from distillrec.errors import DataError
from distillrec.io import atomic_dir, atomic_file, sha256_file, write_json
from distillrec.teachers.keys import SPLIT_NAMES, ExampleKeys, claim

log = logging.getLogger(__name__)
KEY = ["user_idx", "position"]
ROW_GROUP = 1 << 16   # examples per Parquet row group, and per chunk read back


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
class Rows:
    """One chunk of exported examples: their top-K lists and, when the teacher has them, states."""

    topk: TopK
    states: States | None = None


def _concat(parts: list, cls: type):
    """One TopK/States from chunks of it, field by field."""
    return cls(*(np.concatenate([getattr(part, f.name) for part in parts]) for f in fields(cls)))


def _by_key(rows):
    """The same TopK/States with its rows sorted by (user_idx, position)."""
    order = np.lexsort((rows.positions, rows.users))
    return type(rows)(*(getattr(rows, f.name)[order] for f in fields(rows)))


@dataclass
class ExportTables:
    """What a teacher family returns from `export`; `write_export` validates and writes it.

    Rows come either whole (`topk`, `states`) or as `chunks`, an iterable of `Rows` that the
    writer consumes once (a generator: the teacher computes the next chunk only when the last one
    is on disk).
    """

    topk: TopK | None = None
    item_embeddings: np.ndarray | None = None   # [N, D]: row i-1 is item i
    states: States | None = None
    explanations: pl.DataFrame | None = None    # user_idx, position, item_idx, generated, reference
    info: dict[str, Any] = field(default_factory=dict)
    chunks: Iterable[Rows] | None = None
    # the chunks again from the start-th exported example on, for a teacher whose chunks cover its
    # examples in order (each chunk's states, if any, for the same examples): makes the export resumable
    resume_from: Callable[[int], Iterable[Rows]] | None = None

    def rows(self) -> Iterable[Rows]:
        if (self.chunks is None) == (self.topk is None):
            raise ValueError("ExportTables takes either topk (and states) or chunks, not both or neither")
        return self.chunks if self.chunks is not None else [Rows(self.topk, self.states)]

    def gathered(self) -> ExportTables:
        """The same tables with every chunk concatenated (for checks on small exports, not for scale)."""
        if self.chunks is None:
            return self
        chunks = list(self.chunks)
        topk = _concat([c.topk for c in chunks], TopK)
        states = _concat([c.states for c in chunks], States) if chunks and chunks[0].states is not None else None
        return ExportTables(topk, self.item_embeddings, states, self.explanations, self.info)


def select_examples(examples: pl.DataFrame, train_positions: str | int) -> pl.DataFrame:
    """The examples a teacher exports: training ones (all, or each user's last N) plus valid/test."""
    if train_positions == "all":
        return examples.sort(KEY)
    train = examples.filter(pl.col("split") == "train")
    last = train.filter(pl.col("position") > pl.col("position").max().over("user_idx") - train_positions)
    return pl.concat([last, examples.filter(pl.col("split") != "train")]).sort(KEY)


def _finite(array: np.ndarray, what: str) -> None:
    bad = ~np.isfinite(array)
    if bad.any():
        raise DataError(f"{what}: {int(bad.sum())} non-finite values (first at index "
                        f"{tuple(int(i) for i in np.argwhere(bad)[0])})")


def _arrow(values: np.ndarray, dtype: pa.DataType) -> pa.Array:
    """A copy in Arrow's memory pool. pa.array would wrap the NumPy buffer (often a view of a
    torch tensor) and keep it alive while the chunk waits for its row group; such small live
    blocks between the scorer's large [batch, N] logits fragment the C heap (a 67k-row export at
    8k items: 2.3 GB peak, 1.1 GB with this copy)."""
    return pa.concat_arrays([pa.array(np.ascontiguousarray(values), dtype)])


def _lists(matrix: np.ndarray, dtype: pa.DataType) -> pa.FixedSizeListArray:
    return pa.FixedSizeListArray.from_arrays(_arrow(np.asarray(matrix).reshape(-1), dtype), matrix.shape[1])


def _keyed(users: np.ndarray, positions: np.ndarray, codes: np.ndarray | None, columns: dict[str, pa.Array]
           ) -> pa.Table:
    keys = {"user_idx": _arrow(users, pa.int32()), "position": _arrow(positions, pa.int32())}
    if codes is not None:
        keys["split"] = pa.DictionaryArray.from_arrays(_arrow(codes, pa.int8()), pa.array(SPLIT_NAMES))
    return pa.table({**keys, **columns})


def check_topk(topk: TopK, n_items: int, keys: ExampleKeys, index: np.ndarray, first_row: int) -> pa.Table:
    """Validates one chunk of top-K lists against the split; returns its Parquet rows."""
    items, scores = np.asarray(topk.items), np.asarray(topk.scores, np.float32)
    if items.ndim != 2 or items.shape != scores.shape or len(items) != len(topk.users):
        raise DataError(f"top-K: items {items.shape}, scores {scores.shape} and {len(topk.users)} keys disagree")
    slots = keys.locate(topk.users, topk.positions, "top-K")
    claim(index, slots, first_row, topk.users, topk.positions, "top-K")
    if items.size and (items.min() < 1 or items.max() > n_items):
        raise DataError(f"top-K: item ids must be in 1..{n_items}, found {items.min()}..{items.max()}")
    ordered = np.sort(items, axis=1)
    if (ordered[:, 1:] == ordered[:, :-1]).any():
        row = int(np.nonzero((ordered[:, 1:] == ordered[:, :-1]).any(axis=1))[0][0])
        raise DataError(f"top-K: an item repeats in the list of ({topk.users[row]}, {topk.positions[row]}): "
                        f"{items[row].tolist()}")
    _finite(scores, "top-K scores")
    if (np.diff(scores, axis=1) > 1e-6 * np.abs(scores[:, :-1]).clip(1.0)).any():
        raise DataError("top-K: scores must not increase with rank (best first)")
    return _keyed(topk.users, topk.positions, keys.split_codes(slots),
                  {"items": _lists(items, pa.int32()), "scores": _lists(scores, pa.float32())})


def check_states(states: States, keys: ExampleKeys, index: np.ndarray, first_row: int) -> pa.Table:
    slots = keys.locate(states.users, states.positions, "sequence states")
    claim(index, slots, first_row, states.users, states.positions, "sequence states")
    vectors = np.asarray(states.states)
    if vectors.ndim != 2 or len(vectors) != len(slots):
        raise DataError(f"sequence states: {vectors.shape} for {len(slots)} keys")
    _finite(vectors, "sequence states")
    return _keyed(states.users, states.positions, None, {"state": _lists(vectors, pa.float32())})


class _ChunkedFile:
    """A Parquet file written a row group at a time (its chunks' schema checked by `_Parts`)."""

    def __init__(self, path: Path):
        self.path, self.writer, self.pending, self.rows = path, None, [], 0

    def add(self, table: pa.Table) -> None:
        if self.writer is None:
            self.writer = pq.ParquetWriter(self.path, table.schema)
        self.pending.append(table)
        self.rows += table.num_rows
        if sum(t.num_rows for t in self.pending) >= ROW_GROUP:
            self.flush(whole_groups=True)

    def flush(self, whole_groups: bool = False) -> None:
        """Writes what is pending as row groups of ROW_GROUP rows (keeping the remainder, if asked)."""
        pending = pa.concat_tables(self.pending) if self.pending else None
        self.pending = []
        if pending is None:
            return
        cut = pending.num_rows - pending.num_rows % ROW_GROUP if whole_groups else pending.num_rows
        if cut:
            self.writer.write_table(pending.slice(0, cut), row_group_size=ROW_GROUP)
        if cut < pending.num_rows:
            self.pending = [pending.slice(cut)]

    def close(self) -> None:
        if self.writer is not None:
            self.flush()
            self.writer.close()


class _Parts:
    """Validated rows on their way to the export, as part files of about ROW_GROUP examples (top-K
    and the states of the same chunks), each recorded in progress.json once it is on disk.

    In a checkpoint folder with a fingerprint of what produces the rows (teacher, split, export
    params), an interrupted export resumes after the last recorded part: `done` examples are not
    computed again. A different fingerprint discards the parts.
    """

    def __init__(self, folder: Path, fingerprint: str | None):
        self.folder, self.fingerprint = folder, fingerprint
        progress = folder / "progress.json"
        saved = json.loads(progress.read_text()) if progress.exists() else {}
        if fingerprint is not None and saved.get("fingerprint") == fingerprint and not saved.get("complete"):
            self.parts: list[dict[str, int]] = saved["parts"]
        else:
            self.parts = []
            for old in folder.glob("*.parquet"):
                old.unlink()
        folder.mkdir(parents=True, exist_ok=True)
        self.pending: list[tuple[pa.Table, pa.Table | None]] = []
        self.schemas = {kind: pq.read_schema(next(self.files(kind))) for kind in ("topk", "states")
                        if any(part[kind] for part in self.parts)}

    @property
    def done(self) -> int:
        """Examples (top-K rows) in recorded parts."""
        return sum(part["topk"] for part in self.parts)

    def files(self, kind: str) -> Iterator[Path]:
        return (self.folder / f"{kind}-{i:05d}.parquet" for i, part in enumerate(self.parts) if part[kind])

    def add(self, topk: pa.Table, states: pa.Table | None) -> None:
        for kind, table in (("topk", topk), ("states", states)):
            first = self.schemas.setdefault(kind, table.schema) if table is not None else None
            if table is not None and table.schema != first:
                raise DataError(f"{kind}: a chunk has columns {table.schema} but the first had {first} "
                                f"(K or the state width changed between chunks)")
        self.pending.append((topk, states))
        if sum(t.num_rows for t, _ in self.pending) >= ROW_GROUP:
            self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        number, rows = len(self.parts), {}
        for kind, tables in (("topk", [t for t, _ in self.pending]), ("states", [s for _, s in self.pending if s is not None])):
            rows[kind] = sum(t.num_rows for t in tables)
            if tables:
                with atomic_file(self.folder / f"{kind}-{number:05d}.parquet") as tmp:
                    pq.write_table(pa.concat_tables(tables), tmp)
        self.pending = []
        self.parts.append(rows)
        self._record(complete=False)

    def _record(self, complete: bool) -> None:
        write_json(self.folder / "progress.json", {"fingerprint": None if complete else self.fingerprint,
                                                   "parts": self.parts, "complete": complete})

    def finish(self) -> None:
        """The export is written: drop the parts, keep a progress.json that resumes nothing (the
        same bytes on every run: the fingerprint hashes files with timings in them)."""
        for part in self.folder.glob("*.parquet"):
            part.unlink()
        self.parts = []
        self._record(complete=True)


def _restore(parts: _Parts, keys: ExampleKeys, topk_index: np.ndarray, state_index: np.ndarray,
             per_split: np.ndarray) -> None:
    """Claims the keys of recorded parts again (duplicates stay errors across a resume)."""
    for kind, index in (("topk", topk_index), ("states", state_index)):
        first = 0
        for path in parts.files(kind):
            table = pq.read_table(path, columns=["user_idx", "position"] + (["split"] if kind == "topk" else []))
            users, positions = table["user_idx"].to_numpy(), table["position"].to_numpy()
            claim(index, keys.locate(users, positions, kind), first, users, positions, kind)
            if kind == "topk":
                per_split += np.bincount(table["split"].combine_chunks().indices.to_numpy(), minlength=len(SPLIT_NAMES))
            first += len(users)


def write_export(folder: Path | str, tables: ExportTables, examples: pl.DataFrame, n_items: int,
                 info: dict[str, Any] | Callable[[], dict[str, Any]], checkpoint: Path | str | None = None,
                 fingerprint: str | None = None) -> dict[str, Any]:
    """Validate every table against the split and write the export folder atomically, chunk by
    chunk. `info` may be a function, called once every row is written (to time a streamed export).
    The rows pass through part files in `checkpoint` (default: inside the temporary folder); with
    the `fingerprint` of what produces them, a resumable export (`tables.resume_from`) that was
    interrupted goes on after its last recorded part."""
    keys = ExampleKeys(examples)
    topk_index, state_index = np.full(keys.size, -1, np.int32), np.full(keys.size, -1, np.int32)
    per_split = np.zeros(len(SPLIT_NAMES), np.int64)   # top-K examples per split code
    counts: dict[str, Any] = {}
    resumable = tables.resume_from is not None and fingerprint is not None
    with atomic_dir(folder) as tmp:
        parts = _Parts(Path(checkpoint) if checkpoint else tmp / "parts", fingerprint if resumable else None)
        _restore(parts, keys, topk_index, state_index, per_split)
        done = parts.done
        if done:
            log.info("resuming the export after %d examples (%d parts in %s)", done, len(parts.parts), checkpoint)
        rows_done, states_done = done, sum(part["states"] for part in parts.parts)
        for rows in (tables.resume_from(done) if done else tables.rows()):
            chunk = check_topk(rows.topk, n_items, keys, topk_index, rows_done)
            per_split += np.bincount(chunk["split"].combine_chunks().indices.to_numpy(), minlength=len(SPLIT_NAMES))
            states = None
            if rows.states is not None:
                states = check_states(rows.states, keys, state_index, states_done)
                states_done += states.num_rows
            rows_done += chunk.num_rows
            parts.add(chunk, states)
        parts.flush()
        topk_file, states_file = _ChunkedFile(tmp / "topk.parquet"), _ChunkedFile(tmp / "sequence_states.parquet")
        try:
            for target, kind in ((topk_file, "topk"), (states_file, "states")):
                for path in parts.files(kind):
                    target.add(pq.read_table(path))
        finally:
            topk_file.close()
            states_file.close()
        if topk_file.writer is None:
            raise DataError("the teacher exported no top-K rows at all")
        widths = {"top_k": topk_file.writer.schema.field("items").type.list_size}
        if states_file.writer is not None:
            widths["state_dim"] = states_file.writer.schema.field("state").type.list_size
            counts["states"] = states_file.rows
        if tables.explanations is not None:
            exp = tables.explanations
            slots = keys.locate(exp["user_idx"].to_numpy(), exp["position"].to_numpy(), "explanations")
            claim(np.full(keys.size, -1, np.int32), slots, 0, exp["user_idx"].to_numpy(), exp["position"].to_numpy(),
                  "explanations")
            split = pl.Series("split", [SPLIT_NAMES[c] for c in keys.split_codes(slots)], pl.Utf8)
            exp.drop("split", strict=False).with_columns(split.cast(examples["split"].dtype)).write_parquet(
                tmp / "explanations.parquet")
            counts["explanations"] = exp.height
        meta = {**(info() if callable(info) else info), **tables.info, **widths, "n_items": n_items,
                "counts": {"topk_examples": {s: int(c) for s, c in zip(SPLIT_NAMES, per_split) if c}, **counts},
                "score": tables.info.get("score", "log-probability; higher = better")}
        if tables.item_embeddings is not None:
            emb = np.asarray(tables.item_embeddings)
            if emb.ndim != 2 or emb.shape[0] != n_items:
                raise DataError(f"item embeddings: expected [{n_items}, D] (item_idx 1..{n_items}), got {emb.shape}")
            _finite(emb, "item embeddings")
            pq.write_table(pa.table({"item_idx": pa.array(np.arange(1, n_items + 1, dtype=np.int32)),
                                     "embedding": _lists(emb, pa.float32())}), tmp / "item_embeddings.parquet")
            meta["item_embedding_dim"] = int(emb.shape[1])
        write_json(tmp / "teacher.json", meta)
        if checkpoint:
            parts.finish()
        else:
            shutil.rmtree(parts.folder)
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

    def _chunks(self, file: str, columns: list[str], split: str | None) -> Iterator[pa.RecordBatch]:
        """Record batches of ROW_GROUP rows in file order, optionally of one split: bounded memory."""
        for batch in pq.ParquetFile(self.folder / file).iter_batches(ROW_GROUP, columns=columns + ["split"] * bool(split)):
            yield batch.filter(pc.equal(batch.column("split").cast(pa.string()), split)) if split else batch

    def iter_topk(self, split: str | None = None) -> Iterator[TopK]:
        """Top-K lists chunk by chunk in file order (not sorted), optionally of one split."""
        names = pq.read_schema(self.folder / "topk.parquet").names
        if "items" not in names:
            raise DataError(f"{self.folder / 'topk.parquet'} has columns {names}, not the list layout "
                            "(user_idx, position, split, items, scores) of this version: re-run export_teacher")
        for batch in self._chunks("topk.parquet", [*KEY, "items", "scores"], split):
            k = batch.schema.field("items").type.list_size
            yield TopK(*(batch.column(c).to_numpy().astype(np.int64) for c in KEY),
                       batch.column("items").flatten().to_numpy().reshape(-1, k).astype(np.int64),
                       batch.column("scores").flatten().to_numpy().reshape(-1, k))

    def iter_states(self) -> Iterator[States]:
        """Sequence states chunk by chunk in file order (none when the teacher exports no states)."""
        if not (self.folder / "sequence_states.parquet").exists():
            return
        for batch in self._chunks("sequence_states.parquet", [*KEY, "state"], None):
            dim = batch.schema.field("state").type.list_size
            yield States(*(batch.column(c).to_numpy().astype(np.int64) for c in KEY),
                         batch.column("state").flatten().to_numpy().reshape(-1, dim))

    def topk(self, split: str | None = None) -> TopK:
        """Top-K arrays of the whole export (or one split) in memory, sorted by key."""
        chunks = list(self.iter_topk(split))
        if not chunks:
            k = int(self.info["top_k"])
            return TopK(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, k), np.int64),
                        np.zeros((0, k), np.float32))
        return _by_key(_concat(chunks, TopK))

    def item_embeddings(self) -> np.ndarray | None:
        path = self.folder / "item_embeddings.parquet"
        if not path.exists():
            return None
        table = pq.read_table(path).sort_by("item_idx")
        return table["embedding"].combine_chunks().flatten().to_numpy().reshape(table.num_rows, -1).astype(np.float32)

    def states(self) -> States | None:
        """Every sequence state in memory, sorted by key."""
        chunks = list(self.iter_states())
        return _by_key(_concat(chunks, States)) if chunks else None

    def explanations(self) -> pl.DataFrame | None:
        path = self.folder / "explanations.parquet"
        return pl.read_parquet(path) if path.exists() else None
