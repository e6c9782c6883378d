"""MovieLens native layouts (100K, 1M, 10M, 20M+), written here in their published formats."""

from __future__ import annotations

import gzip
import http.server
import io
import threading
import zipfile
from functools import partial
from pathlib import Path

import polars as pl
import pytest

from distillrec.data.sources import _tables, movielens
from distillrec.errors import BadLineError, DataError, MissingFilesError
from distillrec.params import DatasetParams, IngestParams

MISERABLES = "Misérables, Les (1995)"
RATINGS = [("1", "10", 4.0, 978300760), ("1", "20", 3.0, 978300761), ("2", "10", 5.0, 978300700)]


def _write(path: Path, text: str, encoding: str = "utf-8", gz: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = text.encode(encoding)
    if gz:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(data))
    else:
        path.write_bytes(data)
    return path


def _u_item_line(item: str, title: str, genres: set[str]) -> str:
    flags = "|".join("1" if g in genres else "0" for g in movielens.U_ITEM_GENRES)
    return f"{item}|{title}|01-Jan-1995||http://us.imdb.com/M/title-exact?x|{flags}"


def write_100k(folder: Path, gz: bool = False) -> None:
    ratings = "".join(f"{u}\t{i}\t{int(r)}\t{t}\n" for u, i, r, t in RATINGS)
    _write(folder / "u.data", ratings, gz=gz)
    items = [
        _u_item_line("10", MISERABLES, {"Drama", "Musical"}),
        _u_item_line("20", "Toy Story (1995)", {"Animation", "Children's", "Comedy"}),
        _u_item_line("30", "unknown", {"unknown"}),
    ]
    _write(folder / "u.item", "\n".join(items) + "\n", encoding="latin-1", gz=gz)


def write_dat(folder: Path, movies_encoding: str) -> None:
    _write(folder / "ratings.dat", "".join(f"{u}::{i}::{r:g}::{t}\n" for u, i, r, t in RATINGS))
    movies = f"10::{MISERABLES}::Drama|Musical\n20::Toy Story (1995)::Animation|Children's\n"
    _write(folder / "movies.dat", movies, encoding=movies_encoding)


def write_csv(folder: Path) -> None:
    rows = "".join(f"{u},{i},{r:g},{t}\n" for u, i, r, t in RATINGS)
    _write(folder / "ratings.csv", "userId,movieId,rating,timestamp\n" + rows)
    movies = (
        "movieId,title,genres\n"
        f'10,"{MISERABLES}",Drama|Musical\n'
        '20,"American President, The (1995)",Comedy|Drama|Romance\n'
        "30,Heidi (1937),(no genres listed)\n"
    )
    _write(folder / "movies.csv", movies)


def load(tmp_path: Path, name: str, on_bad_line: str = "error", download: bool = False):
    dataset = DatasetParams(source="movielens", name=name, path=str(tmp_path))
    ingest = IngestParams(on_bad_line=on_bad_line, download=download)
    raw = movielens.load(dataset, ingest, dataset.raw_dir, tmp_path / "work")
    return raw, raw.interactions.collect(), raw.items.collect()


def _titles(items: pl.DataFrame) -> dict[str, str]:
    return dict(zip(items["item_id"], items["title"]))


def _assert_ratings(inter: pl.DataFrame) -> None:
    assert inter.schema["rating"] == pl.Float32
    assert inter.schema["timestamp"] == pl.Int64
    assert inter.select("user_id", "item_id", "rating", "timestamp").rows() == RATINGS


@pytest.mark.parametrize("gz", [False, True])
def test_100k_u_data_and_latin1_u_item(tmp_path, gz):
    write_100k(tmp_path, gz=gz)
    raw, inter, items = load(tmp_path, "ml-100k")
    _assert_ratings(inter)
    assert _titles(items)["10"] == MISERABLES
    genres = dict(zip(items["item_id"], items["categories"].to_list()))
    assert genres == {
        "10": ["Drama", "Musical"], "20": ["Animation", "Children's", "Comedy"], "30": []
    }  # fmt: skip
    assert raw.file_rows == {raw.files[0].name: 3, raw.files[1].name: 3}
    assert not raw.dropped


