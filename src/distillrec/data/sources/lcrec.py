"""LC-Rec-style processed Amazon JSON: `<name>.inter.json` + `<name>.item.json`.

The format of LC-Rec, LETTER, MiniOneRec and other LLM-recommendation code:
- `<name>.inter.json`: one JSON object `{user_index: [item_index, ...]}`, each list in time order
  (no timestamps, so an item's position in its list stands in for time, as for sequence files);
- `<name>.item.json`: `{item_index: {"title", "description", "brand", "categories"}}`, categories
  one comma-separated string; empty strings mean "no text".
Users and items keep their published indices as raw ids (strings), so the split's id maps sort them
the same way on every run.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

import polars as pl

from distillrec.data.sources.base import LinePolicy, RawData, find_file, open_bytes, read_optional, reading
from distillrec.errors import DataError, MissingFilesError
from distillrec.params import DatasetParams, IngestParams

ITEM_FIELDS = ("title", "description", "brand", "categories")


def _read_json(path: Path) -> tuple[dict[str, Any], str]:
    """The file's top-level object and its text, or a DataError naming the line of the problem."""
    try:
        with reading(path), open_bytes(path) as handle:  # a leading BOM is dropped
            data = handle.read()
        text = data.decode("utf-8")
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}:{exc.lineno}: invalid JSON at column {exc.colno}: {exc.msg}") from None
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise DataError(f"{path}:{line}: not valid UTF-8 (byte {exc.start}); expected LC-Rec JSON") from None
    except RecursionError:
        raise DataError(f"{path}: JSON nested too deeply to read") from None
    except ValueError as exc:  # e.g. an integer of more than 4300 digits
        raise DataError(f"{path}: invalid JSON ({exc})") from None
    if not isinstance(value, dict):
        raise DataError(f"{path}: expected one JSON object keyed by index, found {type(value).__name__}")
    return value, text


_SPACE = re.compile(r"[ \t\n\r]*")


class _KeyLines:
    """Line of each top-level key of a valid JSON object, computed only when an error needs one."""

    def __init__(self, text: str):
        self.text = text
        self.lines: dict[str, int] | None = None

    def __getitem__(self, key: str) -> int:
        if self.lines is None:
            self.lines = self._scan()
        return self.lines.get(key, 0)

    def _scan(self) -> dict[str, int]:
        text, decoder, lines = self.text, json.JSONDecoder(), {}
        pos = _SPACE.match(text, 0).end() + 1  # past '{'
        line, counted = 1, 0
        while True:
            pos = _SPACE.match(text, pos).end()
            if text[pos] == ",":
                pos = _SPACE.match(text, pos + 1).end()
            if text[pos] == "}":
                return lines
            line += text.count("\n", counted, pos)
            counted = pos
            key, pos = json.decoder.scanstring(text, pos + 1)
            lines[key] = line  # a repeated key: json keeps the last value, so the last line
            pos = _SPACE.match(text, pos).end() + 1  # past ':'
            _, pos = decoder.raw_decode(text, _SPACE.match(text, pos).end())


def _entry(key: str, value: Any) -> str:
    """The offending entry as JSON, for the error message."""
    return json.dumps({key: value}, ensure_ascii=False)


def _is_text(value: str) -> bool:
    """False for a string with an unpaired surrogate (a JSON '\\ud800' escape), which is not text."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _is_index(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _interactions(path: Path, policy: LinePolicy) -> tuple[pl.LazyFrame, int]:
    users: list[str] = []
    items: list[str] = []
    positions: list[int] = []
    kept = 0
    data, text = _read_json(path)
    key_lines = _KeyLines(text)
    for user, history in data.items():
        if not _is_text(user):
            policy.bad(path, key_lines[user], ascii(user), "the user key holds an unpaired surrogate, which is not text")
            continue
        if not isinstance(history, list) or not history or not all(_is_index(i) for i in history):
            bad = history if not isinstance(history, list) else next(
                (i for i in history if not _is_index(i)), "an empty list")
            policy.bad(path, key_lines[user], _entry(user, history),
                       f"user {user!r}: expected a non-empty list of item indices (integers >= 0), found {bad!r}")
            continue
        kept += 1
        users.extend([user] * len(history))
        items.extend(str(i) for i in history)
        positions.extend(range(len(history)))
    frame = pl.LazyFrame({"user_id": users, "item_id": items, "timestamp": positions},
                         schema={"user_id": pl.String, "item_id": pl.String, "timestamp": pl.Int64})
    return frame, kept


def _text(item: str, record: dict, field: str) -> str | None:
    value = record.get(field)
    if value is None:
        return None
    if not isinstance(value, str):
        raise TypeError(f"item {item!r}: field {field!r} must be a string, found {type(value).__name__}")
    if not _is_text(value):
        raise TypeError(f"item {item!r}: field {field!r} holds an unpaired surrogate, which is not text")
    return value.strip() or None


def _items(path: Path, policy: LinePolicy) -> pl.DataFrame:
    rows = []
    data, text = _read_json(path)
    key_lines = _KeyLines(text)
    for item, record in data.items():
        try:
            if not _is_text(item):
                raise TypeError(f"item key {item!a} holds an unpaired surrogate, which is not text")
            if not isinstance(record, dict):
                raise TypeError(f"item {item!r}: expected an object of text fields, found {type(record).__name__}")
            fields = {field: _text(item, record, field) for field in ITEM_FIELDS}
        except TypeError as exc:
            policy.bad(path, key_lines[item], _entry(item, record), str(exc))
            continue
        categories = fields.pop("categories")
        rows.append({"item_id": item, **fields,
                     "categories": [c.strip() for c in categories.split(",") if c.strip()] if categories else None})
    schema = {"item_id": pl.String(), "title": pl.String(), "description": pl.String(), "brand": pl.String(),
              "categories": pl.List(pl.String())}
    return pl.DataFrame(rows, schema=schema)


def load(dataset: DatasetParams, ingest: IngestParams, raw_dir: Path, workdir: Path) -> RawData:
    inter = find_file(raw_dir, [f"{dataset.name}.inter.json"])
    if inter is None:
        raise MissingFilesError(
            raw_dir, [f"{dataset.name}.inter.json", f"{dataset.name}.item.json (optional: item text)"],
            "LC-Rec-style processed data comes with LC-Rec/LETTER/MiniOneRec-style code; it is never downloaded here.")
    dropped: Counter[str] = Counter()
    policy = LinePolicy(ingest.on_bad_line, dropped)
    interactions, users = _interactions(inter, policy)
    files, rows = [inter], {inter.name: users}
    items = read_optional(raw_dir, f"{dataset.name}.item.json", lambda path: _items(path, policy),
                          pl.DataFrame(schema={"item_id": pl.String()}), files, rows)
    return RawData(interactions, items.lazy(), files, rows, dropped)
