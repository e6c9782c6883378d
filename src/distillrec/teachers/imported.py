"""Imported teachers (`imports.<name>`, stage `import_teacher@<name>`): another system's outputs,
checked against our split, written in our export schema (data/teacher/<name>), with no training.

A user with BIGRec/DLLM2Rec teacher files distils from them without retraining. DLLM2Rec's files
carry no keys (its rows are aligned to `train_data.df` by order, docs/methods.md §1), so a `rows` file
names the (user, position) of every row; we then validate rows, item ids and values.

DLLM2Rec format (`format: dllm2rec`), all in `path` (`rows` and `item_ids` are file names in it too):
- `myrank_train.txt`: one row per training example, the teacher's top-n item ids (0-based), best first;
- `confidence_train.txt`: the same shape, the L2 distance of each listed item (smaller = better);
- `all_embeddings.pt` (optional): [N, D] item embeddings, row = their item id (`torch.load`,
  weights only: a pickle that would run code is refused, never executed).
The export score is -distance: softmax(score / tau) is then the softmax(-d / tau) that docs/methods.md §3.2
calls for, with tau (`distill.dllm2rec.confidence_temperature`) chosen from the distance quantiles
recorded in teacher.json.
"""

from __future__ import annotations

import logging
import pickle
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch

from distillrec.errors import DataError, ParamsError
from distillrec.params import ImportParams, Params
from distillrec.teachers.data import TeacherData
from distillrec.teachers.export import ExportTables, TeacherExport, TopK, write_export

log = logging.getLogger(__name__)
RANKS, CONFIDENCE, EMBEDDINGS = "myrank_train.txt", "confidence_train.txt", "all_embeddings.pt"
SCORE = "-(L2 distance) from confidence_train.txt: higher = better"


def _table(path: Path) -> pl.DataFrame:
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    try:
        table = pl.read_parquet(path) if path.suffix == ".parquet" else pl.read_csv(path)
    except (pl.exceptions.PolarsError, OSError) as exc:  # NoDataError for an empty file
        raise DataError(f"{path}: cannot be read as a table ({_brief(exc)})") from None
    if table.height == 0:
        raise DataError(f"{path}: has no rows")
    return table


def _brief(exc: BaseException) -> str:
    text = " ".join(line.strip() for line in str(exc).splitlines() if line.strip()) or type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."


def _line(path: Path, row: int) -> str:
    """'line N' of a 0-based table row (a CSV's header is line 1), or 'row N' in a Parquet file."""
    return f"row {row + 1}" if path.suffix == ".parquet" else f"line {row + 2}"


def _where(path: Path, row: int) -> str:
    """`file:line` of a 0-based table row (`file: row N` for Parquet)."""
    return f"{path}: row {row + 1}" if path.suffix == ".parquet" else f"{path}:{row + 2}"


def _embeddings(path: Path) -> np.ndarray:
    """[N, D] finite float item embeddings from a `torch.save`d tensor, or a DataError naming the file."""
    try:
        tensor = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise DataError(f"{path}: refused: not a plain saved tensor, and a pickle is never executed "
                        f"({_brief(exc)})") from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise DataError(f"{path}: cannot be read, the file is truncated or corrupt ({_brief(exc)})") from None
    if not isinstance(tensor, torch.Tensor):
        raise DataError(f"{path}: expected one [items, dim] tensor, found {type(tensor).__name__}")
    if tensor.ndim != 2 or 0 in tensor.shape:
        raise DataError(f"{path}: expected a 2-D [items, dim] tensor, found shape {tuple(tensor.shape)}")
    if not (tensor.is_floating_point() or tensor.dtype in (torch.int8, torch.int16, torch.int32, torch.int64)):
        raise DataError(f"{path}: expected real numbers, found dtype {tensor.dtype}")
    embeddings = tensor.float().numpy()
    bad = ~np.isfinite(embeddings)
    if bad.any():
        row, col = (int(i) for i in np.argwhere(bad)[0])
        raise DataError(f"{path}: the row of their item id {row} (row {row + 1} of {len(embeddings)}) has value "
                        f"{col + 1} = {embeddings[row, col]} (must be finite); {int(bad.any(axis=1).sum())} rows "
                        "have non-finite values")
    return embeddings


def _matrix(path: Path, dtype: type) -> np.ndarray:
    if not path.is_file():
        raise DataError(f"{path}: no such file (a DLLM2Rec teacher folder holds {RANKS} and {CONFIDENCE})")
    data = path.read_bytes()
    try:
        rows = data.decode("utf-8").splitlines()
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise DataError(f"{path}:{line}: not valid UTF-8 text") from None
    if not rows:
        raise DataError(f"{path}: the file is empty")
    try:
        matrix = [np.array(line.split(), dtype=dtype) for line in rows]
    except (ValueError, OverflowError) as exc:
        line = next(i for i, text in enumerate(rows, 1) if not _parses(text, dtype))
        raise DataError(f"{path}:{line}: expected {dtype.__name__} values separated by spaces ({exc})") from None
    widths = {len(row) for row in matrix}
    if len(widths) != 1:
        line = next(i for i, row in enumerate(matrix, 1) if len(row) != len(matrix[0]))
        raise DataError(f"{path}:{line}: {len(matrix[line - 1])} values, but line 1 has {len(matrix[0])}")
    return np.stack(matrix)