@pytest.mark.parametrize(
    "name, inner, encoding", [("ml-1m", "", "latin-1"), ("ml-10m", "ml-10M100K", "utf-8")]
)
def test_dat_layouts_in_place_or_in_archive_folder(tmp_path, name, inner, encoding):
    write_dat(tmp_path / inner, encoding)
    raw, inter, items = load(tmp_path, name)
    _assert_ratings(inter)
    assert _titles(items) == {"10": MISERABLES, "20": "Toy Story (1995)"}
    toy_story = items.filter(pl.col("item_id") == "20")
    assert toy_story["categories"].to_list() == [["Animation", "Children's"]]
    assert [p.name for p in raw.files] == ["ratings.dat", "movies.dat"]


def test_csv_layout_quoted_titles_and_no_genres(tmp_path):
    write_csv(tmp_path / "ml-32m")
    raw, inter, items = load(tmp_path, "ml-32m")
    _assert_ratings(inter)
    with open(tmp_path / "ml-32m" / "ratings.csv", "a") as handle:
        handle.write("3,30,2.5,978300800\n")  # half stars since 10M
    _, inter, _ = load(tmp_path, "ml-32m")
    assert inter.row(-1) == ("3", "30", 2.5, 978300800)
    assert _titles(items)["20"] == "American President, The (1995)"
    assert _titles(items)["10"] == MISERABLES
    genres = dict(zip(items["item_id"], items["categories"].to_list()))
    assert genres["30"] == [] and genres["20"] == ["Comedy", "Drama", "Romance"]
    assert raw.file_rows == {"ratings.csv": 3, "movies.csv": 3}


def test_layout_is_detected_from_files_not_name(tmp_path):
    write_csv(tmp_path)
    _, inter, _ = load(tmp_path, "ml-1m")
    _assert_ratings(inter)


BAD_RATINGS = [
    ("ml-100k", "u.data", "1\t10\t4\n", "expected 4 fields"),
    ("ml-100k", "u.data", "1\t10\tfour\t978300760\n", "rating is not a number: 'four'"),
    ("ml-1m", "ratings.dat", "1::10::4::yesterday\n", "timestamp is not a number: 'yesterday'"),
    ("ml-1m", "ratings.dat", "1::10::4\n", "expected 4 fields"),
    ("ml-1m", "ratings.dat", "1::10::4::978300760::9\n", "expected 4 fields"),
    ("ml-32m", "ratings.csv", "1,10,,978300760\n", "rating is empty"),
    ("ml-32m", "ratings.csv", "1,10,4.5,12:30\n", "timestamp is not a number: '12:30'"),
]


def _with_bad_line(tmp_path: Path, name: str, file: str, bad: str) -> Path:
    """The layout's fixture with `bad` inserted as the second data row; returns the file."""
    writers = {"ml-100k": write_100k, "ml-1m": partial(write_dat, movies_encoding="latin-1")}
    writers.get(name, write_csv)(tmp_path)
    path = tmp_path / file
    lines = path.read_text().splitlines(keepends=True)
    at = 2 if file == "ratings.csv" else 1
    path.write_text("".join(lines[:at] + [bad] + lines[at:]))
    return path


@pytest.fixture(params=["polars", "python"])
def locator(request, monkeypatch):
    """Bad lines are located by polars, or by the pure-Python scan used for non-UTF-8 files."""
    if request.param == "python":
        monkeypatch.setattr(_tables, "_by_line", lambda *args: False)
    return request.param


@pytest.mark.parametrize("name, file, bad, reason", BAD_RATINGS)
def test_bad_rating_line_names_file_line_and_text(tmp_path, name, file, bad, reason, locator):
    path = _with_bad_line(tmp_path, name, file, bad)
    with pytest.raises(BadLineError) as info:
        load(tmp_path, name)
    lineno = 3 if file == "ratings.csv" else 2
    assert info.value.path == str(path) and info.value.lineno == lineno
    assert info.value.text == bad.rstrip("\n") and reason in info.value.reason
    assert f"{path}:{lineno}" in str(info.value)


