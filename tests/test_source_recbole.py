"""RecBole atomic files: fixtures in the published layout, plus the real ml-100k copy."""

from __future__ import annotations

import gzip
from pathlib import Path

import polars as pl
import pytest

from distillrec.data.sources import recbole
from distillrec.errors import BadLineError, DataError, MissingFilesError
from distillrec.params import DatasetParams, IngestParams

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
INTER_HEADER = "user_id:token\titem_id:token\trating:float\ttimestamp:float"
INTER_ROWS = ["196\t242\t3\t881250949", "186\t302\t3\t891717742", "22\t377\t1\t878887116.0"]
ITEM_TEXT = (
    "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
    "242\tKolya\t1996\tComedy\n"
    "302\tL.A. Confidential\t1997\tCrime Film-Noir Mystery Thriller\n"
    "377\tHeavyweights\t1994\t\n"
)


def write(tmp_path: Path, inter: str, item: str | None = ITEM_TEXT, gz: bool = False) -> Path:
    path = tmp_path / ("toy.inter.gz" if gz else "toy.inter")
    path.write_bytes(gzip.compress(inter.encode()) if gz else inter.encode())
    if item is not None:
        (tmp_path / "toy.item").write_text(item)
    return path


def inter_text(*rows: str, header: str = INTER_HEADER) -> str:
    return "\n".join([header, *rows]) + "\n"


def load(raw_dir: Path, name: str = "toy", on_bad_line: str = "error", workdir: Path | None = None):
    dataset = DatasetParams(source="recbole", name=name, path=str(raw_dir))
    ingest = IngestParams(on_bad_line=on_bad_line, download=False)
    raw = recbole.load(dataset, ingest, dataset.raw_dir, workdir or raw_dir / "work")
    return raw, raw.interactions.collect(), raw.items.collect()


@pytest.mark.parametrize("gz", [False, True])
def test_inter_and_item(tmp_path, gz):
    write(tmp_path, inter_text(*INTER_ROWS), gz=gz)
    raw, inter, items = load(tmp_path)
    assert inter.schema == {
        "user_id": pl.String, "item_id": pl.String, "timestamp": pl.Int64, "rating": pl.Float32
    }  # fmt: skip
    assert inter.rows() == [
        ("196", "242", 881250949, 3.0),
        ("186", "302", 891717742, 3.0),
        ("22", "377", 878887116, 1.0),
    ]  # fmt: skip
    assert items.rows() == [
        ("242", "Kolya", ["Comedy"]),
        ("302", "L.A. Confidential", ["Crime", "Film-Noir", "Mystery", "Thriller"]),
        ("377", "Heavyweights", []),
    ]
    assert raw.file_rows == {raw.files[0].name: 3, "toy.item": 3}
    assert not raw.dropped


def test_rating_and_item_file_are_optional_extra_fields_ignored(tmp_path):
    header = "session:token\tuser_id:token\titem_id:token\ttimestamp:float\tnote:token_seq"
    rows = ["s1\tu1\ti1\t5\t", "s2\tu1\ti2\t6\tgood one"]
    write(tmp_path, inter_text(*rows, header=header), item=None)
    raw, inter, items = load(tmp_path)
    assert inter.columns == ["user_id", "item_id", "timestamp"]
    assert inter.rows() == [("u1", "i1", 5), ("u1", "i2", 6)]
    assert items.height == 0 and raw.files == [tmp_path / "toy.inter"]


def test_item_brand_and_title_fields(tmp_path):
    item = (
        "item_id:token\ttitle:token_seq\tbrand:token\tcategories:token_seq\n"
        "A1\tA Pen\tAcme\tOffice Pens\n"
    )
    write(tmp_path, inter_text("u\tA1\t5\t1"), item=item)
    _, _, items = load(tmp_path)
    assert items.to_dicts() == [
        {"item_id": "A1", "title": "A Pen", "categories": ["Office", "Pens"], "brand": "Acme"}
    ]


@pytest.mark.parametrize("missing", ["user_id", "item_id", "timestamp"])
def test_header_lacking_required_field(tmp_path, missing):
    header = "\t".join(f for f in INTER_HEADER.split("\t") if not f.startswith(missing + ":"))
    path = write(tmp_path, inter_text("1\t2\t3", header=header))
    with pytest.raises(DataError) as info:
        load(tmp_path)
    message = str(info.value)
    assert str(path) in message and missing in message and repr(header) in message


def test_headerless_file_is_rejected(tmp_path):
    write(tmp_path, "\n".join(INTER_ROWS) + "\n")
    with pytest.raises(DataError, match="field:type"):
        load(tmp_path)


BAD_LINES = [
    ("1\t2\t3", "expected 4 fields"),
    ("1\t2\t3\t4\t5", "expected 4 fields"),
    ("1\t2\tgreat\t881250949", "rating is not a number: 'great'"),
    ("1\t2\t3\tMonday", "timestamp is not a number: 'Monday'"),
    ("1\t\t3\t881250949", "item_id is empty"),
]


@pytest.mark.parametrize("bad, reason", BAD_LINES)
def test_bad_inter_line_raises_with_file_line_text(tmp_path, bad, reason):
    path = write(tmp_path, inter_text(INTER_ROWS[0], bad, *INTER_ROWS[1:]))
    with pytest.raises(BadLineError) as info:
        load(tmp_path)
    error = info.value
    assert (error.path, error.lineno, error.text) == (str(path), 3, bad)  # header is line 1
    assert reason in error.reason and f"{path}:3" in str(error)


@pytest.mark.parametrize("bad, reason", BAD_LINES)
def test_bad_inter_line_skipped_and_counted(tmp_path, bad, reason):
    write(tmp_path, inter_text(INTER_ROWS[0], bad, *INTER_ROWS[1:]))
    raw, inter, _ = load(tmp_path, on_bad_line="skip")
    assert inter["item_id"].to_list() == ["242", "302", "377"]
    assert raw.dropped == {"bad_line:toy.inter": 1} and raw.file_rows["toy.inter"] == 3


def test_bad_item_line(tmp_path):
    write(tmp_path, inter_text(*INTER_ROWS), item=ITEM_TEXT + "999\tonly two\n")
    with pytest.raises(BadLineError, match="expected 4 tab-separated fields") as info:
        load(tmp_path)
    assert info.value.lineno == 5 and info.value.path.endswith("toy.item")
    raw, _, items = load(tmp_path, on_bad_line="skip")
    assert items.height == 3 and raw.dropped == {"bad_line:toy.item": 1}


def test_missing_inter_file(tmp_path):
    with pytest.raises(MissingFilesError) as info:
        load(tmp_path)
    message = str(info.value)
    assert f"{tmp_path}/toy.inter" in message and "RecBole" in message


@pytest.mark.skipif(not SHARED.is_dir(), reason=f"real data folder {SHARED} is absent")
def test_real_ml_100k(tmp_path):
    raw, inter, items = load(SHARED / "data" / "ml-100k", name="ml-100k", workdir=tmp_path)
    assert inter.height == 100_000
    assert inter["user_id"].n_unique() == 943 and inter["item_id"].n_unique() == 1682
    assert inter.row(0) == ("196", "242", 881250949, 3.0)
    assert items.height == 1682 and items["title"].null_count() == 0
    toy_story = items.filter(pl.col("item_id") == "1").row(0, named=True)
    assert toy_story["title"] == "Toy Story"
    assert toy_story["categories"] == ["Animation", "Children's", "Comedy"]
    assert raw.file_rows == {"ml-100k.inter": 100_000, "ml-100k.item": 1682} and not raw.dropped
