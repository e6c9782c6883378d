"""Every kind of bad input a user can hand the pipeline, one row each: what error, naming what.

Ingest rows run the real `run_ingest` over a previously written output folder and check that a
failure raises the project's error type, names the file (and line, where there is one), leaves
the previous output byte for byte and leaves no temporary folder next to it. Import rows run
`import_teacher` (stage import_teacher@<name>); serving rows run `python -m distillrec recommend` and expect rc 2 and a message.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch

from distillrec.cli import main as cli_main
from distillrec.data.ingest import run_ingest
from distillrec.errors import BadLineError, DataError, DistillrecError, MissingFilesError
from distillrec.params import ImportParams, Params, StudentParams
from distillrec.students import build_student
from distillrec.students.saved import save_student
from distillrec.teachers.data import TeacherData
from distillrec.teachers.imported import CONFIDENCE, EMBEDDINGS, RANKS, import_teacher
from tests import rawfiles as rf
from tests.rawfiles import BOM, gz, lines, review, truncated_gz

PREVIOUS = {"manifest.json": b'{"previous": true}\n', "interactions.parquet": b"previous bytes"}


@dataclass(frozen=True)
class Case:
    kind: str                      # ingest | import | serve
    error: type[Exception]
    file: str                      # the file the message must name
    line: int | None               # its line, where there is one
    reason: str                    # a fragment of the message
    source: str = ""               # ingest: the source
    base: Callable[[], dict[str, bytes]] | None = None   # ingest: valid files to start from
    changes: dict[str, bytes | None] = field(default_factory=dict)  # ingest: files replaced/removed
    corrupt: Callable[[Path], None] | None = None        # import/serve: breaks the folder
    version: int = 2018            # amazon release


def ingest(case_id, source, base, changes, error, file, line, reason, version=2018):
    return pytest.param(Case("ingest", error, file, line, reason, source, base, changes, version=version), id=case_id)


def imported(case_id, corrupt, error, file, line, reason):
    return pytest.param(Case("import", error, file, line, reason, corrupt=corrupt), id=case_id)


def serve(case_id, corrupt, file, reason):
    return pytest.param(Case("serve", DistillrecError, file, None, reason, corrupt=corrupt), id=case_id)


SEQ, UDATA, DAT, CSV = rf.valid_sequences, rf.valid_udata, rf.valid_ratings_dat, rf.valid_ratings_csv
RB, AMZ, AMZ14, LC, UNI = rf.valid_recbole, rf.valid_amazon, rf.valid_amazon_2014, rf.valid_lcrec, rf.valid_unisrec
U_DATA_GOOD = "1\t10\t4\t100"


def udata(*rows: str) -> dict[str, bytes]:
    return {"u.data": lines(U_DATA_GOOD, *rows)}


def recbole_inter(*rows: str) -> dict[str, bytes]:
    return {"toy.inter": lines(rf.INTER_HEADER, "1\t10\t4\t100", *rows)}


def amazon_reviews(*rows: str | bytes) -> dict[str, bytes]:
    body = b"".join((row if isinstance(row, bytes) else row.encode()) + b"\n" for row in rows)
    return {"Video_Games_5.json.gz": gz(lines(review("A1", "B1")) + body)}


# ---------------------------------------------------------------------------------------- ingest rows

INGEST_CASES = [
    # sequences
    ingest("seq-user-without-items", "sequences", SEQ, {"Beauty.txt": lines("u1 a b", "u2")},
           BadLineError, "Beauty.txt", 2, "has no items"),
    ingest("seq-invalid-utf8", "sequences", SEQ, {"Beauty.txt": b"u1 a b\nu2 \xff c\n"},
           BadLineError, "Beauty.txt", 2, "not valid UTF-8"),
    ingest("seq-truncated-gz", "sequences", SEQ, {"Beauty.txt": None, "Beauty.txt.gz": truncated_gz(SEQ()["Beauty.txt"])},
           DataError, "Beauty.txt.gz", None, "truncated or corrupt"),
    ingest("seq-gz-that-is-not-gzip", "sequences", SEQ, {"Beauty.txt": None, "Beauty.txt.gz": b"u1 a b\n"},
           DataError, "Beauty.txt.gz", None, "truncated or corrupt"),
    ingest("seq-missing-file", "sequences", SEQ, {"Beauty.txt": None},
           MissingFilesError, "Beauty.txt", None, "missing"),
    ingest("seq-empty-file", "sequences", SEQ, {"Beauty.txt": b""},
           DataError, "Beauty.txt", None, "yielded no interactions"),
    ingest("seq-bom-only", "sequences", SEQ, {"Beauty.txt": BOM + b"\n\n"},
           DataError, "Beauty.txt", None, "yielded no interactions"),
    # MovieLens 100K
    ingest("udata-wrong-field-count", "movielens", UDATA, udata("1\t20\t3"),
           BadLineError, "u.data", 2, "expected 4 fields"),
    ingest("udata-non-numeric-rating", "movielens", UDATA, udata("1\t20\tgood\t101"),
           BadLineError, "u.data", 2, "rating is not a number"),
    ingest("udata-nan-rating", "movielens", UDATA, udata("1\t20\tnan\t101"),
           BadLineError, "u.data", 2, "rating is not a finite number"),
    ingest("udata-non-numeric-timestamp", "movielens", UDATA, udata("1\t20\t3\tyesterday"),
           BadLineError, "u.data", 2, "timestamp is not a number"),
    ingest("udata-negative-timestamp", "movielens", UDATA, udata("1\t20\t3\t101", "2\t20\t3\t-5"),
           BadLineError, "u.data", 3, "timestamp is negative"),
    ingest("udata-empty-user", "movielens", UDATA, udata("\t20\t3\t101"),
           BadLineError, "u.data", 2, "user_id is empty"),
    ingest("udata-invalid-utf8", "movielens", UDATA, {"u.data": lines(U_DATA_GOOD) + b"\xff1\t20\t3\t101\n"},
           BadLineError, "u.data", 2, "not valid UTF-8"),
    ingest("udata-truncated-gz", "movielens", UDATA, {"u.data": None, "u.data.gz": truncated_gz(UDATA()["u.data"])},
           DataError, "u.data.gz", None, "truncated or corrupt"),
    ingest("uitem-wrong-field-count", "movielens", UDATA, {"u.item": lines(rf.u_item_line("10", "Ten"), "20|Twenty")},
           BadLineError, "u.item", 2, "expected 24 fields"),
    ingest("uitem-truncated-gz", "movielens", UDATA, {"u.item": None, "u.item.gz": truncated_gz(UDATA()["u.item"])},
           DataError, "u.item.gz", None, "truncated or corrupt"),
    # MovieLens 1M / 10M
    ingest("ratings-dat-single-colons", "movielens", DAT, {"ratings.dat": lines("1::10::4::100", "1:20:3:101")},
           BadLineError, "ratings.dat", 2, "expected 4 fields"),
    ingest("ratings-dat-negative-timestamp", "movielens", DAT, {"ratings.dat": lines("1::10::4::100", "1::20::3::-1")},
           BadLineError, "ratings.dat", 2, "timestamp is negative"),
    ingest("ratings-dat-timestamp-too-large", "movielens", DAT,
           {"ratings.dat": lines("1::10::4::100", "1::20::3::99999999999999999999")},
           BadLineError, "ratings.dat", 2, "timestamp is not a number"),
    ingest("movies-dat-truncated-gz", "movielens", DAT, {"movies.dat": None, "movies.dat.gz": truncated_gz(DAT()["movies.dat"])},
           DataError, "movies.dat.gz", None, "truncated or corrupt"),
    # MovieLens 20M+
    ingest("ratings-csv-bad-header", "movielens", CSV, {"ratings.csv": lines("user,movie,rating,time", "1,10,4,100")},
           DataError, "ratings.csv", 1, "expected the header"),
    ingest("ratings-csv-non-numeric-timestamp", "movielens", CSV,
           {"ratings.csv": lines("userId,movieId,rating,timestamp", "1,10,4.0,100", "1,20,3.0,abc")},
           BadLineError, "ratings.csv", 3, "timestamp is not a number"),
    ingest("ratings-csv-inf-rating", "movielens", CSV,
           {"ratings.csv": lines("userId,movieId,rating,timestamp", "1,10,inf,100")},
           BadLineError, "ratings.csv", 2, "rating is not a finite number"),
    ingest("ratings-csv-truncated-gz", "movielens", CSV,
           {"ratings.csv": None, "ratings.csv.gz": truncated_gz(CSV()["ratings.csv"])},
           DataError, "ratings.csv.gz", None, "truncated or corrupt"),
    ingest("ratings-csv-header-only", "movielens", CSV, {"ratings.csv": lines("userId,movieId,rating,timestamp")},
           DataError, "ratings.csv", None, "yielded no interactions"),
    ingest("movies-csv-bad-header", "movielens", CSV, {"movies.csv": lines("id,name,genres", "10,Ten,Drama")},
           DataError, "movies.csv", 1, "expected the header"),
    ingest("movies-csv-wrong-field-count", "movielens", CSV, {"movies.csv": lines("movieId,title,genres", "10,Ten")},
           BadLineError, "movies.csv", 2, "expected 3 fields"),
    ingest("movielens-missing-files", "movielens", CSV, {"ratings.csv": None},
           MissingFilesError, "ratings.csv", None, "missing"),
    # RecBole
    ingest("recbole-header-without-types", "recbole", RB, {"toy.inter": lines("user_id\titem_id\ttimestamp", "1\t10\t100")},
           DataError, "toy.inter", 1, "'field:type' header"),
    ingest("recbole-header-without-timestamp", "recbole", RB, {"toy.inter": lines("user_id:token\titem_id:token", "1\t10")},
           DataError, "toy.inter", 1, "lacks required field(s) timestamp"),
    ingest("recbole-nan-timestamp", "recbole", RB, recbole_inter("1\t20\t3\tnan"),
           BadLineError, "toy.inter", 3, "timestamp is not a finite number"),
    ingest("recbole-inf-timestamp", "recbole", RB, recbole_inter("1\t20\t3\t101", "2\t20\t3\tinf"),
           BadLineError, "toy.inter", 4, "timestamp is not a finite number"),
    ingest("recbole-1e30-timestamp", "recbole", RB, recbole_inter("1\t20\t3\t1e30"),
           BadLineError, "toy.inter", 3, "timestamp is out of range"),
    ingest("recbole-negative-timestamp", "recbole", RB, recbole_inter("1\t20\t3\t-100.5"),
           BadLineError, "toy.inter", 3, "timestamp is negative"),
    ingest("recbole-wrong-field-count", "recbole", RB, recbole_inter("1\t20\t3"),
           BadLineError, "toy.inter", 3, "expected 4 fields"),
    ingest("recbole-truncated-gz", "recbole", RB, {"toy.inter": None, "toy.inter.gz": truncated_gz(RB()["toy.inter"])},
           DataError, "toy.inter.gz", None, "truncated or corrupt"),
    ingest("recbole-item-wrong-field-count", "recbole", RB, {"toy.item": lines("item_id:token\tmovie_title:token_seq", "10")},
           BadLineError, "toy.item", 2, "expected 2 tab-separated fields"),
    ingest("recbole-missing-inter", "recbole", RB, {"toy.inter": None},
           MissingFilesError, "toy.inter", None, "missing"),
    # Amazon
    ingest("amazon-invalid-json", "amazon", AMZ, amazon_reviews('{"reviewerID": "A2", "asin": '),
           BadLineError, "Video_Games_5.json.gz", 2, "invalid JSON"),
    ingest("amazon-invalid-utf8-in-text", "amazon", AMZ,
           amazon_reviews(b'{"reviewerID": "A2", "asin": "B1", "unixReviewTime": 5, "overall": 4.0, "reviewText": "caf\xe9"}'),
           BadLineError, "Video_Games_5.json.gz", 2, "not valid UTF-8"),
    ingest("amazon-missing-user", "amazon", AMZ, amazon_reviews(json.dumps({"asin": "B1", "unixReviewTime": 5, "overall": 4})),
           BadLineError, "Video_Games_5.json.gz", 2, "missing field `reviewerID`"),
    ingest("amazon-non-numeric-rating", "amazon", AMZ, amazon_reviews(review("A2", "B1", overall="five")),
           BadLineError, "Video_Games_5.json.gz", 2, "non-numeric `overall`"),
    ingest("amazon-negative-timestamp", "amazon", AMZ, amazon_reviews(review("A2", "B1", time=-86400)),
           BadLineError, "Video_Games_5.json.gz", 2, "`unixReviewTime` is negative"),
    ingest("amazon-1e30-timestamp", "amazon", AMZ, amazon_reviews(review("A2", "B1", time=1e30)),
           BadLineError, "Video_Games_5.json.gz", 2, "out of range"),
    ingest("amazon-not-an-object", "amazon", AMZ, amazon_reviews("[1, 2]"),
           BadLineError, "Video_Games_5.json.gz", 2, "expected an object"),
    ingest("amazon-unpaired-surrogate", "amazon", AMZ, amazon_reviews(review("A2", "B1", summary="\ud800")),
           BadLineError, "Video_Games_5.json.gz", 2, "unpaired surrogate"),
    ingest("amazon-truncated-reviews-gz", "amazon", AMZ,
           {"Video_Games_5.json.gz": truncated_gz(lines(review("A1", "B1"), review("A2", "B2")))},
           DataError, "Video_Games_5.json.gz", None, "truncated or corrupt"),
    ingest("amazon-truncated-meta-gz", "amazon", AMZ,
           {"meta_Video_Games.json.gz": truncated_gz(lines(json.dumps({"asin": "B1", "title": "One"})))},
           DataError, "meta_Video_Games.json.gz", None, "truncated or corrupt"),
    ingest("amazon-2014-meta-code-not-a-literal", "amazon", AMZ14,
           {"meta_Video_Games.json.gz": gz(lines(repr({"asin": "B1"}), "{'asin': 'B2', 'title': __import__('os').name}"))},
           BadLineError, "meta_Video_Games.json.gz", 2, "invalid Python literal", version=2014),
    ingest("amazon-missing-reviews", "amazon", AMZ, {"Video_Games_5.json.gz": None},
           MissingFilesError, "Video_Games_5.json.gz", None, "missing"),
    # LC-Rec
    ingest("lcrec-invalid-json", "lcrec", LC, {"Office.inter.json": b'{\n "0": [1, 2],\n "1": [2,, 3]\n}'},
           DataError, "Office.inter.json", 3, "invalid JSON"),
    ingest("lcrec-not-an-object", "lcrec", LC, {"Office.inter.json": b"[[1, 2]]"},
           DataError, "Office.inter.json", None, "expected one JSON object"),
    ingest("lcrec-history-not-indices", "lcrec", LC, {"Office.inter.json": b'{\n "0": [1, 2],\n "1": [2, "x"]\n}'},
           BadLineError, "Office.inter.json", 3, "expected a non-empty list of item indices"),
    ingest("lcrec-invalid-utf8", "lcrec", LC, {"Office.inter.json": b'{\n "0": [1, 2],\n "\xff": [2]\n}'},
           DataError, "Office.inter.json", 3, "not valid UTF-8"),
    ingest("lcrec-truncated-gz", "lcrec", LC, {"Office.inter.json": None,
                                              "Office.inter.json.gz": truncated_gz(LC()["Office.inter.json"])},
           DataError, "Office.inter.json.gz", None, "truncated or corrupt"),
    ingest("lcrec-item-field-not-text", "lcrec", LC, {"Office.item.json": b'{\n "1": {"title": "One"},\n "2": {"title": 7}\n}'},
           BadLineError, "Office.item.json", 3, "must be a string"),
    # UniSRec
    ingest("unisrec-bad-header", "unisrec", UNI, {"Office.train.inter": lines("user\thistory\ttarget", "0\t1 2\t3")},
           DataError, "Office.train.inter", 1, "expected a header"),
    ingest("unisrec-wrong-field-count", "unisrec", UNI, {"Office.valid.inter": lines(rf.UNISREC_HEADER, "0\t1 2 3")},
           BadLineError, "Office.valid.inter", 2, "expected 3 tab-separated fields"),
    ingest("unisrec-non-integer-index", "unisrec", UNI, {"Office.test.inter": lines(rf.UNISREC_HEADER, "0\t1 2 3 4\tfive")},
           BadLineError, "Office.test.inter", 2, "not an integer index"),
    ingest("unisrec-history-mismatch", "unisrec", UNI, {"Office.valid.inter": lines(rf.UNISREC_HEADER, "0\t1 3\t4", "1\t2\t3")},
           BadLineError, "Office.valid.inter", 2, "item_id_list must be the last"),
    ingest("unisrec-truncated-gz", "unisrec", UNI, {"Office.train.inter": None,
                                                   "Office.train.inter.gz": truncated_gz(UNI()["Office.train.inter"])},
           DataError, "Office.train.inter.gz", None, "truncated or corrupt"),
    ingest("unisrec-missing-test", "unisrec", UNI, {"Office.test.inter": None},
           MissingFilesError, "Office.test.inter", None, "missing"),
]


@pytest.mark.parametrize("case", INGEST_CASES)
def test_ingest_refuses_bad_input_and_keeps_the_previous_output(tmp_path, case: Case):
    raw = rf.write(tmp_path / "raw", case.base())
    rf.write(raw, case.changes)
    out = rf.write(tmp_path / "interim", PREVIOUS)
    with pytest.raises(case.error) as info:
        run_ingest(rf.params(case.source, raw, version=case.version), out)
    _names_file_and_line(info.value, raw / case.file, case)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == PREVIOUS  # the previous output, intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["interim", "raw"]  # no temporary left


def _names_file_and_line(error: Exception, path: Path, case: Case) -> None:
    message = str(error)
    assert isinstance(error, DistillrecError)
    assert str(path) in message, message
    assert case.reason in message, message
    if case.line is not None:
        assert f"{path}:{case.line}" in message, message
    if isinstance(error, BadLineError):
        assert (error.path, error.lineno) == (str(path), case.line)


# ---------------------------------------------------------------------------------------- import rows

class _Opens:
    """Unpickling this would create a file: the weights_only loader must refuse it instead."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


