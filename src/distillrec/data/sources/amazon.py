"""Amazon review categories from the McAuley-lab releases 2014, 2018 and 2023.

A category can hold ~10M reviews, so files are streamed batch by batch into Parquet in the
workdir with pyarrow's JSON reader (explicit schema, unknown fields ignored) and never held as
Python objects. That reader is strict and reports no line numbers, so when it rejects a file a
line-by-line scan redoes the file: it names the first bad line (file:line:text) or, with
`on_bad_line: skip`, skips and counts bad lines while keeping every good one. Both paths refuse the
same records: a missing key field, invalid UTF-8, a non-finite rating or a negative timestamp.

The metadata file is optional: without it every item has no text (warned about, and counted as
`items_without_title` in the manifest); teachers that need titles then refuse with a clear message.
"""

from __future__ import annotations

import ast
import http.client
import json
import logging
import math
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pj
import pyarrow.parquet as pq

from distillrec.data.download import fetch
from distillrec.data.sources._tables import TIMESTAMP_RANGE
from distillrec.data.sources.base import LinePolicy, RawData, find_file, open_bytes, reading, unreadable
from distillrec.errors import MissingFilesError
from distillrec.params import DatasetParams, IngestParams

log = logging.getLogger(__name__)

BLOCK_SIZE = 8 << 20  # bytes of JSON per pyarrow batch: ~0.5 GiB peak RSS on 5M reviews, no slower
SCAN_BATCH = 100_000  # rows buffered by the line-by-line scan before a Parquet write
SNAP = "http://snap.stanford.edu/data/amazon/productGraph/categoryFiles"
UCSD = "https://datarepo.eng.ucsd.edu/mcauley_group/data"

REVIEW_SCHEMA = pa.schema([
    ("user_id", pa.string()), ("item_id", pa.string()), ("timestamp", pa.int64()),
    ("rating", pa.float64()), ("review_title", pa.string()), ("review_text", pa.string()),
])
META_SCHEMA = pa.schema([
    ("item_id", pa.string()), ("title", pa.string()), ("description", pa.list_(pa.string())),
    ("features", pa.list_(pa.string())), ("categories", pa.list_(pa.string())),
    ("brand", pa.string()),
])
REQUIRED_REVIEW = ("user_id", "item_id", "timestamp", "rating")


@dataclass(frozen=True)
class Release:
    """File names, URLs and raw field names (canonical column -> raw key) of one release."""

    reviews: str  # name template with {cat} and {core} ("_5" for the 5-core file, else "")
    meta: str
    reviews_url: str
    meta_url: str
    review_fields: dict[str, str]
    meta_fields: dict[str, str]
    units_per_second: int  # 2023 timestamps are milliseconds
    meta_is_python: bool  # 2014 metadata is one Python literal per line, not JSON


V2014_V2018_REVIEWS = {"user_id": "reviewerID", "item_id": "asin", "timestamp": "unixReviewTime",
                       "rating": "overall", "review_title": "summary", "review_text": "reviewText"}
RELEASES = {
    2014: Release(
        "reviews_{cat}{core}.json.gz", "meta_{cat}.json.gz",
        SNAP + "/reviews_{cat}{core}.json.gz", SNAP + "/meta_{cat}.json.gz",
        V2014_V2018_REVIEWS,
        {"item_id": "asin", "title": "title", "description": "description",
         "categories": "categories", "brand": "brand"},
        1, True),
    2018: Release(
        "{cat}{core}.json.gz", "meta_{cat}.json.gz",
        UCSD + "/amazon_v2/{folder}/{cat}{core}.json.gz", UCSD + "/amazon_v2/metaFiles2/meta_{cat}.json.gz",
        V2014_V2018_REVIEWS,
        {"item_id": "asin", "title": "title", "description": "description",
         "categories": "category", "brand": "brand"},
        1, False),
    2023: Release(
        "{cat}.jsonl.gz", "meta_{cat}.jsonl.gz",
        UCSD + "/amazon_2023/raw/review_categories/{cat}.jsonl.gz",
        UCSD + "/amazon_2023/raw/meta_categories/meta_{cat}.jsonl.gz",
        {"user_id": "user_id", "item_id": "parent_asin", "timestamp": "timestamp",
         "rating": "rating", "review_title": "title", "review_text": "text"},
        {"item_id": "parent_asin", "title": "title", "description": "description",
         "features": "features", "categories": "categories", "brand": "store"},
        1000, False),
}


