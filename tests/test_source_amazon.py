"""Amazon 2014/2018/2023 parsing from fixtures in the published formats, plus the real 2023 sample."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import polars as pl
import pytest

from distillrec.data.sources import amazon
from distillrec.errors import BadLineError, MissingFilesError
from distillrec.params import AmazonParams, DatasetParams, IngestParams


def _write(path: Path, lines: list[str]) -> Path:
    data = "".join(line + "\n" for line in lines).encode()
    if path.suffix == ".gz":
        path.write_bytes(gzip.compress(data))
    else:
        path.write_bytes(data)
    return path


def _dataset(raw: Path, version: int, name: str = "Video_Games", five_core: bool = True):
    return DatasetParams(source="amazon", name=name, path=str(raw),
                         amazon=AmazonParams(version=version, five_core=five_core))


def _load(raw: Path, tmp_path: Path, version: int, on_bad_line: str = "error", **kw):
    dataset = _dataset(raw, version, **kw)
    ingest = IngestParams(on_bad_line=on_bad_line, download=False)
    data = amazon.load(dataset, ingest, raw, tmp_path / "work")
    return data, data.interactions.collect(), data.items.collect()


def _review_2018(user: str, asin: str, overall, time: int, **extra) -> str:
    record = {"overall": overall, "vote": "1,234", "verified": True, "reviewTime": "01 5, 2016",
              "reviewerID": user, "asin": asin, "style": {"Format:": " Kindle Edition"},
              "reviewerName": "Some One", "reviewText": f"text {user}", "summary": f"sum {user}",
              "unixReviewTime": time, "image": ["https://example.com/a.jpg"]} | extra
    return json.dumps(record)


# ------------------------------------------------------------------ 2014

def test_2014_gz_reviews_and_python_literal_meta(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    reviews = [{"reviewerID": "A1", "asin": "B001", "reviewerName": "J. O'Neil", "helpful": [2, 3],
                "reviewText": 'He said "great"', "overall": 5.0, "summary": "Great",
                "unixReviewTime": 1356048000, "reviewTime": "12 21, 2012"},
               {"reviewerID": "A2", "asin": "B002", "helpful": [0, 0], "reviewText": "",
                "overall": 2.0, "summary": "Meh", "unixReviewTime": 1356134400}]
    _write(raw / "reviews_Video_Games_5.json.gz", [json.dumps(r) for r in reviews])
    meta = [{"asin": "B001", "title": "Zelda's \"Quest\"", "price": 9.99, "salesRank": {"Video Games": 12},
             "categories": [["Video Games", "PC", "Games"], ["Video Games", "Nintendo"]],
             "description": "It's a game.", "brand": "Nintendo", "related": {"also_bought": ["B002"]}},
            {"asin": "B002", "categories": [["Video Games"]], "imUrl": "http://x/y.jpg"},
            {"asin": "B003", "title": "Never reviewed"}]
    lines = [repr(m) for m in meta]  # how the 2014 files were written: Python repr, single quotes
    assert "'asin': 'B001'" in lines[0]
    _write(raw / "meta_Video_Games.json.gz", lines)

    data, inter, items = _load(raw, tmp_path, 2014)

    assert inter.to_dicts() == [
        {"user_id": "A1", "item_id": "B001", "timestamp": 1356048000, "rating": 5.0,
         "review_title": "Great", "review_text": 'He said "great"'},
        {"user_id": "A2", "item_id": "B002", "timestamp": 1356134400, "rating": 2.0,
         "review_title": "Meh", "review_text": None},
    ]
    assert inter.schema["timestamp"] == pl.Int64 and inter.schema["rating"] == pl.Float32
    first = items.row(0, named=True)
    assert first == {"item_id": "B001", "title": "Zelda's \"Quest\"", "description": "It's a game.",
                     "categories": ["Video Games", "PC", "Games", "Nintendo"], "brand": "Nintendo"}
    assert items["item_id"].to_list() == ["B001", "B002", "B003"]
    assert items.row(1, named=True)["title"] is None
    assert data.file_rows == {"reviews_Video_Games_5.json.gz": 2, "meta_Video_Games.json.gz": 3}
    assert [p.name for p in data.files] == ["reviews_Video_Games_5.json.gz", "meta_Video_Games.json.gz"]


def test_2014_meta_is_never_evaluated_as_code(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    _write(raw / "reviews_Video_Games_5.json.gz", [_review_2018("A1", "B001", 5.0, 1)])
    _write(raw / "meta_Video_Games.json.gz",
           ["{'asin': 'B001'}", "{'asin': __import__('os').getcwd()}"])
    with pytest.raises(BadLineError, match=r"meta_Video_Games\.json\.gz:2: invalid Python literal"):
        _load(raw, tmp_path, 2014)


# ------------------------------------------------------------------ 2018

def test_2018_gz_reviews_and_json_meta(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    _write(raw / "Video_Games_5.json.gz", [
        _review_2018("A1", "B001", 5.0, 1500000000),
        _review_2018("A2", "B001", 3, 1500000100),  # integer rating
        _review_2018("A1", "B002", 4.0, 1500000200, summary=None),
    ])
    meta = {"category": ["Video Games", "PC", "Video Games"], "tech1": "", "description":
            ["First paragraph.", "", "Second paragraph."], "fit": "", "title": "Game One",
            "also_buy": ["B002"], "brand": "Acme", "feature": [], "rank": ">#1 in Games",
            "main_cat": "Video Games", "price": "$9.99", "asin": "B001", "details": {}}
    _write(raw / "meta_Video_Games.json.gz",
           [json.dumps(meta), json.dumps({"asin": "B002", "title": "", "category": []})])

    _, inter, items = _load(raw, tmp_path, 2018)

    assert inter["user_id"].to_list() == ["A1", "A2", "A1"]
    assert inter["rating"].to_list() == [5.0, 3.0, 4.0]
    assert inter["timestamp"].to_list() == [1500000000, 1500000100, 1500000200]
    assert inter["review_title"].to_list() == ["sum A1", "sum A2", None]
    assert items.row(0, named=True) == {
        "item_id": "B001", "title": "Game One", "description": "First paragraph.\nSecond paragraph.",
        "categories": ["Video Games", "PC"], "brand": "Acme"}
    assert items.row(1, named=True) == {"item_id": "B002", "title": None, "description": None,
                                        "categories": [], "brand": None}


def test_2018_full_file_name_when_not_five_core(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    _write(raw / "Video_Games.json", [_review_2018("A1", "B001", 5.0, 1)])  # plain, no .gz
    _write(raw / "meta_Video_Games.json.gz", [json.dumps({"asin": "B001"})])
    data, inter, _ = _load(raw, tmp_path, 2018, five_core=False)
    assert inter.height == 1 and data.files[0].name == "Video_Games.json"


def test_meta_with_unexpected_types_falls_back_to_the_line_scan(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    _write(raw / "Video_Games_5.json.gz", [_review_2018("A1", "B001", 5.0, 1)])
    _write(raw / "meta_Video_Games.json.gz", [
        json.dumps({"asin": "B001", "description": ["a list"], "category": ["X"]}),
        json.dumps({"asin": "B002", "description": "a plain string", "category": ["Y"]}),
    ])
    _, _, items = _load(raw, tmp_path, 2018)
    assert items["description"].to_list() == ["a list", "a plain string"]


# ------------------------------------------------------------------ 2023

def _review_2023(user: str, asin: str, parent: str, rating, ms: int) -> str:
    return json.dumps({"rating": rating, "title": f"t {user}", "text": f"x {user}", "images": [],
                       "asin": asin, "parent_asin": parent, "user_id": user, "timestamp": ms,
                       "helpful_vote": 0, "verified_purchase": True})


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_2023_joins_on_parent_asin_and_converts_milliseconds(tmp_path, suffix):
    raw = tmp_path / "raw"
    raw.mkdir()
    _write(raw / f"Video_Games.jsonl{suffix}", [
        _review_2023("U1", "C1", "P1", 5.0, 1602133857705),
        _review_2023("U2", "C2", "P1", 1.0, 1602133858999),
    ])
    meta = {"main_category": "Video Games", "title": "Parent One", "average_rating": 4.1,
            "features": ["Feature A", "Feature B"], "description": ["Desc."], "price": None,
            "images": [{"thumb": "x", "large": "y", "variant": "MAIN"}], "videos": [],
            "store": "Acme Store", "categories": ["Video Games", "PC"],
            "details": {"Release date": "2020"}, "parent_asin": "P1", "bought_together": None}
    _write(raw / f"meta_Video_Games.jsonl{suffix}", [json.dumps(meta)])

    data, inter, items = _load(raw, tmp_path, 2023)

    assert inter["item_id"].to_list() == ["P1", "P1"]
    assert inter["timestamp"].to_list() == [1602133857, 1602133858]
    assert items.to_dicts() == [{"item_id": "P1", "title": "Parent One",
                                 "description": "Desc.\nFeature A\nFeature B",
                                 "categories": ["Video Games", "PC"], "brand": "Acme Store"}]
    assert data.file_rows == {f"Video_Games.jsonl{suffix}": 2, f"meta_Video_Games.jsonl{suffix}": 1}


def test_real_subscription_boxes_2023(tmp_path, shared):
    folder = shared / "data" / "amazon-2023-subscription-boxes"
    dataset = DatasetParams(source="amazon", name="Subscription_Boxes", path=str(folder),
                            amazon=AmazonParams(version=2023))
    data = amazon.load(dataset, IngestParams(download=False), folder, tmp_path / "work")
    inter, items = data.interactions.collect(), data.items.collect()

    assert inter.height == 16_216 and not data.dropped
    assert inter["user_id"].n_unique() == 15_237
    used = inter.select("item_id").unique()
    assert used.height == 641
    joined = used.join(items, on="item_id", how="left")
    assert joined["title"].is_not_null().sum() == 640
    assert inter["timestamp"].is_between(946_684_800, 1_800_000_000).all()  # seconds, not ms
    assert inter["rating"].is_between(1, 5).all()


# ------------------------------------------------------------------ malformed lines

BAD_LINES = [
    ('{"reviewerID": "A9", "asin": "B001", "overall": 5.0', "invalid JSON"),
    (_review_2018("A9", "B001", 5.0, 1).replace('"asin": "B001", ', ""), "missing field `asin`"),
    (_review_2018("A9", "B001", "five", 1), "non-numeric `overall`: 'five'"),
    (_review_2018("A9", "B001", 5.0, 1).replace('"unixReviewTime": 1', '"unixReviewTime": null'),
     "missing field `unixReviewTime`"),
]


@pytest.mark.parametrize(("line", "reason"), BAD_LINES)
def test_bad_review_line_is_reported_with_file_and_line(tmp_path, line, reason):
    raw = tmp_path / "raw"
    raw.mkdir()
    path = _write(raw / "Video_Games_5.json.gz",
                  [_review_2018("A1", "B001", 5.0, 1), "", line, _review_2018("A2", "B001", 4.0, 2)])
    _write(raw / "meta_Video_Games.json.gz", [json.dumps({"asin": "B001"})])

    with pytest.raises(BadLineError) as info:
        _load(raw, tmp_path, 2018)
    assert (info.value.path, info.value.lineno, info.value.text) == (str(path), 3, line)
    assert reason in info.value.reason
    assert f"{path}:3: {reason}" in str(info.value)


def test_bad_lines_are_skipped_and_counted(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    good = [_review_2018("A1", "B001", 5.0, 1), _review_2018("A2", "B001", 4.0, 2)]
    _write(raw / "Video_Games_5.json.gz",
           [good[0], *(line for line, _ in BAD_LINES), good[1], "[1, 2]"])
    _write(raw / "meta_Video_Games.json.gz",
           [json.dumps({"asin": "B001", "title": "T"}), "not json", json.dumps({"title": "no asin"})])

    data, inter, items = _load(raw, tmp_path, 2018, on_bad_line="skip")

    assert inter["user_id"].to_list() == ["A1", "A2"]
    assert items["item_id"].to_list() == ["B001"]
    assert data.dropped == {"bad_line:Video_Games_5.json.gz": 5, "bad_line:meta_Video_Games.json.gz": 2}
    assert data.file_rows == {"Video_Games_5.json.gz": 2, "meta_Video_Games.json.gz": 1}


# ------------------------------------------------------------------ missing files

@pytest.mark.parametrize(("version", "five_core", "expected"), [
    (2014, True, ["reviews_Video_Games_5.json.gz", "meta_Video_Games.json.gz"]),
    (2014, False, ["reviews_Video_Games.json.gz", "meta_Video_Games.json.gz"]),
    (2018, True, ["Video_Games_5.json.gz", "meta_Video_Games.json.gz"]),
    (2023, True, ["Video_Games.jsonl.gz", "meta_Video_Games.jsonl.gz"]),
])
def test_missing_files_offline_lists_expected_names(tmp_path, version, five_core, expected):
    with pytest.raises(MissingFilesError) as info:
        _load(tmp_path / "nowhere", tmp_path, version, five_core=five_core)
    for name in expected:
        assert f"{tmp_path / 'nowhere'}/{name}" in str(info.value)


def test_only_the_missing_file_is_listed(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    _write(raw / "meta_Video_Games.jsonl", [json.dumps({"parent_asin": "P1"})])
    with pytest.raises(MissingFilesError) as info:
        _load(raw, tmp_path, 2023)
    assert "Video_Games.jsonl.gz" in str(info.value) and "meta_Video_Games" not in str(info.value)


def test_download_fetches_the_published_urls(tmp_path, monkeypatch):
    fetched = []

    def fetch(url, dest, sha256=None, size=None):
        fetched.append((url, dest.name))
        _write(dest, [_review_2018("A1", "B001", 5.0, 1)] if "meta" not in dest.name
               else [json.dumps({"asin": "B001"})])
        return dest

    monkeypatch.setattr(amazon, "fetch", fetch)
    raw = tmp_path / "raw"
    dataset = _dataset(raw, 2018)
    data = amazon.load(dataset, IngestParams(download=True), raw, tmp_path / "work")
    ucsd = "https://datarepo.eng.ucsd.edu/mcauley_group/data/amazon_v2"
    assert fetched == [(f"{ucsd}/categoryFilesSmall/Video_Games_5.json.gz", "Video_Games_5.json.gz"),
                       (f"{ucsd}/metaFiles2/meta_Video_Games.json.gz", "meta_Video_Games.json.gz")]
    assert data.interactions.collect().height == 1


def test_failed_download_says_which_files_to_provide(tmp_path, monkeypatch):
    def fetch(url, dest, sha256=None, size=None):
        raise OSError("network unreachable")

    monkeypatch.setattr(amazon, "fetch", fetch)
    raw = tmp_path / "raw"
    with pytest.raises(MissingFilesError, match="network unreachable") as info:
        amazon.load(_dataset(raw, 2014), IngestParams(download=True), raw, tmp_path / "work")
    assert f"{raw}/reviews_Video_Games_5.json.gz" in str(info.value)
    assert "snap.stanford.edu/data/amazon/productGraph/categoryFiles/reviews_Video_Games_5" in str(info.value)