def _rows(folder: Path, edit: Callable[[pl.DataFrame], pl.DataFrame]) -> None:
    edit(pl.read_csv(folder / "rows.csv")).write_csv(folder / "rows.csv")


def _replace_row(index: int, **values) -> Callable[[pl.DataFrame], pl.DataFrame]:
    def edit(rows: pl.DataFrame) -> pl.DataFrame:
        for column, value in values.items():
            rows = rows.with_columns(pl.when(pl.int_range(pl.len()) == index).then(pl.lit(value))
                                     .otherwise(pl.col(column).cast(type(value) if value is not None else pl.Int64))
                                     .alias(column))
        return rows
    return edit


def _save(tensor_or_object, path: Path) -> None:
    torch.save(tensor_or_object, path)


def _nan_embedding(folder: Path) -> None:
    embeddings = torch.load(folder / EMBEDDINGS, weights_only=True)
    embeddings[3, 1] = float("nan")
    torch.save(embeddings, folder / EMBEDDINGS)


def _raw_user_ids(folder: Path) -> None:
    """rows.csv with the raw user ids of the split (their tools know no user_idx), one unknown."""
    rows = pl.read_csv(folder / "rows.csv").join(pl.read_csv(folder / "users.csv", schema_overrides={
        "user_id": pl.String}), on="user_idx", how="left", maintain_order="left")
    users = rows["user_id"].to_list()
    users[3] = "nobody"
    pl.DataFrame({"user_id": users, "position": rows["position"]}).write_csv(folder / "rows.csv")