class _Bad(ValueError):
    """A record that parses but cannot be used; the message is the LinePolicy reason."""


# ---------------------------------------------------------------- locating / downloading files

def _expected(dataset: DatasetParams, release: Release) -> tuple[tuple[str, str], tuple[str, str]]:
    """((reviews name, url), (meta name, url)) for this category and release."""
    core = "_5" if dataset.amazon.five_core and dataset.amazon.version != 2023 else ""
    keys = {"cat": dataset.name, "core": core, "folder": "categoryFilesSmall" if core else "categoryFiles"}
    return ((release.reviews.format(**keys), release.reviews_url.format(**keys)),
            (release.meta.format(**keys), release.meta_url.format(**keys)))


def _locate(dataset: DatasetParams, ingest: IngestParams, raw_dir: Path,
            release: Release) -> tuple[Path, Path | None]:
    """Find both files (plain or .gz); download what is missing only if `ingest.download`.

    The reviews file is required. The metadata file is fetched when downloads are on; with
    `ingest.download: false` its absence means items without text (None).
    """
    wanted = _expected(dataset, release)
    found = [find_file(raw_dir, [name]) for name, _ in wanted]
    missing = [(name, url) for (name, url), path in zip(wanted, found) if path is None]
    if not missing:
        return found[0], found[1]
    names = [f"{name} (optional: item text)" if name == wanted[1][0] else name for name, _ in missing]
    urls = "".join(f"\n  public source: {url}" for _, url in missing)
    if not ingest.download:
        if found[0] is not None:
            return found[0], None
        raise MissingFilesError(raw_dir, names, "plain or .gz files are both accepted; "
                                f"ingest.download is false: fetch them yourself or set it to true.{urls}")
    raw_dir.mkdir(parents=True, exist_ok=True)
    for name, url in missing:
        try:
            fetch(url, raw_dir / name)
        except (OSError, http.client.HTTPException) as exc:  # URLError is an OSError
            alone = (" To ingest the reviews without item text, set ingest.download: false."
                     if found[0] is not None else "")
            raise MissingFilesError(raw_dir, names, f"downloading {url} failed ({exc}); fetch it "
                                    f"on a connected machine into {raw_dir}.{alone}") from exc
    return find_file(raw_dir, [wanted[0][0]]), find_file(raw_dir, [wanted[1][0]])


# ---------------------------------------------------------------- reading

def _iter_raw_lines(path: Path) -> Iterator[tuple[int, bytes]]:
    """(1-based line number, bytes) split on b"\\n" only, as pyarrow does; blank lines skipped."""
    with open_bytes(path) as handle:
        for lineno, line in enumerate(handle, start=1):
            if line.strip():
                yield lineno, line


def _fast(path: Path, out: Path, fields: dict[str, str], schema: pa.Schema,
          required: tuple[str, ...]) -> int:
    """Stream JSON lines into Parquet with pyarrow; raises ValueError on anything unusual."""
    raw_schema = pa.schema([pa.field(raw, schema.field(col).type) for col, raw in fields.items()])
    reader = pj.open_json(
        pa.input_stream(str(path), compression="detect"),
        read_options=pj.ReadOptions(block_size=BLOCK_SIZE),
        parse_options=pj.ParseOptions(explicit_schema=raw_schema, unexpected_field_behavior="ignore"))
    rows = 0
    with pq.ParquetWriter(out, schema) as writer:
        for batch in reader:
            batch.validate(full=True)  # pyarrow's JSON reader passes invalid UTF-8 through
            columns = {col: batch.column(raw) for col, raw in fields.items()}
            for col in required:
                values = columns[col]
                if values.null_count or (pa.types.is_string(values.type)
                                         and pc.any(pc.equal(values, "")).as_py()):
                    raise _Bad(f"missing `{fields[col]}` in some record")
            if "timestamp" in columns:
                low, high = TIMESTAMP_RANGE
                stamps = columns["timestamp"]
                if pc.any(pc.or_(pc.less(stamps, low), pc.greater(stamps, int(high)))).as_py():
                    raise _Bad("a negative or out-of-range timestamp in some record")
            if "rating" in columns and not pc.all(pc.is_finite(columns["rating"])).as_py():
                raise _Bad("a non-finite rating in some record")
            arrays = [columns.get(f.name, pa.nulls(batch.num_rows, f.type)) for f in schema]
            writer.write_batch(pa.RecordBatch.from_arrays(arrays, schema=schema))
            rows += batch.num_rows
    return rows


