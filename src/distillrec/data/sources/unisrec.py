"""UniSRec-style processed data (RecBole atomic layout), as used by UniSRec, VQ-Rec and Recformer
reproductions.

Files of dataset `<name>`:
- `<name>.train.inter`, `<name>.valid.inter`, `<name>.test.inter`: header
  `user_id:token<TAB>item_id_list:token_seq<TAB>item_id:token`, rows
  `<user index><TAB><history item indices, space-separated, oldest first><TAB><target index>`.
  Train has one row per training target, newest target first, each history capped at its last
  50 items; valid and test have one row per user.
- `<name>.item2index`, `<name>.user2index` (optional, no header): `<raw id><TAB><index>` per line.
- `<name>.text` (optional): header `item_id:token<TAB>text:token_seq`, rows
  `<raw item id><TAB><title. categories. brand.>`.

The files carry no timestamps: each user's full sequence is rebuilt (the first history item of
the user's last train row, the train targets in reverse file order, the valid target, the test
target) and an item's position in it stands in for time, as for sequence files. Every row is
checked against the rebuilt sequence (train and valid histories are the last <= 50 items before
their target, the test history ends with the valid target), so leave-one-out in `split` gives back
the published valid/test targets. Users and items get their raw ids through the index files, or
keep their indices as ids when those files are absent.

Item text: the `.text` line is one string, stored whole in the `title` column (description,
categories and brand stay null); the text teacher's default `text.fields` include `title`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from distillrec.data.sources._tables import first_line, iter_checked_lines
from distillrec.data.sources.base import LinePolicy, RawData, find_file, read_optional
from distillrec.errors import DataError, MissingFilesError
from distillrec.params import DatasetParams, IngestParams

MAX_HISTORY = 50  # UniSRec keeps the last 50 items of every history
INTER_FIELDS = ("user_id", "item_id_list", "item_id")
TEXT_FIELDS = ("item_id", "text")
BOM = "\ufeff"


@dataclass(frozen=True)
class _Row:
    lineno: int
    text: str
    user: int
    history: tuple[int, ...]
    target: int


def _index(value: str, what: str) -> int:
    value = value.strip()
    if not (value.isascii() and value.isdigit()):
        raise ValueError(f"{what} is not an integer index: {value!r}")
    return int(value)


def _history(value: str) -> tuple[int, ...]:
    if value.isascii() and value.replace(" ", "").isdigit():  # the common case, parsed in C
        return tuple(map(int, value.split()))
    return tuple(_index(i, "an item in item_id_list") for i in value.split())


def _check_header(path: Path, fields: tuple[str, ...]) -> None:
    header = first_line(path).removeprefix(BOM)
    names = tuple(part.split(":", 1)[0].strip() for part in header.split("\t"))
    if names != fields:
        expected = "<TAB>".join(fields)
        raise DataError(f"{path}:1: expected a header with the fields {expected} (RecBole 'name:type'), "
                        f"found {header[:200]!r}")


def _shown(items: list[int] | tuple[int, ...]) -> str:
    text = " ".join(map(str, items))
    return text if len(text) <= 120 else "..." + text[-117:]


class _Reader:
    """Parses and checks the rows of the three inter files for one dataset."""

    def __init__(self, policy: LinePolicy, users: dict[int, str] | None, items: dict[int, str] | None):
        self.policy, self.users, self.items = policy, users, items
        self.bad_users: set[int] = set()

    def rows(self, path: Path) -> Iterator[_Row]:
        _check_header(path, INTER_FIELDS)
        for lineno, text in iter_checked_lines(path, self.policy, skip=1):
            fields = text.split("\t")
            if len(fields) != len(INTER_FIELDS):
                self.policy.bad(path, lineno, text, f"expected 3 tab-separated fields "
                                f"(user, history, target), found {len(fields)}")
                continue
            try:
                user = _index(fields[0], "user_id")
                history = _history(fields[1])
                target = _index(fields[2], "item_id")
            except ValueError as exc:
                self.policy.bad(path, lineno, text, str(exc))
                continue
            unknown = self._unknown(user, history, target)
            if unknown:
                self.bad(path, _Row(lineno, text, user, history, target), unknown)
                continue
            yield _Row(lineno, text, user, history, target)

    def _unknown(self, user: int, history: tuple[int, ...], target: int) -> str | None:
        if self.users is not None and user not in self.users:
            return f"user index {user} is not in the user2index file"
        if self.items is not None and not (target in self.items and all(map(self.items.__contains__, history))):
            missing = next(i for i in (*history, target) if i not in self.items)
            return f"item index {missing} is not in the item2index file"
        return None

    def bad(self, path: Path, row: _Row, reason: str) -> None:
        """Report a row that breaks its user's sequence; in skip mode the whole user is dropped."""
        self.bad_users.add(row.user)
        raw = f" ({self.users[row.user]!r})" if self.users is not None and row.user in self.users else ""
        self.policy.bad(path, row.lineno, row.text, f"user {row.user}{raw}: {reason}")

    def train(self, path: Path) -> tuple[dict[int, list[int]], dict[int, _Row]]:
        """Each user's train part, rebuilt from their (contiguous) rows, and their first row."""
        parts: dict[int, list[int]] = {}
        first: dict[int, _Row] = {}
        group: list[_Row] = []
        for row in self.rows(path):
            if group and row.user != group[0].user:
                self._finish(path, group, parts)
                group = []
            if row.user in self.bad_users:
                continue
            if not group and row.user in first:
                self.bad(path, row, f"train rows are not contiguous (the user's rows began at line "
                                    f"{first[row.user].lineno})")
                parts.pop(row.user, None)
                continue
            first.setdefault(row.user, row)
            group.append(row)
        if group:
            self._finish(path, group, parts)
        return parts, first

    def _finish(self, path: Path, group: list[_Row], parts: dict[int, list[int]]) -> None:
        """Rebuild one user's train part (rows newest target first) and check every history."""
        if group[0].user in self.bad_users:
            return
        if not group[-1].history:
            self.bad(path, group[-1], "the oldest train target has an empty item_id_list")
            return
        sequence = [group[-1].history[0], *(row.target for row in reversed(group))]
        for k, row in enumerate(group):
            position = len(group) - k  # of this row's target in the sequence
            expected = tuple(sequence[max(0, position - MAX_HISTORY):position])
            if row.history != expected:
                self.bad(path, row, f"item_id_list does not match the sequence rebuilt from the user's "
                                    f"train rows: expected {_shown(expected)!r} (the last <= {MAX_HISTORY} "
                                    f"items before this target)")
                return
        parts[group[0].user] = sequence

    def next_target(self, path: Path, previous: dict[int, list[int]], done: dict[int, list[int]],
                    lines: dict[int, _Row], what: str, before: str) -> None:
        """Append the valid (or test) target of each user to its sequence so far, moving it to `done`."""
        for row in self.rows(path):
            if row.user in self.bad_users:
                continue
            if row.user in done:
                self.bad(path, row, f"a second row (the first is at line {lines[row.user].lineno})")
                done.pop(row.user)
                continue
            sequence = previous.pop(row.user, None)
            if sequence is None:
                if what == "test":
                    self.bad(path, row, "no row in the valid file")
                    continue
                if not row.history:  # no train rows: the valid history is the train part
                    self.bad(path, row, "no train rows and an empty item_id_list")
                    continue
                sequence = list(row.history)
            expected = tuple(sequence[-MAX_HISTORY:])
            if row.history != expected:
                self.bad(path, row, f"item_id_list must be the last <= {MAX_HISTORY} items of {before}: "
                                    f"expected {_shown(expected)!r}")
                continue
            sequence.append(row.target)
            done[row.user] = sequence
            lines[row.user] = row

    def leftovers(self, path: Path, rest: dict[int, list[int]], rows: dict[int, _Row], missing: str) -> None:
        for user in rest:
            if user not in self.bad_users:
                self.bad(path, rows[user], f"no row in the {missing} file")