IMPORT_CASES = [
    imported("import-truncated-pt", lambda f: (f / EMBEDDINGS).write_bytes((f / EMBEDDINGS).read_bytes()[:200]),
             DataError, EMBEDDINGS, None, "truncated or corrupt"),
    imported("import-pickled-pt", lambda f: _save(_Opens(f / "executed"), f / EMBEDDINGS),
             DataError, EMBEDDINGS, None, "a pickle is never executed"),
    imported("import-1d-embeddings", lambda f: _save(torch.zeros(70), f / EMBEDDINGS),
             DataError, EMBEDDINGS, None, "expected a 2-D [items, dim] tensor, found shape (70,)"),
    imported("import-dict-not-tensor", lambda f: _save({"weight": torch.zeros(70, 4)}, f / EMBEDDINGS),
             DataError, EMBEDDINGS, None, "found dict"),
    imported("import-nan-embedding", _nan_embedding, DataError, EMBEDDINGS, None, "item id 3 (row 4 of"),
    imported("import-empty-rows-csv", lambda f: (f / "rows.csv").write_bytes(b""),
             DataError, "rows.csv", None, "cannot be read as a table"),
    imported("import-rows-csv-header-only", lambda f: (f / "rows.csv").write_text("user_idx,position\n"),
             DataError, "rows.csv", None, "has no rows"),
    imported("import-duplicate-key", lambda f: _rows(f, lambda r: pl.concat([r[:2], r[:1], r[3:]])),
             DataError, "rows.csv", 4, "duplicate key (user_idx, position) = "),
    imported("import-foreign-key", lambda f: _rows(f, _replace_row(1, position=0)),
             DataError, "rows.csv", 3, "is not an example of the split"),
    imported("import-unknown-user-id", _raw_user_ids, DataError, "rows.csv", 5, "user id 'nobody' is not in the split"),
    imported("import-non-integer-position", lambda f: _rows(f, _replace_row(2, position="two")),
             DataError, "rows.csv", 4, "position must be an integer"),
    imported("import-nan-distance", lambda f: (f / CONFIDENCE).write_text(
        "\n".join(["nan " + " ".join((f / CONFIDENCE).read_text().splitlines()[0].split()[1:])]
                  + (f / CONFIDENCE).read_text().splitlines()[1:]) + "\n"),
             DataError, CONFIDENCE, 1, "value 1 is nan"),
    imported("import-ranks-not-integers", lambda f: (f / RANKS).write_text("1 2 x 4\n"), DataError, RANKS, 1, "expected int"),
    imported("import-empty-ranks", lambda f: (f / RANKS).write_bytes(b""), DataError, RANKS, None, "the file is empty"),
]