@pytest.mark.parametrize("name, file, bad, reason", BAD_RATINGS)
def test_bad_rating_line_skipped_and_counted(tmp_path, name, file, bad, reason, locator):
    _with_bad_line(tmp_path, name, file, bad)
    raw, inter, _ = load(tmp_path, name, on_bad_line="skip")
    _assert_ratings(inter)
    assert raw.dropped == {f"bad_line:{file}": 1}
    assert raw.file_rows[file] == 3


def test_bad_encoding_in_ratings_is_a_bad_line(tmp_path):
    write_dat(tmp_path, "latin-1")
    path = tmp_path / "ratings.dat"
    path.write_bytes(path.read_bytes() + b"3\xff::10::4::978300760\n4::10::4\n")
    with pytest.raises(BadLineError, match="not valid UTF-8") as info:
        load(tmp_path, "ml-1m")
    assert info.value.lineno == 4 and info.value.text == "3\ufffd::10::4::978300760"
    raw, inter, _ = load(tmp_path, "ml-1m", on_bad_line="skip")
    _assert_ratings(inter)
    assert raw.dropped == {"bad_line:ratings.dat": 2}


def test_blank_lines_are_ignored_and_line_numbers_stay_exact(tmp_path):
    write_100k(tmp_path)
    path = tmp_path / "u.data"
    path.write_text(path.read_text() + "\n\n3\t10\tx\t1\n")
    with pytest.raises(BadLineError) as info:
        load(tmp_path, "ml-100k")
    assert info.value.lineno == 6
    _, inter, _ = load(tmp_path, "ml-100k", on_bad_line="skip")
    _assert_ratings(inter)


def test_bad_item_line(tmp_path):
    write_dat(tmp_path, "latin-1")
    with open(tmp_path / "movies.dat", "a", encoding="latin-1") as handle:
        handle.write("30::No genres field\n")
    with pytest.raises(BadLineError, match="expected 3 fields") as info:
        load(tmp_path, "ml-1m")
    assert info.value.lineno == 3 and info.value.path.endswith("movies.dat")
    raw, _, items = load(tmp_path, "ml-1m", on_bad_line="skip")
    assert items.height == 2 and raw.dropped == {"bad_line:movies.dat": 1}


def test_unexpected_csv_header(tmp_path):
    write_csv(tmp_path)
    path = tmp_path / "ratings.csv"
    path.write_text(path.read_text().replace("userId,movieId", "movieId,userId"))
    with pytest.raises(DataError, match="ratings.csv:1: expected the header"):
        load(tmp_path, "ml-32m")


def test_missing_files_list_expected_and_url(tmp_path):
    with pytest.raises(MissingFilesError) as info:
        load(tmp_path, "ml-1m")
    message = str(info.value)
    assert f"{tmp_path}/ratings.dat" in message and f"{tmp_path}/movies.dat" in message
    assert "https://files.grouplens.org/datasets/movielens/ml-1m.zip" in message


def test_download_unpacks_archive_folder(tmp_path, monkeypatch):
    """The published zip holds an inner folder (ml-10M100K/); served from a local server."""
    served = tmp_path / "served"
    served.mkdir()
    payload = io.BytesIO()
    with zipfile.ZipFile(payload, "w") as bundle:
        ratings = "".join(f"{u}::{i}::{r:g}::{t}\n" for u, i, r, t in RATINGS)
        bundle.writestr("ml-10M100K/ratings.dat", ratings)
        bundle.writestr("ml-10M100K/movies.dat", "10::Heat (1995)::Action\n")
    (served / "ml-10m.zip").write_bytes(payload.getvalue())
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setattr(movielens, "URL", f"http://127.0.0.1:{server.server_port}/{{name}}.zip")
        raw, inter, items = load(tmp_path / "raw", "ml-10m", download=True)
    finally:
        server.shutdown()
        server.server_close()
    _assert_ratings(inter)
    assert _titles(items) == {"10": "Heat (1995)"}
    assert raw.files[0] == tmp_path / "raw" / "ml-10M100K" / "ratings.dat"