def _parses(text: str, dtype: type) -> bool:
    try:
        np.array(text.split(), dtype=dtype)
    except (ValueError, OverflowError):
        return False
    return True


def _keys(rows: pl.DataFrame, data: TeacherData, path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(user_idx, position) of each row; raw `user_id`s are mapped through the split's user map.

    Every key must be an integer pair that is an example of the split, once: a problem names the
    file and line of the first offending row."""
    if "position" not in rows.columns or not {"user_id", "user_idx"} & set(rows.columns):
        raise DataError(f"{path}: expected columns user_id (or user_idx) and position, got {rows.columns}")
    rows = rows.with_row_index("_row")
    if "user_idx" not in rows.columns:
        rows = rows.with_columns(pl.col("user_id").cast(pl.String)).join(
            data.split.user_map, on="user_id", how="left", maintain_order="left")
        unknown = rows.filter(pl.col("user_idx").is_null())
        if unknown.height:
            raise DataError(f"{_where(path, unknown['_row'][0])}: user id {unknown['user_id'][0]!r} is not in the "
                            f"split ({unknown.height} rows have unknown user ids)")
    for column in ("user_idx", "position"):
        typed = rows[column].cast(pl.Int64, strict=False)
        wrong = rows.filter(typed.is_null() | (typed.cast(pl.Float64) != rows[column].cast(pl.Float64, strict=False)))
        if wrong.height:
            raise DataError(f"{_where(path, wrong['_row'][0])}: {column} must be an integer, found "
                            f"{wrong[column][0]!r}")
    keys = rows.select("_row", pl.col("user_idx", "position").cast(pl.Int64))
    duplicated = keys.filter(pl.struct("user_idx", "position").is_duplicated())
    if duplicated.height:
        user, position = duplicated["user_idx"][0], duplicated["position"][0]
        same = duplicated.filter((pl.col("user_idx") == user) & (pl.col("position") == position))["_row"]
        raise DataError(f"{_where(path, same[1])}: duplicate key (user_idx, position) = ({user}, {position}), "
                        f"first given on {_line(path, same[0])}")
    examples = data.split.examples.select(pl.col("user_idx", "position").cast(pl.Int64), pl.lit(True).alias("_known"))
    foreign = keys.join(examples, on=["user_idx", "position"], how="left").filter(pl.col("_known").is_null()).sort("_row")
    if foreign.height:
        row, user, position = foreign.row(0)[:3]
        raise DataError(f"{_where(path, row)}: (user_idx, position) = ({user}, {position}) is not an example of "
                        f"the split ({foreign.height} rows are not); positions are 0-based indices into the "
                        "user's sequence")
    return keys["user_idx"].to_numpy(), keys["position"].to_numpy()


def _item_index(cfg_item_ids: str | None, data: TeacherData, n_theirs: int) -> np.ndarray:
    """[n_theirs] our item_idx of each of their ids (0 = not in our split)."""
    if cfg_item_ids is None:
        ours = np.arange(1, n_theirs + 1)
        return np.where(ours <= data.n_items, ours, 0)
    path = Path(cfg_item_ids)
    mapping = _table(path)
    if not {"id", "item_id"} <= set(mapping.columns):
        raise DataError(f"{path}: expected columns id and item_id, got {mapping.columns}")
    joined = mapping.with_columns(pl.col("item_id").cast(pl.String)).join(
        data.split.item_map.select("item_id", "item_idx"), on="item_id", how="left")
    index = np.zeros(max(n_theirs, int(joined["id"].max()) + 1), np.int64)
    index[joined["id"].to_numpy()] = joined["item_idx"].fill_null(0).to_numpy()
    return index


def read_dllm2rec(folder: Path, rows_file: Path, item_ids: str | None, data: TeacherData) -> ExportTables:
    """Their files → our tables, with every mismatch named (file, line, value)."""
    ranks, distances = _matrix(folder / RANKS, int), _matrix(folder / CONFIDENCE, float)
    if ranks.shape != distances.shape:
        raise DataError(f"{folder / RANKS} is {ranks.shape[0]}×{ranks.shape[1]} but {folder / CONFIDENCE} is "
                        f"{distances.shape[0]}×{distances.shape[1]}: the files must describe the same rows")
    rows = _table(rows_file)
    if rows.height != len(ranks):
        raise DataError(f"{rows_file} has {rows.height} rows but {folder / RANKS} has {len(ranks)}: "
                        "they must list the same training rows in the same order")
    bad = ~np.isfinite(distances)
    if bad.any():
        line, col = (int(i) for i in np.argwhere(bad)[0])
        raise DataError(f"{folder / CONFIDENCE}:{line + 1}: value {col + 1} is {distances[line, col]} (must be finite)")
    embeddings = _embeddings(folder / EMBEDDINGS) if (folder / EMBEDDINGS).is_file() else None
    n_theirs = len(embeddings) if embeddings is not None else int(ranks.max()) + 1
    index = _item_index(item_ids, data, n_theirs)
    if ranks.min() < 0 or ranks.max() >= len(index) or (index[ranks] == 0).any():
        line, col = (int(i) for i in np.argwhere((ranks < 0) | (ranks >= len(index)) |
                                                  (index[ranks.clip(0, len(index) - 1)] == 0))[0])
        raise DataError(f"{folder / RANKS}:{line + 1}: item id {ranks[line, col]} is not an item of the split "
                        f"(ids are 0-based; map them with item_ids)")
    users, positions = _keys(rows, data, rows_file)
    tables = ExportTables(TopK(users, positions, index[ranks], -distances.astype(np.float32)))
    if embeddings is not None:
        ours = np.zeros((data.n_items, embeddings.shape[1]), np.float32)
        known = index[:len(embeddings)] > 0
        ours[index[:len(embeddings)][known] - 1] = embeddings[known]
        if known.sum() < data.n_items:
            raise DataError(f"{folder / EMBEDDINGS}: {data.n_items - int(known.sum())} items of the split have no row")
        tables.item_embeddings = ours
    quantiles = np.quantile(distances, [0.05, 0.5, 0.95]).round(4).tolist()
    tables.info = {"score": SCORE, "distance_quantiles_5_50_95": quantiles, "format": "dllm2rec"}
    return tables


def write_dllm2rec(export: TeacherExport, folder: Path | str) -> None:
    """Our export's training rows as DLLM2Rec teacher files (+ rows.csv naming each row's key)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    topk = export.topk("train")
    np.savetxt(folder / RANKS, topk.items - 1, fmt="%d")
    np.savetxt(folder / CONFIDENCE, -topk.scores.astype(np.float64), fmt="%.9g")
    pl.DataFrame({"user_idx": topk.users, "position": topk.positions}).write_csv(folder / "rows.csv")
    embeddings = export.item_embeddings()
    if embeddings is not None:
        torch.save(torch.as_tensor(embeddings), folder / EMBEDDINGS)