def write_dllm2rec_folder(folder: Path, data: TeacherData, k: int = 4) -> None:
    """A valid DLLM2Rec teacher folder for every training example of the split."""
    rng = np.random.default_rng(0)
    train = data.split.examples.filter(pl.col("split") == "train").sort("user_idx", "position")
    folder.mkdir(parents=True)
    ranks = np.stack([rng.permutation(data.n_items)[:k] for _ in range(train.height)])  # their 0-based ids
    np.savetxt(folder / RANKS, ranks, fmt="%d")
    np.savetxt(folder / CONFIDENCE, np.sort(rng.random((train.height, k)) * 10, axis=1), fmt="%.6f")
    train.select("user_idx", "position").write_csv(folder / "rows.csv")
    torch.save(torch.randn(data.n_items, 4), folder / EMBEDDINGS)
    data.split.user_map.write_csv(folder / "users.csv")  # for rows that give raw user ids


@pytest.fixture(scope="module")
def teacher_data(small_split):
    return TeacherData.load(small_split)


def imports(folder: Path) -> Params:
    return Params(imports={"ext": ImportParams(format="dllm2rec", path=str(folder), rows="rows.csv")})


@pytest.mark.parametrize("case", IMPORT_CASES)
def test_import_teacher_refuses_bad_files_naming_them(tmp_path, small_split, teacher_data, case: Case):
    folder = tmp_path / "dllm2rec"
    write_dllm2rec_folder(folder, teacher_data)
    case.corrupt(folder)
    with pytest.raises(case.error) as info:
        import_teacher(imports(folder), "ext", small_split, tmp_path / "export")
    _names_file_and_line(info.value, folder / case.file, case)
    assert not (tmp_path / "export").exists()
    assert not (folder / "executed").exists()  # the pickle was refused, never run


