"""Small, valid raw files of every source, for the bad-input and parser tests to corrupt.

Each `valid_*` function returns {file name: bytes}; `write` puts them in a folder and `params`
builds the Params that ingest them from it (no downloads).
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

from distillrec.data.sources import movielens
from distillrec.params import AmazonParams, DatasetParams, IngestParams, Params

BOM = b"\xef\xbb\xbf"
# dataset name of each source in these fixtures
NAMES = {"sequences": "Beauty", "movielens": "ml-test", "recbole": "toy", "amazon": "Video_Games",
         "lcrec": "Office", "unisrec": "Office"}


def lines(*rows: str) -> bytes:
    return "".join(row + "\n" for row in rows).encode()


def gz(data: bytes) -> bytes:
    return gzip.compress(data, mtime=0)


def truncated_gz(data: bytes) -> bytes:
    """A .gz cut in the middle of its deflate stream, as an interrupted copy leaves it."""
    packed = gz(data * 50)
    return packed[: len(packed) // 2]


def u_item_line(item: str, title: str) -> str:
    flags = "|".join("1" if genre == "Drama" else "0" for genre in movielens.U_ITEM_GENRES)
    return f"{item}|{title}|01-Jan-1995||http://example.com/{item}|{flags}"


def valid_sequences() -> dict[str, bytes]:
    return {"Beauty.txt": lines("u1 a b c", "u2 b c d", "u3 a c")}


def valid_udata() -> dict[str, bytes]:
    return {"u.data": lines("1\t10\t4\t100", "1\t20\t3\t101", "2\t10\t5\t102"),
            "u.item": lines(u_item_line("10", "Ten (1995)"), u_item_line("20", "Twenty (1995)"))}


def valid_ratings_dat() -> dict[str, bytes]:
    return {"ratings.dat": lines("1::10::4::100", "1::20::3::101", "2::10::5::102"),
            "movies.dat": lines("10::Ten (1995)::Drama", "20::Twenty (1995)::Comedy|Drama")}


def valid_ratings_csv() -> dict[str, bytes]:
    return {"ratings.csv": lines("userId,movieId,rating,timestamp", "1,10,4.0,100", "1,20,3.5,101", "2,10,5.0,102"),
            "movies.csv": lines("movieId,title,genres", "10,Ten (1995),Drama", '20,"Twenty, The (1995)",Comedy')}


INTER_HEADER = "user_id:token\titem_id:token\trating:float\ttimestamp:float"


def valid_recbole() -> dict[str, bytes]:
    return {"toy.inter": lines(INTER_HEADER, "1\t10\t4\t100", "1\t20\t3\t101.0", "2\t10\t5\t102"),
            "toy.item": lines("item_id:token\tmovie_title:token_seq", "10\tTen", "20\tTwenty")}


def review(user: str, item: str, time: int = 100, overall: float = 4.0, **extra) -> str:
    return json.dumps({"reviewerID": user, "asin": item, "unixReviewTime": time, "overall": overall,
                       "summary": f"sum {user}", "reviewText": f"text {user} {item}"} | extra)


def valid_amazon() -> dict[str, bytes]:
    """2018 release, 5-core files."""
    return {"Video_Games_5.json.gz": gz(lines(review("A1", "B1"), review("A1", "B2", 101), review("A2", "B1", 102))),
            "meta_Video_Games.json.gz": gz(lines(json.dumps({"asin": "B1", "title": "One"}),
                                                 json.dumps({"asin": "B2", "title": "Two"})))}


def valid_amazon_2014() -> dict[str, bytes]:
    return {"reviews_Video_Games_5.json.gz": gz(lines(review("A1", "B1"), review("A2", "B1", 101))),
            "meta_Video_Games.json.gz": gz(lines(repr({"asin": "B1", "title": "One's", "categories": [["Games"]]})))}


def valid_lcrec() -> dict[str, bytes]:
    return {"Office.inter.json": json.dumps({"0": [1, 2, 3], "1": [2, 3], "2": [1, 3]}, indent=1).encode(),
            "Office.item.json": json.dumps({"1": {"title": "One", "categories": "A, B"},
                                            "2": {"title": "Two"}, "3": {"title": "Three"}}, indent=1).encode()}


UNISREC_HEADER = "user_id:token\titem_id_list:token_seq\titem_id:token"


def valid_unisrec() -> dict[str, bytes]:
    """Two users: 0 has the sequence 1 2 3 4 5 (train targets 3, 2), 1 has 2 3 4 (no train rows)."""
    return {"Office.train.inter": lines(UNISREC_HEADER, "0\t1 2\t3", "0\t1\t2"),
            "Office.valid.inter": lines(UNISREC_HEADER, "0\t1 2 3\t4", "1\t2\t3"),
            "Office.test.inter": lines(UNISREC_HEADER, "0\t1 2 3 4\t5", "1\t2 3\t4")}


def write(folder: Path, files: dict[str, bytes | None]) -> Path:
    """Write `files` into `folder` (a None value removes that file)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        if data is None:
            (folder / name).unlink(missing_ok=True)
        else:
            (folder / name).write_bytes(data)
    return folder


def params(source: str, raw: Path, on_bad_line: str = "error", version: int = 2018, **dataset) -> Params:
    amazon = AmazonParams(version=version, five_core=True)
    fields = {"source": source, "name": NAMES[source], "path": str(raw), "amazon": amazon} | dataset
    return Params(dataset=DatasetParams(**fields),
                  ingest=IngestParams(on_bad_line=on_bad_line, download=False))