def _index_map(path: Path, policy: LinePolicy) -> dict[int, str]:
    """index -> raw id from a `<raw id><TAB><index>` file."""
    raw_ids: dict[int, str] = {}
    seen: dict[str, int] = {}
    for lineno, text in iter_checked_lines(path, policy):
        if lineno == 1:
            text = text.removeprefix(BOM)
        fields = text.split("\t")
        try:
            if len(fields) != 2 or not fields[0].strip():
                raise ValueError(f"expected '<raw id><TAB><index>', found {len(fields)} field(s)")
            raw, index = fields[0].strip(), _index(fields[1], "the index")
            if index in raw_ids:
                raise ValueError(f"index {index} is already given to {raw_ids[index]!r}")
            if raw in seen:
                raise ValueError(f"raw id {raw!r} already has index {seen[raw]}")
        except ValueError as exc:
            policy.bad(path, lineno, text, str(exc))
            continue
        raw_ids[index], seen[raw] = raw, index
    return raw_ids


def _text(path: Path, policy: LinePolicy) -> pl.DataFrame:
    _check_header(path, TEXT_FIELDS)
    ids: list[str] = []
    titles: list[str | None] = []
    for lineno, text in iter_checked_lines(path, policy, skip=1):
        item, tab, title = text.partition("\t")
        if not tab or not item.strip():
            policy.bad(path, lineno, text, "expected '<raw item id><TAB><text>'")
            continue
        ids.append(item.strip())
        titles.append(title.strip() or None)
    return pl.DataFrame({"item_id": ids, "title": titles}, schema={"item_id": pl.String, "title": pl.String})