def test_the_valid_import_folder_imports(tmp_path, small_split, teacher_data):
    """The fixture the import rows corrupt is itself valid."""
    folder = tmp_path / "dllm2rec"
    write_dllm2rec_folder(folder, teacher_data)
    import_teacher(imports(folder), "ext", small_split, tmp_path / "export")
    assert (tmp_path / "export" / "teacher.json").is_file()


# ---------------------------------------------------------------------------------------- serving rows

N_ITEMS = 12


def write_student(folder: Path) -> None:
    """A small untrained SASRec saved the way training saves it."""
    params = StudentParams(hidden=8, layers=1, heads=1, max_length=6, dropout=0.0)
    torch.manual_seed(0)
    model = build_student(params, N_ITEMS)
    folder.parent.mkdir(parents=True, exist_ok=True)
    item_map = folder.parent / "item_map.parquet"
    pl.DataFrame({"item_idx": pl.Series(range(1, N_ITEMS + 1), dtype=pl.Int32),
                  "item_id": [f"i{k:02d}" for k in range(1, N_ITEMS + 1)],
                  "title": [f"Title {k}" for k in range(1, N_ITEMS + 1)]}).write_parquet(item_map)
    save_student(folder, model, {"student": params.model_dump(mode="json"), "n_items": N_ITEMS}, item_map)