def _scan(path: Path, out: Path, schema: pa.Schema, parse: Callable[[bytes], Any],
          convert: Callable[[dict], tuple], policy: LinePolicy) -> int:
    """Line-by-line reader: every bad line goes through `policy` with its number and text."""
    buffer: list[tuple] = []
    rows = 0

    def flush(writer: pq.ParquetWriter) -> None:
        if buffer:
            columns = [pa.array(values, type=f.type) for values, f in zip(zip(*buffer), schema)]
            writer.write_table(pa.Table.from_arrays(columns, schema=schema))
            buffer.clear()

    with pq.ParquetWriter(out, schema) as writer:
        for lineno, line in _iter_raw_lines(path):
            try:
                record = parse(line)
                if not isinstance(record, dict):
                    raise _Bad(f"expected an object, got {type(record).__name__}")
                try:
                    buffer.append(convert(record))
                except RecursionError:
                    raise _Bad("a field is nested too deeply") from None
            except _Bad as exc:
                policy.bad(path, lineno, _show(line), str(exc))
                continue
            rows += 1
            if len(buffer) >= SCAN_BATCH:
                flush(writer)
        flush(writer)
    return rows


def _show(line: bytes) -> str:
    return line.decode("utf-8", "replace").rstrip("\r\n")


def _decode(line: bytes) -> str:
    try:
        return line.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _Bad(f"not valid UTF-8 (byte {exc.start})") from None


def _parse_json(line: bytes) -> Any:
    text = _decode(line)  # json.loads(bytes) would guess UTF-16/32 from the first bytes
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, and ints over 4300 digits
        raise _Bad(f"invalid JSON ({exc})") from None


def _parse_python(line: bytes) -> Any:
    """2014 metadata: a Python literal; `ast.literal_eval` evaluates no code."""
    text = _decode(line)
    try:
        return ast.literal_eval(text.strip())
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError) as exc:
        raise _Bad(f"invalid Python literal ({exc})") from None


# ---------------------------------------------------------------- record conversion (scan path)