def load(dataset: DatasetParams, ingest: IngestParams, raw_dir: Path, workdir: Path) -> RawData:
    name = dataset.name
    splits = ("train", "valid", "test")
    paths = {split: find_file(raw_dir, [f"{name}.{split}.inter"]) for split in splits}
    if None in paths.values():
        raise MissingFilesError(
            raw_dir,
            [f"{name}.{split}.inter" for split in splits]
            + [f"{name}.user2index (optional: raw user ids)", f"{name}.item2index (optional: raw item ids)",
               f"{name}.text (optional: item text)"],
            "UniSRec-style processed data comes with UniSRec/VQ-Rec/Recformer-style code; it is never downloaded here.")
    dropped: Counter[str] = Counter()
    policy = LinePolicy(ingest.on_bad_line, dropped)
    files: list[Path] = []
    file_rows: dict[str, int] = {}
    maps: dict[str, dict[int, str] | None] = {}
    for kind in ("user", "item"):
        path = find_file(raw_dir, [f"{name}.{kind}2index"])
        maps[kind] = None if path is None else _index_map(path, policy)
        if path is not None:
            files.append(path)
            file_rows[path.name] = len(maps[kind])

    reader = _Reader(policy, maps["user"], maps["item"])
    parts, train_rows = reader.train(paths["train"])
    with_valid: dict[int, list[int]] = {}
    valid_rows: dict[int, _Row] = {}
    reader.next_target(paths["valid"], parts, with_valid, valid_rows, "valid", "the user's train part")
    reader.leftovers(paths["train"], parts, train_rows, "valid")
    full: dict[int, list[int]] = {}
    test_rows: dict[int, _Row] = {}
    reader.next_target(paths["test"], with_valid, full, test_rows, "test", "the train part and the valid target")
    reader.leftovers(paths["valid"], with_valid, valid_rows, "test")
    for user in reader.bad_users:
        full.pop(user, None)
    if reader.bad_users:
        dropped["users_with_inconsistent_rows"] = len(reader.bad_users)

    user_name = (lambda u: maps["user"][u]) if maps["user"] is not None else str
    item_name = (lambda i: maps["item"][i]) if maps["item"] is not None else str
    users: list[str] = []
    items: list[str] = []
    positions: list[int] = []
    for user, sequence in full.items():
        users.extend([user_name(user)] * len(sequence))
        items.extend(item_name(i) for i in sequence)
        positions.extend(range(len(sequence)))
    interactions = pl.LazyFrame({"user_id": users, "item_id": items, "timestamp": positions},
                                schema={"user_id": pl.String, "item_id": pl.String, "timestamp": pl.Int64})
    counts = {"train": sum(len(s) - 3 for s in full.values()), "valid": len(full), "test": len(full)}
    for split in splits:
        files.append(paths[split])
        file_rows[paths[split].name] = counts[split]
    text_items = read_optional(raw_dir, f"{name}.text", lambda path: _text(path, policy),
                               pl.DataFrame(schema={"item_id": pl.String, "title": pl.String}), files, file_rows)
    return RawData(interactions, text_items.lazy(), files, file_rows, dropped)