def _edit_json(path: Path, edit: Callable[[dict], None]) -> None:
    meta = json.loads(path.read_text())
    edit(meta)
    path.write_text(json.dumps(meta))


SERVE_CASES = [
    serve("serve-truncated-model", lambda f: (f / "model.pt").write_bytes((f / "model.pt").read_bytes()[:300]),
          "model.pt", "truncated or corrupt"),
    serve("serve-pickled-model", lambda f: _save(_Opens(f / "executed"), f / "model.pt"),
          "model.pt", "a pickle is never executed"),
    serve("serve-tensor-not-weights", lambda f: _save(torch.zeros(3), f / "model.pt"), "model.pt", "expected a dict"),
    serve("serve-weights-of-another-model", lambda f: _edit_json(f / "student.json", lambda m: m.update(n_items=N_ITEMS + 5)),
          "model.pt", "does not match"),
    serve("serve-broken-student-json", lambda f: (f / "student.json").write_text('{"student": '),
          "student.json", "not a saved student's metadata"),
    serve("serve-student-json-without-params", lambda f: _edit_json(f / "student.json", lambda m: m.pop("student")),
          "student.json", "the key 'student' is missing"),
    serve("serve-student-json-bad-params", lambda f: _edit_json(f / "student.json", lambda m: m["student"].update(hidden=-1)),
          "student.json", "hidden"),
    serve("serve-corrupt-item-map", lambda f: (f / "item_map.parquet").write_bytes(b"PAR1 not really"),
          "item_map.parquet", "truncated or corrupt"),
    serve("serve-missing-model", lambda f: (f / "model.pt").unlink(), "model.pt", "is missing"),
]


@pytest.mark.parametrize("case", SERVE_CASES)
def test_recommend_exits_2_naming_the_broken_file(tmp_path, capsys, case: Case):
    folder = tmp_path / "student"
    write_student(folder)
    case.corrupt(folder)
    with pytest.raises(SystemExit) as info:
        cli_main(["recommend", "--model", str(folder), "--history", "i01,i02", "--k", "3"])
    err = capsys.readouterr().err
    assert info.value.code == 2
    assert err.startswith("error: ") and str(folder / case.file) in err and case.reason in err, err
    assert not (folder / "executed").exists()


def test_the_valid_student_serves(tmp_path, capsys):
    write_student(tmp_path / "student")
    cli_main(["recommend", "--model", str(tmp_path / "student"), "--history", "i01,i02", "--k", "3"])
    assert len(capsys.readouterr().out.strip().splitlines()) == 2 + 3  # header, labels, 3 items


def test_the_table_is_large_and_covers_every_kind():
    cases = [p.values[0] for p in INGEST_CASES + IMPORT_CASES + SERVE_CASES]
    assert len(cases) >= 40
    assert {c.source for c in cases if c.kind == "ingest"} == set(rf.NAMES)