def read_parquet(folder: Path) -> ExportTables:
    """A folder already in our schema (another distillrec run, or another tool writing it)."""
    export = TeacherExport(folder)
    return ExportTables(export.topk(), export.item_embeddings(), export.states(), export.explanations(),
                        {"score": export.info.get("score", "as in the imported teacher.json"), "format": "parquet"})


def read_import(cfg: ImportParams, data: TeacherData) -> ExportTables:
    """The files of `cfg.path` as our tables (not yet validated against the split: `write_export` does)."""
    folder = Path(cfg.path)
    if not folder.is_dir():
        raise DataError(f"imports: path {folder} is not a folder")
    if cfg.format == "parquet":
        return read_parquet(folder)
    return read_dllm2rec(folder, folder / str(cfg.rows), None if cfg.item_ids is None else str(folder / cfg.item_ids),
                         data)


def import_teacher(params: Params, name: str, processed: Path | str, out_dir: Path | str) -> dict[str, Any]:
    """Stage `import_teacher@<name>`: read `imports.<name>`'s files, check every row against the split and
    write `data/teacher/<name>/` in the export contract (no training: its cost fields are 0)."""
    if name not in params.imports:
        trained = f" ({name!r} is a trained teacher: stages train_teacher/export_teacher)" if name in params.teachers else ""
        raise ParamsError(f"no import named {name!r} in params.yaml{trained}; configured imports: "
                          f"{', '.join(params.imports) or 'none'}")
    cfg = params.imports[name]
    data = TeacherData.load(processed)
    started = time.perf_counter()
    tables = read_import(cfg, data)
    seconds = time.perf_counter() - started
    users = np.unique(tables.topk.users).size
    info = {"name": name, "family": "import", "base_model": None, "finetune": None, "parameters": 0,
            "trainable_parameters": 0, "size_mb": 0.0, "train_seconds": 0.0, "source": cfg.model_dump(mode="json"),
            "export": {"examples": len(tables.topk.users), "seconds": seconds,
                       "ms_per_example": 1000 * seconds / max(len(tables.topk.users), 1),
                       "ms_per_user": 1000 * seconds / max(users, 1), "device": "cpu",
                       "threads": torch.get_num_threads()},
            "exported_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    return write_export(out_dir, tables, data.split.examples, data.n_items, info)
