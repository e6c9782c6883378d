"""`distillrec.load(folder).recommend(histories)`: ids in, ids, titles and scores out.

One object answers the Python API, `distillrec recommend` and every HTTP request, so they give the
same lists. It is split where the server needs it: `encode` checks a request's ids (a
`RequestError` names the offending field), `pad` and `scores` run the model on a batch of
histories (possibly from several requests), `rank` turns one row of scores into a list.

Backends: `onnx` (ONNX Runtime over the release's model.onnx; torch is never imported, so a
server starts in well under a second) and `torch` (the safetensors weights, or a saved student's
model.pt). Both read left-padded [B, L] int64 histories and return [B, n_items + 1] scores.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from distillrec.errors import DataError, DistillrecError
from distillrec.serving.files import CONFIG, ITEMS, ONNX, read_config

log = logging.getLogger(__name__)

Backend = Literal["auto", "onnx", "torch"]
Scorer = Callable[[np.ndarray], np.ndarray]


class RequestError(DistillrecError):
    """A caller's mistake in one field (HTTP 422): `field` is its path, e.g. histories[0][2]."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field, self.message = field, message


@dataclass(frozen=True)
class Recommendation:
    """One history's list, best first."""

    item_ids: list[str]
    titles: list[str | None]
    scores: list[float]

    def as_dict(self) -> dict[str, list]:
        return {"item_ids": self.item_ids, "titles": self.titles, "scores": self.scores}


class Catalogue:
    """The recommendable items 1..n_items: original ids, titles and a title search."""

    def __init__(self, ids: list[str], titles: list[str | None]):
        self.ids = ["<pad>", *ids]           # index = item_idx; 0 is padding and is never returned
        self.titles = [None, *titles]
        self.index = {item: idx for idx, item in enumerate(ids, start=1)}
        self._folded = [(t or "").casefold() for t in self.titles]

    @classmethod
    def read(cls, path: Path, n_items: int) -> Catalogue:
        """item_map.parquet of a release or student folder; every item_idx 1..n_items exactly once."""
        import pyarrow.parquet as pq  # already loaded by ONNX Runtime's numpy path; not polars: faster start

        try:
            table = pq.read_table(path).to_pydict()
        except Exception as exc:  # truncated, foreign or not parquet
            raise DataError(f"{path}: cannot be read, the file is truncated or corrupt ({exc})") from None
        if not {"item_idx", "item_id", "title"} <= set(table):
            raise DataError(f"{path}: expected columns item_idx, item_id, title; found {sorted(table)}")
        rows = sorted((int(i), str(item), title) for i, item, title in
                      zip(table["item_idx"], table["item_id"], table["title"]) if 1 <= int(i) <= n_items)
        if [r[0] for r in rows] != list(range(1, n_items + 1)):
            raise DataError(f"{path}: item_idx must cover 1..{n_items} once each (the model's catalogue); "
                            f"found {len(rows)} rows in that range")
        return cls([r[1] for r in rows], [r[2] for r in rows])

    def __len__(self) -> int:
        return len(self.ids) - 1

    def search(self, query: str, limit: int = 20) -> list[dict[str, Any]]:
        """Items whose title (or id) contains every word of `query`, case-insensitively, in catalogue order."""
        words = query.casefold().split()
        found = []
        for idx in range(1, len(self.ids)):
            text = f"{self._folded[idx]} {self.ids[idx].casefold()}"
            if all(word in text for word in words):
                found.append({"item_id": self.ids[idx], "title": self.titles[idx]})
                if len(found) == limit:
                    break
        return found


