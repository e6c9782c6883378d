"""Property: every line parser either reads arbitrary input or raises the project's error type.

For each source, hypothesis writes arbitrary bytes (and lines assembled from the tokens that break
parsers: separators, signs, 'nan', a BOM, invalid UTF-8, JSON escapes) into a fresh folder and
loads it with `on_bad_line` error or skip. Loading, and collecting the lazy frames it returns,
must end in a result or a DistillrecError (DataError, BadLineError, ...), never anything else.
"""

from __future__ import annotations

import gzip
import json
import tempfile
from pathlib import Path

import polars as pl
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from distillrec.data.schema import INTERACTIONS_SCHEMA, ITEMS_SCHEMA, conform
from distillrec.data.sources import load_source
from distillrec.errors import DistillrecError
from tests import rawfiles as rf

SETTINGS = settings(max_examples=50, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
# field values that break parsers: signs, non-finite and out-of-range numbers, blanks, a BOM, separators
FIELDS = ["1", "0", "7", "-1", "1.5", "1e30", "-0", "+7", "nan", "inf", "-inf", "NaN", "", " ", " 3", "1_0",
          "x", "é", "\ufeff1", "\x00", "\x1c", "\u2028", "\x85", "\r", "99999999999999999999", "1 2", "::",
          ":", ",", "|", '"', "'", "{", "[", "null", "\\ud800"]
ON_BAD_LINE = st.sampled_from(["error", "skip"])


def field() -> st.SearchStrategy[str]:
    return st.one_of(st.sampled_from(FIELDS), st.sampled_from(FIELDS), st.text(max_size=3))


def to_bytes(line: st.SearchStrategy[str], max_lines: int = 6) -> st.SearchStrategy[bytes]:
    """Lines joined with LF or CRLF, some replaced by arbitrary bytes (invalid UTF-8), maybe after a BOM."""
    piece = st.one_of(line.map(str.encode), line.map(str.encode), line.map(str.encode),
                      line.map(lambda text: text.encode("utf-8", "surrogatepass")), st.binary(max_size=12))
    return st.tuples(st.booleans(), st.lists(piece, min_size=1, max_size=max_lines),
                     st.sampled_from([b"\n", b"\r\n"])).map(
        lambda t: (rf.BOM if t[0] else b"") + b"".join(part + t[2] for part in t[1]))


ODD_NUMBERS = ["nan", "inf", "-inf", "NaN", "1e30", "1e39", "-5", "-0", "+7", "99999999999999999999", " 3", "1_0",
               "", "0x1"]


def delimited(sep: str, kinds: str) -> st.SearchStrategy[bytes]:
    """Lines of the layout's columns ('i' id, 'n' number, 's' text): most are a valid line with one field
    replaced by an odd value, so parsing gets past the field count to the values; some are ragged."""
    typical = {"i": ["1", "2", "30"], "n": ["1", "4", "100", "2.5"], "s": ["a", "Title (1995)", "x y"]}
    valid = st.tuples(*(st.sampled_from(typical[k]) for k in kinds)).map(list)

    def replace(fields: list[str], at: int, odd: str) -> str:
        fields[at % len(fields)] = odd
        return sep.join(fields)

    odd = st.one_of(st.sampled_from(ODD_NUMBERS), field())
    mutated = st.builds(replace, valid, st.integers(0, len(kinds) - 1), odd)
    ragged = st.lists(field(), min_size=max(1, len(kinds) - 1), max_size=len(kinds) + 1).map(sep.join)
    line = st.one_of(mutated, mutated, mutated, valid.map(sep.join), ragged, st.text(max_size=10))
    return st.one_of(to_bytes(line), to_bytes(line), st.binary(max_size=120))


def words() -> st.SearchStrategy[bytes]:
    return st.one_of(st.binary(max_size=120), to_bytes(st.lists(field(), max_size=5).map(" ".join)))


def json_values() -> st.SearchStrategy:
    scalars = st.one_of(st.none(), st.booleans(), st.integers(min_value=-2**70, max_value=2**70),
                        st.floats(allow_nan=False), st.text(max_size=6), st.sampled_from(FIELDS))
    return st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                          st.dictionaries(st.text(max_size=4), inner, max_size=3)),
                        max_leaves=8)


