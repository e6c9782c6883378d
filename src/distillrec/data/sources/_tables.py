"""Typed reading of delimited raw files: fast in the common case, exact about bad lines.

Polars parses a clean file of tens of millions of rows in seconds. When it refuses the file or
yields a null (wrong field count, empty field, blank line, bad number), polars splits the file
line by line to find the bad lines, which are reported as file:line:text or skipped and
counted, as `ingest.on_bad_line` says. Only a file with invalid UTF-8, which polars cannot
split, is rescanned in Python. Every path writes parquet into the scratch workdir, so memory
stays bounded and the returned frame is lazy.

Every path strips a leading UTF-8 byte-order mark, and a file that cannot be read to its end (a
truncated `.gz`) is a DataError naming it. Float fields must be finite, and fields given a range
(timestamps: not negative) must lie in it; other values are bad lines like a wrong field count.
"""

from __future__ import annotations

import logging
import math
import re
import tempfile
from dataclasses import dataclass, field
from collections.abc import Iterator
from pathlib import Path

import polars as pl

from distillrec.data.sources.base import LinePolicy, open_bytes, reading

log = logging.getLogger(__name__)

_CHUNK_ROWS = 1_000_000
_INTEGER = re.compile(r"[+-]?[0-9]+")
_INT64 = (-(2**63), 2**63 - 1)
_FLOAT32_MAX = 3.4028234663852886e38
# timestamps (seconds, or milliseconds for some sources) are never negative; the float bound keeps
# RecBole's float timestamps castable to int64
TIMESTAMP_RANGE = (0, 9e18)


def first_line(path: Path) -> str:
    """The header line, decoded leniently so a bad byte shows up in the error, not as a crash."""
    with reading(path), open_bytes(path) as handle:
        return handle.readline().decode("utf-8", errors="replace").rstrip("\r\n")


def iter_checked_lines(path: Path, policy: LinePolicy, skip: int = 0) -> Iterator[tuple[int, str]]:
    """(1-based line number, text) of non-blank lines after the first `skip` ones.

    Each line is decoded on its own, so one bad byte costs that line, not the file.
    """
    with reading(path), open_bytes(path) as handle:
        for lineno, raw in enumerate(handle, start=1):
            raw = raw.rstrip(b"\r\n")
            if lineno <= skip or not raw.strip():
                continue
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                text = raw.decode("utf-8", errors="replace")
                policy.bad(path, lineno, text, f"not valid UTF-8 (byte {exc.start})")
                continue
            yield lineno, text


def read_text_lines(path: Path) -> list[tuple[int, str]]:
    """Numbered non-blank lines of a small file, UTF-8 if it decodes, else latin-1.

    Older MovieLens metadata is latin-1; newer files are UTF-8. Splitting on '\\n' only (not
    str.splitlines) keeps latin-1 bytes such as 0x85 from being taken for line breaks.
    """
    with reading(path), open_bytes(path) as handle:
        data = handle.read()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        log.info("%s is not UTF-8; reading it as latin-1", path)
        text = data.decode("latin-1")
    lines = (line.rstrip("\r") for line in text.split("\n"))
    return [(lineno, line) for lineno, line in enumerate(lines, start=1) if line.strip()]


