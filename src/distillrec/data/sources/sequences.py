"""Plain sequence files, one user per line: `user item1 item2 ...` in time order.

This is the S3-Rec/ICLRec layout: it carries no timestamps, so an item's position in its line
stands in for time (0, 1, 2, ...), which is all `split` needs to order a history.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import polars as pl

from distillrec.data.sources._tables import iter_checked_lines
from distillrec.data.sources.base import LinePolicy, RawData, find_file
from distillrec.errors import MissingFilesError
from distillrec.params import DatasetParams, IngestParams


def load(dataset: DatasetParams, ingest: IngestParams, raw_dir: Path, workdir: Path) -> RawData:
    names = [f"{dataset.name}.txt", "sequences.txt"]
    path = find_file(raw_dir, names)
    if path is None:
        raise MissingFilesError(
            raw_dir,
            [f"{names[0]} (or {names[1]})"],
            "one user per line, 'user item1 item2 ...' in time order (S3-Rec/ICLRec style);"
            " such files come with those papers' code and are never downloaded here.",
        )
    dropped: Counter[str] = Counter()
    policy = LinePolicy(ingest.on_bad_line, dropped)
    users: list[str] = []
    items: list[str] = []
    positions: list[int] = []
    lines = 0
    for lineno, text in iter_checked_lines(path, policy):
        fields = text.split()
        if not fields:  # only Unicode whitespace (e.g. '\x1c', '\u2028'): a blank line
            continue
        user, *history = fields
        if not history:
            policy.bad(path, lineno, text, f"user {user!r} has no items")
            continue
        lines += 1
        users.extend([user] * len(history))
        items.extend(history)
        positions.extend(range(len(history)))
    interactions = pl.LazyFrame(
        {"user_id": users, "item_id": items, "timestamp": positions},
        schema={"user_id": pl.String, "item_id": pl.String, "timestamp": pl.Int64},
    )
    return RawData(
        interactions=interactions,
        items=pl.LazyFrame(schema={"item_id": pl.String}),
        files=[path],
        file_rows={path.name: lines},
        dropped=dropped,
    )
