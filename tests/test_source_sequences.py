"""Plain sequence files (`user item1 item2 ...`, S3-Rec/ICLRec style)."""

from __future__ import annotations

import gzip
from pathlib import Path

import polars as pl
import pytest

from distillrec.data.sources import sequences
from distillrec.errors import BadLineError, MissingFilesError
from distillrec.params import DatasetParams, IngestParams

TEXT = "1 5 3 9\n2 3 3\n\n3  7\t8 \n"


def load(tmp_path: Path, on_bad_line: str = "error"):
    dataset = DatasetParams(source="sequences", name="Beauty", path=str(tmp_path))
    ingest = IngestParams(on_bad_line=on_bad_line, download=False)
    raw = sequences.load(dataset, ingest, dataset.raw_dir, tmp_path / "work")
    return raw, raw.interactions.collect()


@pytest.mark.parametrize("gz", [False, True])
def test_positions_become_timestamps(tmp_path, gz):
    path = tmp_path / ("Beauty.txt.gz" if gz else "Beauty.txt")
    path.write_bytes(gzip.compress(TEXT.encode()) if gz else TEXT.encode())
    raw, inter = load(tmp_path)
    assert inter.schema == {"user_id": pl.String, "item_id": pl.String, "timestamp": pl.Int64}
    assert inter.rows() == [
        ("1", "5", 0), ("1", "3", 1), ("1", "9", 2),
        ("2", "3", 0), ("2", "3", 1),
        ("3", "7", 0), ("3", "8", 1),
    ]  # fmt: skip
    assert raw.files == [path] and raw.file_rows == {path.name: 3} and not raw.dropped
    assert raw.items.collect().height == 0


def test_named_file_preferred_over_sequences_txt(tmp_path):
    (tmp_path / "sequences.txt").write_text("u a b\n")
    _, inter = load(tmp_path)
    assert inter["item_id"].to_list() == ["a", "b"]
    (tmp_path / "Beauty.txt").write_text("v c\n")
    _, inter = load(tmp_path)
    assert inter.rows() == [("v", "c", 0)]


@pytest.mark.parametrize(
    "bad, raw_line, reason",
    [(b"42\n", "42", "user '42' has no items"), (b"4 \xff 5\n", "4 \ufffd 5", "not valid UTF-8")],
)
def test_bad_line(tmp_path, bad, raw_line, reason):
    path = tmp_path / "Beauty.txt"
    path.write_bytes(TEXT.encode() + bad + b"5 1 2\n")
    with pytest.raises(BadLineError) as info:
        load(tmp_path)
    assert (info.value.path, info.value.lineno, info.value.text) == (str(path), 5, raw_line)
    assert reason in info.value.reason and f"{path}:5" in str(info.value)
    raw, inter = load(tmp_path, on_bad_line="skip")
    assert inter["user_id"].unique(maintain_order=True).to_list() == ["1", "2", "3", "5"]
    assert raw.dropped == {"bad_line:Beauty.txt": 1} and raw.file_rows == {"Beauty.txt": 4}


def test_missing_file(tmp_path):
    with pytest.raises(MissingFilesError) as info:
        load(tmp_path)
    assert f"{tmp_path}/Beauty.txt" in str(info.value) and "sequences.txt" in str(info.value)