def load(source: str, files: dict[str, bytes], on_bad_line: str, version: int = 2018) -> None:
    """Load and collect everything the source returns, the way ingest would."""
    with tempfile.TemporaryDirectory() as folder:
        raw = rf.write(Path(folder) / "raw", files)
        params = rf.params(source, raw, on_bad_line, version=version)
        try:
            data = load_source(params.dataset, params.ingest, Path(folder) / "work")
            conform(data.interactions, INTERACTIONS_SCHEMA).collect()
            conform(data.items, ITEMS_SCHEMA).collect()
        except DistillrecError:
            pass


def with_file(base: dict[str, bytes], name: str, data: bytes) -> dict[str, bytes]:
    return base | {name: data}


@SETTINGS
@given(data=words(), on_bad_line=ON_BAD_LINE, gz=st.booleans())
@example(data=b"u1 a\n\x1c\n", on_bad_line="error", gz=False)  # a line of Unicode whitespace only
def test_sequences_lines(data, on_bad_line, gz):
    load("sequences", {"Beauty.txt.gz": rf.gz(data)} if gz else {"Beauty.txt": data}, on_bad_line)


@SETTINGS
@given(body=delimited("\t", "iinn"), header=st.booleans(), on_bad_line=ON_BAD_LINE)
@example(body=b"1\t2\t3\tnan\n", header=True, on_bad_line="skip")  # float timestamps cast to int64 later
@example(body=b"1\t2\t3\t1e30\n2\t2\t3\t-inf\n", header=True, on_bad_line="skip")
def test_recbole_inter_lines(body, header, on_bad_line):
    data = (rf.INTER_HEADER.encode() + b"\n" if header else b"") + body
    load("recbole", with_file(rf.valid_recbole(), "toy.inter", data), on_bad_line)


@SETTINGS
@given(body=delimited("\t", "is"), on_bad_line=ON_BAD_LINE)
def test_recbole_item_lines(body, on_bad_line):
    load("recbole", with_file(rf.valid_recbole(), "toy.item", b"item_id:token\tmovie_title:token_seq\n" + body), on_bad_line)


@SETTINGS
@given(body=delimited("\t", "iinn"), on_bad_line=ON_BAD_LINE)
@example(body=b"\xff1\t2\t3\t4\n1\t2\t3\t99999999999999999999\n", on_bad_line="skip")  # Python path, > int64
def test_movielens_u_data_lines(body, on_bad_line):
    load("movielens", with_file(rf.valid_udata(), "u.data", body), on_bad_line)


@SETTINGS
@given(body=delimited("::", "iinn"), on_bad_line=ON_BAD_LINE)
def test_movielens_ratings_dat_lines(body, on_bad_line):
    load("movielens", with_file(rf.valid_ratings_dat(), "ratings.dat", body), on_bad_line)


@SETTINGS
@given(body=delimited(",", "iinn"), header=st.booleans(), on_bad_line=ON_BAD_LINE)
def test_movielens_ratings_csv_lines(body, header, on_bad_line):
    data = (b"userId,movieId,rating,timestamp\n" if header else b"") + body
    load("movielens", with_file(rf.valid_ratings_csv(), "ratings.csv", data), on_bad_line)


@SETTINGS
@given(body=st.one_of(delimited("|", "iss" + "s" * 2 + "n" * 19), delimited("::", "iss")), on_bad_line=ON_BAD_LINE,
       layout=st.sampled_from([("u.item", rf.valid_udata), ("movies.dat", rf.valid_ratings_dat)]))
def test_movielens_item_lines(body, on_bad_line, layout):
    name, base = layout
    load("movielens", with_file(base(), name, body), on_bad_line)


def amazon_lines() -> st.SearchStrategy[bytes]:
    """Review-shaped JSON objects whose values are arbitrary, mixed with arbitrary lines."""
    keys = st.sampled_from(["reviewerID", "asin", "unixReviewTime", "overall", "summary", "reviewText", "x"])
    record = st.dictionaries(keys, json_values(), max_size=6)
    key = st.one_of(st.text(min_size=1, max_size=3), st.integers(0, 9), json_values())
    number = st.one_of(st.integers(-2**70, 2**70), st.floats(), st.sampled_from(FIELDS), json_values())
    near = st.fixed_dictionaries({"reviewerID": key, "asin": key, "unixReviewTime": number, "overall": number},
                                 optional={"summary": json_values(), "reviewText": json_values()})
    as_json = st.one_of(record, near, near).map(lambda r: json.dumps(r))  # json.dumps writes NaN, Infinity
    return st.one_of(st.binary(max_size=120), to_bytes(st.one_of(as_json, as_json, st.text(max_size=20))))


