"""What every raw-data source returns, and the helpers every source shares."""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from distillrec.errors import BadLineError

log = logging.getLogger(__name__)


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
