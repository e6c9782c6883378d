"""What every raw-data source returns, and the helpers every source shares."""

from __future__ import annotations

import contextlib
import gzip
import logging
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import polars as pl

from distillrec.errors import BadLineError, DataError

log = logging.getLogger(__name__)

BOM = b"\xef\xbb\xbf"  # UTF-8 byte-order mark: stripped from the start of every text source
# what reading a truncated or corrupt file raises: gzip's EOFError/BadGzipFile, zlib.error, polars'
# and pyarrow's OSError ("unexpected end of file", "Truncated compressed stream")
READ_ERRORS = (OSError, EOFError, zlib.error)


@dataclass
class RawData:
    """A source's output before `ingest` conforms and writes it.

    `interactions` and `items` may carry a subset of the canonical columns (missing ones become
    nulls) and `items` may list items that never occur in interactions (ingest drops them).
    Row order of `interactions` is the source order, used by `split` to break timestamp ties.
    """

    interactions: pl.LazyFrame
    items: pl.LazyFrame
    files: list[Path]
    file_rows: dict[str, int] = field(default_factory=dict)
    dropped: Counter[str] = field(default_factory=Counter)


class LinePolicy:
    """Applies `ingest.on_bad_line`: raise with file:line, or skip and count under a reason."""

    def __init__(self, on_bad_line: str, dropped: Counter[str]):
        self.skip = on_bad_line == "skip"
        self.dropped = dropped

    def bad(self, path: Path, lineno: int, text: str, reason: str) -> None:
        if not self.skip:
            raise BadLineError(path, lineno, text, reason)
        key = f"bad_line:{path.name}"
        if self.dropped[key] < 5:
            log.warning("skipping %s:%d: %s", path, lineno, reason)
        self.dropped[key] += 1


def find_file(directory: Path, names: list[str]) -> Path | None:
    """First existing file among `names`, each also tried with and without `.gz`."""
    for name in names:
        for candidate in (name, name + ".gz", name.removesuffix(".gz")):
            path = directory / candidate
            if path.is_file():
                return path
    return None


def open_bytes(path: Path) -> BinaryIO:
    """The file's bytes (gunzipped for `.gz`), positioned after a leading UTF-8 BOM if there is one."""
    handle = gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")  # noqa: SIM115 (returned)
    try:
        if handle.read(len(BOM)) != BOM:
            handle.seek(0)
    except BaseException:
        handle.close()
        raise
    return handle  # type: ignore[return-value]


def unreadable(path: Path, exc: BaseException) -> DataError:
    """The DataError for a file that cannot be read to its end, naming it and the likely cause."""
    if isinstance(exc, FileNotFoundError):
        return DataError(f"{path}: no such file")
    if path.suffix == ".gz":
        return DataError(f"{path}: the gzip file is truncated or corrupt ({exc}); download or compress it again")
    return DataError(f"{path}: cannot be read, the file may be truncated or corrupt ({exc})")


@contextlib.contextmanager
def reading(path: Path) -> Iterator[None]:
    """Turn the errors of reading a truncated/corrupt file (no file name, a traceback) into a DataError."""
    try:
        yield
    except READ_ERRORS as exc:
        raise unreadable(path, exc) from None


def read_optional(directory: Path, name: str, read: Callable[[Path], pl.DataFrame], default: pl.DataFrame,
                  files: list[Path], file_rows: dict[str, int]) -> pl.DataFrame:
    """An optional side file (item text): `read` it if present, recording it in `files`/`file_rows`."""
    path = find_file(directory, [name])
    if path is None:
        return default
    frame = read(path)
    files.append(path)
    file_rows[path.name] = frame.height
    return frame