def read_delimited(
    path: Path,
    sep: str,
    schema: dict[str, pl.DataType],
    policy: LinePolicy,
    workdir: Path,
    header: bool = False,
    optional: frozenset[str] = frozenset(),
    ranges: dict[str, tuple[float, float]] | None = None,
) -> tuple[pl.LazyFrame, int]:
    """Rows of `path` typed by `schema` (fields in file order) and how many were kept.

    Every field must be non-empty and parse as its dtype, except string fields in `optional`,
    which may be empty (null). Float fields must be finite, and a field in `ranges` must lie in
    its closed interval. `sep` is one character or a doubled one such as '::'.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    # a fresh folder and file per attempt: polars may cache a parquet file's metadata by path
    scratch = Path(tempfile.mkdtemp(prefix=f"{path.name}-", dir=workdir))
    layout = _Layout(path, sep, schema, header, optional, dict(ranges or {}))
    out = scratch / "fast.parquet"
    with reading(path):
        if not _fast(layout, out):
            log.info("%s: checking line by line to locate malformed lines", path)
            out = scratch / "checked.parquet"
            if not _by_line(layout, policy, out):
                log.info("%s: lines are not all UTF-8; rescanning in Python", path)
                out = scratch / "python.parquet"
                _slow(layout, policy, out)
    frame = pl.scan_parquet(out).select(list(schema))
    return frame, frame.select(pl.len()).collect().item()


@dataclass(frozen=True)
class _Layout:
    """What every reading path needs to know about one delimited file."""

    path: Path
    sep: str
    schema: dict[str, pl.DataType]
    header: bool
    optional: frozenset[str]
    ranges: dict[str, tuple[float, float]] = field(default_factory=dict)

    def valid(self, name: str, value: pl.Expr) -> pl.Expr | None:
        """True where a typed, non-null value is acceptable (finite, in range); None = no check."""
        checks = []
        if self.schema[name].is_float():
            checks.append(value.is_finite())
        if name in self.ranges:
            low, high = self.ranges[name]
            checks.append((value >= low) & (value <= high))  # polars orders NaN above every number
        return pl.all_horizontal(checks) if checks else None

    def check(self, name: str, value: str, number: float) -> str | None:
        """Why a parsed number is not acceptable, or None."""
        dtype = self.schema[name]
        limit = _FLOAT32_MAX if dtype == pl.Float32 else math.inf  # 1e39 is inf as a Float32
        if dtype.is_float() and not (math.isfinite(number) and abs(number) <= limit):
            return f"{name} is not a finite number: {value!r}"
        if name in self.ranges:
            low, high = self.ranges[name]
            if low == 0 and number < 0:
                return f"{name} is negative: {value!r}"
            if not low <= number <= high:
                return f"{name} is out of range [{low:g}, {high:g}]: {value!r}"
        return None


def _fast(layout: _Layout, out: Path) -> bool:
    """Parse with polars into `out`; False when the exact line-by-line scan is needed."""
    path, sep, schema, header = layout.path, layout.sep, layout.schema, layout.header
    names = list(schema)
    csv_schema: dict[str, pl.DataType] = {}
    gaps = []  # polars separators are one byte: read 'a::b' as 'a', '', 'b' and check the ''
    for k, name in enumerate(names):
        if k and len(sep) == 2:
            gaps.append(f"_gap{k}")
            csv_schema[gaps[-1]] = pl.String()
        csv_schema[name] = schema[name]
    valid = [layout.valid(name, pl.col(name)) for name in names]
    clean = pl.all_horizontal(
        [pl.col(name).is_not_null() for name in names] + [pl.col(gap).is_null() for gap in gaps]
        + [check.fill_null(False) for check in valid if check is not None]
    )
    try:
        pl.scan_csv(
            path,
            has_header=False,
            skip_rows=int(header),
            separator=sep[0],
            schema=csv_schema,
            quote_char=None,
        ).select(*names, clean.alias("_clean")).sink_parquet(out, compression="lz4")
        return bool(pl.scan_parquet(out).select(pl.col("_clean").all()).collect().item())
    except (pl.exceptions.PolarsError, pl.exceptions.PanicException) as exc:
        log.debug("%s: polars reader refused the file: %s", path, exc)
        return False


def _by_line(layout: _Layout, policy: LinePolicy, out: Path) -> bool:
    """Flag bad lines with polars, report them in file order, write the rest to `out`.

    False when polars cannot decode the lines (invalid UTF-8): only Python can isolate those.
    """
    path, sep, schema, optional = layout.path, layout.sep, layout.schema, layout.optional
    parts = pl.col("line").str.split(sep)
    fields = {name: parts.list.get(k, null_on_oob=True) for k, name in enumerate(schema)}
    problems = [parts.list.len() != len(schema)]
    for name, dtype in schema.items():
        field = fields[name]
        if name not in optional:
            problems.append(field == "")
        if dtype.is_numeric():
            typed = field.cast(dtype, strict=False)
            problems.append(typed.is_null() & (field != ""))
            valid = layout.valid(name, typed)
            if valid is not None:
                problems.append(~valid.fill_null(True))
    first = pl.col("_lineno") == 1  # polars' line reader keeps a leading BOM; its CSV reader drops it
    lines = (
        pl.scan_lines(path, row_index_name="_lineno", row_index_offset=1)
        .with_columns(pl.when(first).then(pl.col("line").str.strip_prefix("\ufeff"))
                      .otherwise(pl.col("line")).alias("line"))
        .filter((pl.col("_lineno") > int(layout.header)) & (pl.col("line").str.strip_chars() != ""))
        .with_columns(pl.any_horizontal(problems).fill_null(True).alias("_bad"))
    )
    flagged = lines.filter("_bad").select("_lineno", "line")
    try:
        bad = (flagged if policy.skip else flagged.head(1)).collect(engine="streaming")
    except (pl.exceptions.PolarsError, pl.exceptions.PanicException) as exc:
        log.debug("%s: polars cannot split the lines: %s", path, exc)
        return False
    for lineno, text in bad.iter_rows():
        policy.bad(path, lineno, text, _reason(layout, text.split(sep)))
    typed = [
        (pl.when(field != "").then(field) if name in optional else field)
        .cast(schema[name])
        .alias(name)
        for name, field in fields.items()
    ]
    lines.filter(~pl.col("_bad")).select(typed).sink_parquet(out, compression="lz4")
    return True


def _reason(layout: _Layout, fields: list[str]) -> str:
    """Why polars rejected a line, judged by the same casts it used."""
    if len(fields) != len(layout.schema):
        return f"expected {len(layout.schema)} fields separated by {layout.sep!r}, found {len(fields)}"
    for (name, dtype), value in zip(layout.schema.items(), fields):
        if value == "" and name not in layout.optional:
            return f"{name} is empty"
        if value and dtype.is_numeric():
            number = pl.Series([value]).cast(dtype, strict=False)[0]
            if number is None:
                return f"{name} is not a number: {value!r}"
            problem = layout.check(name, value, number)
            if problem:
                return problem
    return "cannot be parsed"


def _slow(layout: _Layout, policy: LinePolicy, out: Path) -> None:
    path, schema = layout.path, layout.schema
    names = list(schema)
    chunks: list[pl.DataFrame] = []
    rows: list[list[object]] = []
    for lineno, text in iter_checked_lines(path, policy, skip=int(layout.header)):
        fields = text.split(layout.sep)
        if len(fields) != len(names):
            policy.bad(path, lineno, text, _reason(layout, fields))
            continue
        try:
            rows.append([_parse(layout, n, v) for n, v in zip(names, fields)])
        except ValueError as exc:
            policy.bad(path, lineno, text, str(exc))
            continue
        if len(rows) >= _CHUNK_ROWS:
            chunks.append(pl.DataFrame(rows, schema=schema, orient="row"))
            rows = []
    chunks.append(pl.DataFrame(rows, schema=schema, orient="row"))
    pl.concat(chunks).write_parquet(out, compression="lz4")


def _parse(layout: _Layout, name: str, value: str) -> object:
    """One field as polars would cast it (ASCII digits only, no spaces), checked like the other paths."""
    dtype = layout.schema[name]
    if value == "":
        if name in layout.optional:
            return None
        raise ValueError(f"{name} is empty")
    if not dtype.is_numeric():
        return value
    number: float | None = None
    if dtype.is_integer() and _INTEGER.fullmatch(value):
        number = int(value)
        number = number if _INT64[0] <= number <= _INT64[1] else None
    elif dtype.is_float() and value.isascii() and value == value.strip() and "_" not in value:
        try:
            number = float(value)
        except ValueError:
            pass
    if number is None:
        raise ValueError(f"{name} is not a number: {value!r}")
    problem = layout.check(name, value, number)
    if problem:
        raise ValueError(problem)
    return number