def _utf8(text: str, name: str) -> str:
    """`text` if it can be written as UTF-8 (a JSON '\\ud800' escape decodes to an unpaired surrogate)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise _Bad(f"field `{name}` holds an unpaired surrogate, which is not text") from None
    return text


def _key(record: dict, name: str) -> str:
    value = record.get(name)
    if isinstance(value, bool) or not isinstance(value, (str, int)) or value == "":
        raise _Bad(f"missing field `{name}`" if value is None or value == "" else
                   f"field `{name}` is not a string: {_brief(value)}")
    return _utf8(str(value), name)


def _brief(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _number(record: dict, name: str) -> float:
    value = record.get(name)
    if value is None:
        raise _Bad(f"missing field `{name}`")
    try:
        if isinstance(value, bool):
            raise ValueError
        number = float(value)
        if not math.isfinite(number):
            raise ValueError
    except (TypeError, ValueError, OverflowError):
        raise _Bad(f"non-numeric `{name}`: {_brief(value)}") from None
    return number


def _timestamp(record: dict, name: str) -> int:
    number = _number(record, name)
    low, high = TIMESTAMP_RANGE
    if number < low:
        raise _Bad(f"`{name}` is negative: {_brief(record.get(name))}")
    if number > high:
        raise _Bad(f"`{name}` is out of range [{low:g}, {high:g}]: {_brief(record.get(name))}")
    return int(number)


def _text(value: Any, name: str) -> str | None:
    return None if value is None else _utf8(str(value), name)


def _strings(value: Any, name: str) -> list[str] | None:
    """Flatten str / list / list of lists (2014 categories) into a list of strings."""
    if value is None:
        return None
    if not isinstance(value, (list, tuple)):
        return [_utf8(str(value), name)]
    return [text for part in value for text in (_strings(part, name) or [])]


def _review_converter(fields: dict[str, str]) -> Callable[[dict], tuple]:
    user, item, time, rating = (fields[c] for c in REQUIRED_REVIEW)
    title, text = fields["review_title"], fields["review_text"]

    def convert(record: dict) -> tuple:
        return (_key(record, user), _key(record, item), _timestamp(record, time),
                _number(record, rating), _text(record.get(title), title), _text(record.get(text), text))
    return convert


def _meta_converter(fields: dict[str, str]) -> Callable[[dict], tuple]:
    def text(record: dict, col: str) -> str | None:
        raw = fields.get(col)
        return None if raw is None else _text(record.get(raw), raw)

    def strings(record: dict, col: str) -> list[str] | None:
        raw = fields.get(col)
        return None if raw is None else _strings(record.get(raw), raw)

    def convert(record: dict) -> tuple:
        return (_key(record, fields["item_id"]), text(record, "title"), strings(record, "description"),
                strings(record, "features"), strings(record, "categories"), text(record, "brand"))
    return convert


def _read(path: Path, out: Path, fields: dict[str, str], schema: pa.Schema,
          required: tuple[str, ...], parse: Callable[[bytes], Any] | None,
          convert: Callable[[dict], tuple], policy: LinePolicy) -> int:
    """Fast pyarrow path for JSON; the line scan for Python literals or when pyarrow refuses.

    A file that cannot be read to its end (a truncated .gz) is a DataError naming it."""
    with reading(path):
        if parse is None:
            try:
                return _fast(path, out, fields, schema, required)
            except OSError as exc:  # pyarrow's "Truncated compressed stream"
                raise unreadable(path, exc) from None
            except (ValueError, pa.ArrowException) as exc:  # ArrowInvalid, _Bad are ValueErrors
                log.info("%s: strict reader stopped (%s); rescanning line by line", path, exc)
            parse = _parse_json
        return _scan(path, out, schema, parse, convert, policy)


# ---------------------------------------------------------------- the source

def _blank_to_null(name: str) -> pl.Expr:
    return pl.when(pl.col(name).str.strip_chars() != "").then(pl.col(name)).alias(name)


def _items(meta_parquet: Path) -> pl.LazyFrame:
    """Canonical items: paragraphs (description, then 2023 feature bullets) joined by newlines."""
    paragraphs = (pl.concat_list(pl.col("description").fill_null([]), pl.col("features").fill_null([]))
                  .list.eval(pl.element().filter(pl.element().str.strip_chars() != ""))
                  .list.join("\n"))
    return pl.scan_parquet(meta_parquet).select(
        "item_id", _blank_to_null("title"), paragraphs.alias("description"),
        pl.col("categories").list.unique(maintain_order=True), _blank_to_null("brand"),
    ).with_columns(_blank_to_null("description"))


def load(dataset: DatasetParams, ingest: IngestParams, raw_dir: Path, workdir: Path) -> RawData:
    """Read one category (`dataset.name`) of release `dataset.amazon.version`."""
    release = RELEASES[dataset.amazon.version]
    reviews_path, meta_path = _locate(dataset, ingest, raw_dir, release)
    dropped: Counter[str] = Counter()
    policy = LinePolicy(ingest.on_bad_line, dropped)
    workdir.mkdir(parents=True, exist_ok=True)

    reviews_out, meta_out = workdir / "amazon_reviews.parquet", workdir / "amazon_meta.parquet"
    n_reviews = _read(reviews_path, reviews_out, release.review_fields, REVIEW_SCHEMA,
                      REQUIRED_REVIEW, None, _review_converter(release.review_fields), policy)
    files, file_rows = [reviews_path], {reviews_path.name: n_reviews}
    if meta_path is None:
        log.warning("amazon %s %d: no metadata file %s in %s: items will have no title, description, "
                    "categories or brand (counted as items_without_title in the manifest); the causal "
                    "teacher, which lists items by title, will refuse this dataset", dataset.name,
                    dataset.amazon.version, _expected(dataset, release)[1][0], raw_dir)
        pq.write_table(META_SCHEMA.empty_table(), meta_out)
    else:
        n_meta = _read(meta_path, meta_out, release.meta_fields, META_SCHEMA, ("item_id",),
                       _parse_python if release.meta_is_python else None,
                       _meta_converter(release.meta_fields), policy)
        files.append(meta_path)
        file_rows[meta_path.name] = n_meta
    log.info("amazon %s %d: %s rows read", dataset.name, dataset.amazon.version, file_rows)

    interactions = pl.scan_parquet(reviews_out).with_columns(
        (pl.col("timestamp") // release.units_per_second).cast(pl.Int64),
        pl.col("rating").cast(pl.Float32),
        _blank_to_null("review_title"), _blank_to_null("review_text"),
    )
    return RawData(interactions=interactions, items=_items(meta_out), files=files,
                   file_rows=file_rows, dropped=dropped)
