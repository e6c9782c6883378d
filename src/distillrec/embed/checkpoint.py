"""Resumable chunks: `chunk-<k>.safetensors` holds the vectors of the k-th `chunk_items` items (in the
length-sorted order) with the run's fingerprint in its metadata. A chunk is reused only when its
fingerprint and item list match this run's, so a run with other params, another model, other
item text or other code recomputes it; chunks that are not this run's are removed when the run completes.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file

from distillrec.io import LOCK, atomic_file, code_digest

log = logging.getLogger(__name__)


def fingerprint(**parts: Any) -> str:
    """The run's identity: its params, model, item text and the package's code."""
    text = json.dumps({"code": code_digest(), **parts}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def texts_digest(texts: list[str]) -> str:
    return hashlib.sha256(json.dumps(texts).encode()).hexdigest()


def chunk_path(folder: Path, k: int) -> Path:
    return folder / f"chunk-{k}.safetensors"


def save_chunk(folder: Path, k: int, key: str, items: np.ndarray, vectors: np.ndarray) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_file(chunk_path(folder, k)) as tmp:
        save_file({"items": np.ascontiguousarray(items, np.int64),
                   "vectors": np.ascontiguousarray(vectors, np.float32)}, str(tmp), metadata={"fingerprint": key})


def load_chunk(folder: Path, k: int, key: str, items: np.ndarray) -> np.ndarray | None:
    """The chunk's vectors if it was written by this configuration for these items, else None."""
    path = chunk_path(folder, k)
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="np") as handle:
            if (handle.metadata() or {}).get("fingerprint") != key:
                log.info("%s was written with other params, model or item text: recomputing it", path)
                return None
            stored, vectors = handle.get_tensor("items"), handle.get_tensor("vectors")
    except (SafetensorError, OSError, KeyError) as exc:
        log.warning("%s is unreadable (%s): recomputing it", path, exc)
        return None
    if not np.array_equal(stored, items) or vectors.shape[0] != len(items) or not np.isfinite(vectors).all():
        log.warning("%s does not hold this chunk's items: recomputing it", path)
        return None
    return vectors


def prune(folder: Path, keep: int) -> None:
    """Remove every file but chunk-0..chunk-<keep - 1> (all of which this run wrote or verified) and
    the writer's lock."""
    if not folder.is_dir():
        return
    wanted = {chunk_path(folder, k).name for k in range(keep)} | {LOCK}
    for path in folder.iterdir():
        if path.is_file() and path.name not in wanted:
            path.unlink()