class Recommender:
    """A student (or a folded teacher) with its catalogue; see the module docstring."""

    def __init__(self, scorer: Scorer, catalogue: Catalogue, max_length: int, config: dict[str, Any],
                 backend: Backend):
        self._scorer, self.catalogue, self.max_length = scorer, catalogue, max_length
        self.config, self.backend = config, backend
        self.widths = [w for w in (8, 16, 32, 64, 128, 256) if w < max_length] + [max_length]

    def encode(self, histories: Sequence[Sequence[str]], field: str = "histories") -> list[list[int]]:
        """Original item ids -> internal indices; an empty history or an unknown id is a RequestError."""
        if isinstance(histories, (str, bytes)) or not isinstance(histories, Sequence):
            raise RequestError(field, "expected a list of histories (each a list of item ids, oldest first)")
        if not histories:
            raise RequestError(field, "no history given")
        encoded = []
        for h, history in enumerate(histories):
            if isinstance(history, (str, bytes)) or not isinstance(history, Sequence):
                raise RequestError(f"{field}[{h}]", "expected a list of item ids, oldest first")
            if not history:
                raise RequestError(f"{field}[{h}]", "empty history: give at least one item id")
            row = []
            for i, item in enumerate(history):
                idx = self.catalogue.index.get(item) if isinstance(item, str) else None
                if idx is None:
                    example = ", ".join(self.catalogue.ids[1:4])
                    raise RequestError(f"{field}[{h}][{i}]", f"unknown item id {item!r}: not in the model's "
                                       f"catalogue of {len(self.catalogue)} items (e.g. {example})")
                row.append(idx)
            encoded.append(row)
        return encoded

    def pad(self, encoded: Sequence[Sequence[int]]) -> np.ndarray:
        """Left-padded [B, W] int64: the most recent max_length items of each history, W the
        smallest width of `widths` that holds the longest. Positions count from the right and
        padding never reaches a real position, so a short history needs no max_length columns
        (3x less work at 12 items of 50); fixed widths keep a history's scores independent of
        which other histories share its forward pass."""
        longest = min(max(len(h) for h in encoded), self.max_length)
        width = next(w for w in self.widths if w >= longest)
        batch = np.zeros((len(encoded), width), dtype=np.int64)
        for row, history in enumerate(encoded):
            recent = history[-width:]
            batch[row, width - len(recent):] = recent
        return batch

    def scores(self, padded: np.ndarray) -> np.ndarray:
        """[B, n_items + 1] float32 scores (column 0 = padding); non-finite scores are an error."""
        out = self._scorer(padded)
        if not np.isfinite(out[:, 1:]).all():
            raise DistillrecError("the model produced non-finite scores: its weights are broken")
        return out

    def rank(self, scores: np.ndarray, history: Sequence[int], k: int, exclude_seen: bool) -> Recommendation:
        """The top k of one row of scores: never padding; never a history item when `exclude_seen`.
        Fewer than k items come back only when fewer can be recommended."""
        scores = scores.astype(np.float32, copy=True)
        scores[0] = -np.inf
        if exclude_seen:
            scores[np.asarray(history, dtype=np.int64)] = -np.inf
        allowed = int(np.isfinite(scores).sum())
        k = min(k, allowed)
        top = np.argpartition(-scores, k - 1)[:k] if 0 < k < len(scores) else np.arange(len(scores))[:k]
        top = top[np.lexsort((top, -scores[top]))]       # best first; equal scores by item index
        return Recommendation([self.catalogue.ids[i] for i in top], [self.catalogue.titles[i] for i in top],
                              [round(float(scores[i]), 6) for i in top])

    def recommend(self, histories: Sequence[Sequence[str]], k: int = 10,
                  exclude_seen: bool = True) -> list[Recommendation]:
        """One list per history (item ids as in the raw data, oldest first)."""
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise RequestError("k", f"expected an integer >= 1, found {k!r}")
        encoded = self.encode(histories)
        scores = self.scores(self.pad(encoded))
        return [self.rank(row, history, k, exclude_seen) for row, history in zip(scores, encoded)]


def _onnx_scorer(path: Path, threads: int) -> Scorer:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    try:
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # ONNX Runtime's own errors for a truncated or foreign file
        raise DataError(f"{path}: cannot be loaded by ONNX Runtime ({str(exc)[:300]})") from None
    return lambda padded: session.run(None, {"history": padded})[0]


def _torch_scorer(module: Any, threads: int | None) -> Scorer:
    import torch

    if threads:
        torch.set_num_threads(threads)

    def score(padded: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            history = torch.from_numpy(padded)
            return module.score(module.user_states(history)).float().numpy()
    return score


def _folder_run(folder: Path) -> dict[str, Any]:
    """row, method and seed of a saved student from its place, models/students/<model>-<method>/seed<N>
    (method none is the row `baseline`); None where the folder is not laid out so."""
    folder = folder.resolve()
    method = folder.parent.name.split("-", 1)[1] if "-" in folder.parent.name else None
    digits = folder.name.removeprefix("seed")
    seed = int(digits) if folder.name.startswith("seed") and digits.isdigit() else None
    return {"row": "baseline" if method == "none" else method, "method": method, "seed": seed}


def load(folder: Path | str, backend: Backend = "auto", threads: int | None = None) -> Recommender:
    """A release folder (config.json, model.safetensors, model.onnx, item_map.parquet) or a saved
    student folder (student.json, model.pt; torch only). backend `auto`: onnx where the folder has
    model.onnx, else torch. `threads`: intra-op threads (None = the backend's default)."""
    folder = Path(folder)
    if backend not in ("auto", "onnx", "torch"):
        raise DistillrecError(f"backend {backend!r}: expected auto, onnx or torch")
    if backend == "auto":
        backend = "onnx" if (folder / ONNX).is_file() and (folder / CONFIG).is_file() else "torch"
    if not folder.is_dir():
        raise DataError(f"{folder}: no such folder (a release folder, e.g. models/release, or a saved student)")
    if not (folder / CONFIG).is_file():
        if backend == "onnx":
            raise DataError(f"{folder}: the onnx backend needs a release folder (config.json and model.onnx, "
                            f"written by the `release` stage); a saved student serves with backend torch")
        from distillrec.students.saved import load_student

        module, meta = load_student(folder)
        config = {"n_items": meta["n_items"], "architecture": meta["student"], "source": str(folder),
                  **_folder_run(folder)}
        return Recommender(_torch_scorer(module, threads), Catalogue.read(folder / ITEMS, meta["n_items"]),
                           int(meta["student"]["max_length"]), config, backend)
    config = read_config(folder)
    catalogue = Catalogue.read(folder / ITEMS, config["n_items"])
    if backend == "onnx":
        if not (folder / ONNX).is_file():
            raise DataError(f"{folder / ONNX}: missing; re-run the release stage, or use backend torch")
        scorer = _onnx_scorer(folder / ONNX, threads or 1)
    else:
        from distillrec.serving.artifact import load_module

        scorer = _torch_scorer(load_module(folder, config), threads)
    return Recommender(scorer, catalogue, int(config["architecture"]["max_length"]), config, backend)
