"""GroupLens MovieLens in its native layouts, detected from the files present.

100K ships `u.data`/`u.item`, 1M and 10M `ratings.dat`/`movies.dat` ('::'), 20M and later
`ratings.csv`/`movies.csv`. The layout is read off the files rather than the dataset name, so a
renamed folder or a different release still loads; the name only picks what to download.
"""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

import polars as pl

from distillrec.data.download import ensure_raw_files
from distillrec.data.sources._tables import TIMESTAMP_RANGE, first_line, read_delimited, read_text_lines
from distillrec.data.sources.base import LinePolicy, RawData, find_file
from distillrec.errors import DataError
from distillrec.params import DatasetParams, IngestParams

URL = "https://files.grouplens.org/datasets/movielens/{name}.zip"
# dataset name -> folder its zip unpacks to
INNER = {
    "ml-100k": "ml-100k",
    "ml-1m": "ml-1m",
    "ml-10m": "ml-10M100K",
    "ml-20m": "ml-20m",
    "ml-25m": "ml-25m",
    "ml-32m": "ml-32m",
}
# (ratings file, items file), newest layout first
LAYOUTS = [("ratings.csv", "movies.csv"), ("ratings.dat", "movies.dat"), ("u.data", "u.item")]
U_ITEM_GENRES = [
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
    "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance",
    "Sci-Fi", "Thriller", "War", "Western",
]  # fmt: skip
NO_GENRES = "(no genres listed)"
RATINGS_SCHEMA: dict[str, pl.DataType] = {
    "user_id": pl.String(),
    "item_id": pl.String(),
    "rating": pl.Float32(),
    "timestamp": pl.Int64(),
}
RANGES = {"timestamp": TIMESTAMP_RANGE}  # a negative timestamp is a bad line
MOVIES_SCHEMA: dict[str, pl.DataType] = {
    "item_id": pl.String(),
    "title": pl.String(),
    "categories": pl.List(pl.String()),
}


def load(dataset: DatasetParams, ingest: IngestParams, raw_dir: Path, workdir: Path) -> RawData:
    found = _locate(raw_dir, dataset.name)
    if found is None:
        name = dataset.name
        downloads = [(URL.format(name=name), f"{name}.zip", None)] if name in INNER else []
        layouts = "; ".join(" + ".join(pair) for pair in LAYOUTS)
        ensure_raw_files(
            raw_dir,
            _expected(name),
            downloads,
            ingest.download,
            hint=f"(or inside the archive's folder, e.g. {raw_dir}/ml-10M100K/; "
            f"any MovieLens layout is accepted: {layouts})",
            present=lambda: _locate(raw_dir, name) is not None,
        )
        found = _locate(raw_dir, dataset.name)
    ratings_path, items_path = found
    dropped: Counter[str] = Counter()
    policy = LinePolicy(ingest.on_bad_line, dropped)
    interactions, n_ratings = _read_ratings(ratings_path, policy, workdir)
    items = _read_items(items_path, policy)
    return RawData(
        interactions=interactions,
        items=items.lazy(),
        files=[ratings_path, items_path],
        file_rows={ratings_path.name: n_ratings, items_path.name: items.height},
        dropped=dropped,
    )


def _expected(name: str) -> list[str]:
    if name == "ml-100k":
        return list(LAYOUTS[2])
    if name in ("ml-1m", "ml-10m"):
        return list(LAYOUTS[1])
    if name in INNER:
        return list(LAYOUTS[0])
    return [" + ".join(pair) for pair in LAYOUTS]


def _locate(raw_dir: Path, name: str) -> tuple[Path, Path] | None:
    """(ratings, items) of the first layout found in raw_dir or an archive folder inside it."""
    inner = [INNER.get(name, name), *INNER.values()]
    for folder in dict.fromkeys([raw_dir] + [raw_dir / sub for sub in inner]):
        for ratings, items in LAYOUTS:
            ratings_path, items_path = find_file(folder, [ratings]), find_file(folder, [items])
            if ratings_path and items_path:
                return ratings_path, items_path
    return None


def _read_ratings(path: Path, policy: LinePolicy, workdir: Path) -> tuple[pl.LazyFrame, int]:
    name = path.name.removesuffix(".gz")
    if name == "ratings.csv":
        _check_header(path, "userId,movieId,rating,timestamp")
        return read_delimited(path, ",", RATINGS_SCHEMA, policy, workdir, header=True, ranges=RANGES)
    sep = "\t" if name == "u.data" else "::"
    return read_delimited(path, sep, RATINGS_SCHEMA, policy, workdir, ranges=RANGES)


def _check_header(path: Path, expected: str) -> None:
    first = first_line(path)
    if first != expected:
        raise DataError(f"{path}:1: expected the header {expected!r}, found {first!r}")


def _read_items(path: Path, policy: LinePolicy) -> pl.DataFrame:
    name = path.name.removesuffix(".gz")
    rows = []
    lines = read_text_lines(path)
    if name == "movies.csv":
        _check_header(path, "movieId,title,genres")
        lines = [(lineno, text) for lineno, text in lines if lineno > 1]
    for lineno, text in lines:
        if name == "movies.csv":
            fields = next(csv.reader([text]))
        else:
            fields = text.split("|" if name == "u.item" else "::")
        row = _item_row(name, fields)
        if isinstance(row, str):
            policy.bad(path, lineno, text, row)
        else:
            rows.append(row)
    return pl.DataFrame(rows, schema=MOVIES_SCHEMA, orient="row")


def _item_row(name: str, fields: list[str]) -> tuple[str, str, list[str]] | str:
    """(item_id, title, genres), or the reason the fields are malformed."""
    if name == "u.item":
        want = 5 + len(U_ITEM_GENRES)
        if len(fields) != want:
            return f"expected {want} fields separated by '|', found {len(fields)}"
        flags = fields[5:]
        if not fields[0]:
            return "empty movie id"
        if any(flag not in ("0", "1") for flag in flags):
            return "genre flags must be 0 or 1"
        # 'unknown' marks a missing genre, like '(no genres listed)' in later releases
        genres = [g for g, flag in zip(U_ITEM_GENRES, flags) if flag == "1" and g != "unknown"]
        return fields[0], fields[1], genres
    if len(fields) != 3:
        return f"expected 3 fields (movieId, title, genres), found {len(fields)}"
    item_id, title, genres = fields
    if not item_id:
        return "empty movieId"
    return item_id, title, [] if genres in ("", NO_GENRES) else genres.split("|")