@SETTINGS
@given(body=amazon_lines(), on_bad_line=ON_BAD_LINE, gz=st.booleans())
@example(body=b'{"reviewerID": "A", "asin": "B", "unixReviewTime": 1180591620717411303424, "overall": 1}\n',
         on_bad_line="skip", gz=False)  # a timestamp beyond int64
@example(body=b'{"reviewerID": "A", "asin": "B", "unixReviewTime": 5, "overall": 1, "summary": "\xff"}\n',
         on_bad_line="skip", gz=True)  # invalid UTF-8 that pyarrow passes through
@example(body=b'{"reviewerID": "A", "asin": "B", "unixReviewTime": 5, "overall": 1, "summary": "\\ud800"}\n'
              b'{"reviewerID": "A", "asin": "B", "unixReviewTime": 5, "overall": 1e999}\n', on_bad_line="skip", gz=False)
def test_amazon_review_json_lines(body, on_bad_line, gz):
    base = rf.valid_amazon()
    base.pop("Video_Games_5.json.gz")
    base.update({"Video_Games_5.json.gz": rf.gz(body)} if gz else {"Video_Games_5.json": body})
    load("amazon", base, on_bad_line)


def meta_lines(encode) -> st.SearchStrategy[bytes]:
    keys = st.sampled_from(["asin", "title", "description", "category", "categories", "brand", "x"])
    near = st.fixed_dictionaries({"asin": st.one_of(st.text(min_size=1, max_size=3), json_values())},
                                 optional={k: json_values() for k in ("title", "description", "category",
                                                                      "categories", "brand")})
    as_text = st.one_of(st.dictionaries(keys, json_values(), max_size=5), near, near).map(encode)
    return st.one_of(st.binary(max_size=120), to_bytes(st.one_of(as_text, as_text, st.text(max_size=20))))


@SETTINGS
@given(body=meta_lines(json.dumps), on_bad_line=ON_BAD_LINE)
@example(body=b'{"asin": "B1", "title": "\\udc00"}\n', on_bad_line="skip")
def test_amazon_meta_json_lines(body, on_bad_line):
    load("amazon", with_file(rf.valid_amazon(), "meta_Video_Games.json.gz", rf.gz(body)), on_bad_line)


@SETTINGS
@given(body=meta_lines(repr), on_bad_line=ON_BAD_LINE)
def test_amazon_2014_meta_python_literals(body, on_bad_line):
    load("amazon", with_file(rf.valid_amazon_2014(), "meta_Video_Games.json.gz", rf.gz(body)), on_bad_line, version=2014)


def lcrec_json() -> st.SearchStrategy[bytes]:
    histories = st.one_of(st.lists(st.integers(-3, 2**70), max_size=4), json_values())
    items = st.one_of(st.fixed_dictionaries({}, optional={k: json_values() for k in ("title", "description",
                                                                                       "brand", "categories")}),
                      json_values())
    objects = st.one_of(st.dictionaries(st.text(max_size=4), histories, max_size=4),
                        st.dictionaries(st.text(max_size=4), items, max_size=4), json_values())
    as_json = objects.map(lambda v: json.dumps(v, indent=1).encode("utf-8", "surrogatepass"))
    return st.one_of(st.binary(max_size=120), as_json, as_json, to_bytes(st.text(max_size=20)))


@SETTINGS
@given(body=lcrec_json(), on_bad_line=ON_BAD_LINE, which=st.sampled_from(["Office.inter.json", "Office.item.json"]))
@example(body=b"[" * 100_000, on_bad_line="error", which="Office.inter.json")  # RecursionError in json
@example(body=b'{"0": [' + b"1" * 5000 + b"]}", on_bad_line="error", which="Office.inter.json")  # int digit limit
@example(body=b'{"0": [1], "\\ud800": [2]}', on_bad_line="skip", which="Office.inter.json")
@example(body=b'{"1": {"title": "\\ud800"}}', on_bad_line="skip", which="Office.item.json")
def test_lcrec_json(body, on_bad_line, which):
    load("lcrec", with_file(rf.valid_lcrec(), which, body), on_bad_line)


