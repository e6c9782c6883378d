"""RecBole atomic files: `<name>.inter` and optional `<name>.item`, tab-separated.

The header names each column as `field:type` (token, token_seq, float, float_seq), so columns
are found by name, not position. Fields are matched by RecBole's conventional names.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import polars as pl

from distillrec.data.sources._tables import TIMESTAMP_RANGE, first_line, iter_checked_lines, read_delimited
from distillrec.data.sources.base import LinePolicy, RawData, find_file
from distillrec.errors import DataError, MissingFilesError
from distillrec.params import DatasetParams, IngestParams

# timestamp is required: split orders each user's history by time
INTER_TYPES: dict[str, pl.DataType] = {
    "user_id": pl.String(),
    "item_id": pl.String(),
    "timestamp": pl.Float64(),
    "rating": pl.Float32(),
}
REQUIRED = ("user_id", "item_id", "timestamp")
# canonical item column -> RecBole field names that may carry it
ITEM_FIELDS = {
    "title": ("movie_title", "title"),
    "categories": ("class", "categories"),
    "description": ("description",),
    "brand": ("brand",),
}


def load(dataset: DatasetParams, ingest: IngestParams, raw_dir: Path, workdir: Path) -> RawData:
    inter_path = find_file(raw_dir, [f"{dataset.name}.inter"])
    if inter_path is None:
        raise MissingFilesError(
            raw_dir,
            [f"{dataset.name}.inter", f"{dataset.name}.item (optional)"],
            "RecBole atomic files are produced by RecBole's dataset tooling "
            "(https://github.com/RUCAIBox/RecSysDatasets); they are never downloaded here.",
        )
    dropped: Counter[str] = Counter()
    policy = LinePolicy(ingest.on_bad_line, dropped)
    header = _header(inter_path, REQUIRED)
    schema = {name: INTER_TYPES.get(name, pl.String()) for name in header}
    optional = frozenset(name for name in header if name not in INTER_TYPES)
    # a float timestamp must be finite, not negative and castable to int64 (NaN, inf, 1e30 are bad lines)
    frame, rows = read_delimited(inter_path, "\t", schema, policy, workdir, True, optional,
                                 ranges={"timestamp": TIMESTAMP_RANGE})
    interactions = frame.select(
        pl.col("user_id", "item_id"),
        pl.col("timestamp").cast(pl.Int64),
        *([pl.col("rating")] if "rating" in header else []),
    )
    files, file_rows = [inter_path], {inter_path.name: rows}
    item_path = find_file(raw_dir, [f"{dataset.name}.item"])
    items = pl.DataFrame(schema={"item_id": pl.String()})
    if item_path is not None:
        items = _read_items(item_path, policy)
        files.append(item_path)
        file_rows[item_path.name] = items.height
    return RawData(interactions, items.lazy(), files, file_rows, dropped)


def _header(path: Path, required: tuple[str, ...]) -> list[str]:
    """Field names from the `field:type` header; DataError naming what is missing."""
    text = first_line(path)
    columns = text.split("\t")
    if not all(":" in column for column in columns):
        raise DataError(f"{path}:1: expected a RecBole 'field:type' header, found {text!r}")
    names = [column.split(":", 1)[0] for column in columns]
    missing = [name for name in required if name not in names]
    if missing:
        raise DataError(
            f"{path}:1: header lacks required field(s) {', '.join(missing)}; found {text!r}"
        )
    return names


def _read_items(path: Path, policy: LinePolicy) -> pl.DataFrame:
    header = _header(path, ("item_id",))
    where = {
        column: next((header.index(f) for f in fields if f in header), None)
        for column, fields in ITEM_FIELDS.items()
    }
    rows = []
    for lineno, text in iter_checked_lines(path, policy, skip=1):
        fields = text.split("\t")
        if len(fields) != len(header):
            reason = f"expected {len(header)} tab-separated fields, found {len(fields)}"
            policy.bad(path, lineno, text, reason)
            continue
        row = {"item_id": fields[header.index("item_id")]}
        for column, index in where.items():
            value = fields[index] if index is not None else ""
            row[column] = value.split() if column == "categories" else value or None
        rows.append(row)
    schema = {
        "item_id": pl.String(),
        "title": pl.String(),
        "categories": pl.List(pl.String()),
        "description": pl.String(),
        "brand": pl.String(),
    }
    found = ["item_id"] + [column for column, index in where.items() if index is not None]
    return pl.DataFrame(rows, schema=schema).select(found)
