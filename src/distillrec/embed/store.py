"""The contract of `data/item_text/<name>/` (embed_items): `item_embeddings.parquet` and `card.json`.

`item_embeddings.parquet`: `item_idx` int64 (1..N, sorted, each once) and `embedding`
(fixed-size list<float32>, one width D). `read_item_embeddings` is how every other stage reads it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from distillrec.errors import DataError
from distillrec.io import atomic_dir

EMBEDDINGS = "item_embeddings.parquet"
CARD = "card.json"


def write_item_embeddings(folder: Path | str, vectors: np.ndarray, card: dict[str, Any]) -> None:
    """`vectors` [N, D]: row i - 1 is item i. Replaces `folder` atomically."""
    vectors = np.ascontiguousarray(vectors, np.float32)
    if vectors.ndim != 2 or not np.isfinite(vectors).all():
        raise DataError(f"item embeddings must be a finite [N, D] matrix, got shape {vectors.shape}")
    table = pa.table({
        "item_idx": pa.array(np.arange(1, len(vectors) + 1, dtype=np.int64)),
        "embedding": pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1), pa.float32()), vectors.shape[1]),
    })
    with atomic_dir(folder) as tmp:
        pq.write_table(table, tmp / EMBEDDINGS)
        (tmp / CARD).write_text(json.dumps(card, indent=2, sort_keys=True) + "\n")


def read_item_embeddings(folder: Path | str, n_items: int) -> np.ndarray:
    """[n_items + 1, D] float32: row 0 zeros (padding), row i item i. A DataError says what is wrong."""
    path = Path(folder) / EMBEDDINGS
    redo = f"re-run embed_items (dvc repro embed_items@{Path(folder).name})"
    if not path.is_file():
        raise DataError(f"{path} not found: {redo}")
    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as exc:
        raise DataError(f"{path} is unreadable ({exc}): {redo}") from None
    missing = {"item_idx", "embedding"} - set(table.column_names)
    if missing:
        raise DataError(f"{path} lacks column(s) {', '.join(sorted(missing))}: {redo}")
    column = table["embedding"].combine_chunks()
    if not (pa.types.is_fixed_size_list(column.type) and pa.types.is_floating(column.type.value_type)):
        raise DataError(f"{path}: embedding must be a fixed-size list of floats, got {column.type}: {redo}")
    if column.null_count:
        raise DataError(f"{path}: {column.null_count} null embedding(s): {redo}")
    dim = column.type.list_size
    vectors = column.flatten().to_numpy(zero_copy_only=False).astype(np.float32).reshape(-1, dim)
    items = table["item_idx"].to_numpy(zero_copy_only=False)
    if not np.issubdtype(items.dtype, np.integer):
        raise DataError(f"{path}: item_idx must be integers, got {table['item_idx'].type}: {redo}")
    if len(items) != n_items or not np.array_equal(np.sort(items), np.arange(1, n_items + 1)):
        present = set(items.tolist())
        lacking = [i for i in range(1, n_items + 1) if i not in present][:5]
        raise DataError(f"{path} holds {len(items)} rows ({len(present)} distinct items) but the catalogue has "
                        f"{n_items} items (item_idx 1..{n_items} each once"
                        + (f"; missing e.g. {lacking}" if lacking else "") + f"): {redo}")
    bad = ~np.isfinite(vectors).all(1)
    if bad.any():
        raise DataError(f"{path}: {int(bad.sum())} embedding(s) with NaN or inf values (item_idx "
                        f"{items[bad][:5].tolist()}): {redo}")
    out = np.zeros((n_items + 1, dim), np.float32)
    out[items] = vectors
    return out


def read_card(folder: Path | str) -> dict[str, Any]:
    path = Path(folder) / CARD
    if not path.is_file():
        raise DataError(f"{path} not found: re-run embed_items (dvc repro embed_items@{Path(folder).name})")
    return json.loads(path.read_text())