def unisrec_lines() -> st.SearchStrategy[bytes]:
    index = st.one_of(st.sampled_from(["0", "1", "2", "3", "4", "5", "", " 1", "-1", "x", "99999"]), field())
    history = st.lists(index, max_size=4).map(" ".join)
    line = st.tuples(index, history, index).map("\t".join)
    return st.one_of(st.binary(max_size=120), to_bytes(st.one_of(line, line, st.lists(field(), max_size=4).map("\t".join))))


@SETTINGS
@given(body=unisrec_lines(), on_bad_line=ON_BAD_LINE,
       which=st.sampled_from(["Office.train.inter", "Office.valid.inter", "Office.test.inter"]))
def test_unisrec_inter_lines(body, on_bad_line, which):
    data = rf.UNISREC_HEADER.encode() + b"\n" + body
    load("unisrec", with_file(rf.valid_unisrec(), which, data), on_bad_line)


@SETTINGS
@given(body=delimited("\t", "si"), on_bad_line=ON_BAD_LINE,
       which=st.sampled_from(["Office.user2index", "Office.item2index", "Office.text"]))
def test_unisrec_side_files(body, on_bad_line, which):
    load("unisrec", with_file(rf.valid_unisrec(), which, body), on_bad_line)


GZ_FILES = [("sequences", rf.valid_sequences, "Beauty.txt"), ("movielens", rf.valid_udata, "u.data"),
            ("movielens", rf.valid_ratings_csv, "ratings.csv"), ("movielens", rf.valid_ratings_dat, "movies.dat"),
            ("recbole", rf.valid_recbole, "toy.inter"), ("amazon", rf.valid_amazon, "Video_Games_5.json.gz"),
            ("amazon", rf.valid_amazon, "meta_Video_Games.json.gz"), ("lcrec", rf.valid_lcrec, "Office.inter.json"),
            ("unisrec", rf.valid_unisrec, "Office.test.inter")]


@SETTINGS
@given(case=st.sampled_from(GZ_FILES), cut=st.floats(0, 1), copies=st.integers(1, 200), on_bad_line=ON_BAD_LINE)
def test_a_gz_cut_anywhere_reads_or_is_named(case, cut, copies, on_bad_line):
    """Any prefix of a .gz (an interrupted download or copy) loads or raises a DistillrecError."""
    source, base, name = case
    files = base()
    plain = files.pop(name)
    if name.endswith(".gz"):
        plain = gzip.decompress(plain)
    first, *rest = plain.splitlines(keepends=True)
    packed = rf.gz(first + b"".join(rest) * copies if source != "lcrec" else plain)
    files[name.removesuffix(".gz") + ".gz"] = packed[: int(len(packed) * cut)]
    load(source, files, on_bad_line)


def test_the_valid_fixtures_load():
    """Each base the properties start from loads without error (so the properties test the changes)."""
    for source, files, version in [("sequences", rf.valid_sequences(), 2018), ("recbole", rf.valid_recbole(), 2018),
                                   ("movielens", rf.valid_udata(), 2018), ("movielens", rf.valid_ratings_dat(), 2018),
                                   ("movielens", rf.valid_ratings_csv(), 2018), ("amazon", rf.valid_amazon(), 2018),
                                   ("amazon", rf.valid_amazon_2014(), 2014), ("lcrec", rf.valid_lcrec(), 2018),
                                   ("unisrec", rf.valid_unisrec(), 2018)]:
        with tempfile.TemporaryDirectory() as folder:
            raw = rf.write(Path(folder) / "raw", files)
            params = rf.params(source, raw, version=version)
            data = load_source(params.dataset, params.ingest, Path(folder) / "work")
            assert conform(data.interactions, INTERACTIONS_SCHEMA).collect().height >= 2, source
            assert isinstance(data.items.collect(), pl.DataFrame)
