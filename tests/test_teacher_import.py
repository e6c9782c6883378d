"""Imported teachers (`imports.<name>`, stage import_teacher): DLLM2Rec/BIGRec files and Parquet in our
schema, validated against the split."""

import json
import os
import subprocess
import sys

import numpy as np
import polars as pl
import pytest
import torch
import yaml

from distillrec.errors import DataError
from distillrec.evaluate.evaluation import Evaluator
from distillrec.errors import ParamsError
from distillrec.params import EvaluateParams, ImportParams, Params, parse_params
from distillrec.teachers.data import TeacherData
from distillrec.teachers.export import ExportTables, TeacherExport, TopK, select_examples, write_export
from distillrec.teachers.imported import CONFIDENCE, EMBEDDINGS, RANKS, import_teacher, write_dllm2rec
from tests.conftest import REPO

INFO = {"parameters": 1, "trainable_parameters": 1, "size_mb": 0.0, "train_seconds": 0.0,
        "export": {"ms_per_example": 1.0, "ms_per_user": 1.0, "threads": 1}}


@pytest.fixture(scope="module")
def data(small_split):
    return TeacherData.load(small_split)


@pytest.fixture
def ours(tmp_path, data):
    """An export of ours: 5 listed items per example with distinct float scores, and item embeddings."""
    rng = np.random.default_rng(0)
    examples = select_examples(data.split.examples, "all")
    n = examples.height
    items = np.stack([rng.permutation(data.n_items)[:5] + 1 for _ in range(n)])
    scores = -np.sort(rng.random((n, 5)) * 30, axis=1).astype(np.float32)
    emb = rng.normal(size=(data.n_items, 6)).astype(np.float32)
    topk = TopK(examples["user_idx"].to_numpy(), examples["position"].to_numpy(), items, scores)
    write_export(tmp_path / "ours", ExportTables(topk, emb), data.split.examples, data.n_items, INFO)
    return TeacherExport(tmp_path / "ours")


def imported(path, fmt="dllm2rec", **extra) -> ImportParams:
    """`rows` and `item_ids` are file names inside `path`."""
    return ImportParams.model_validate({"format": fmt, "path": str(path), **extra})


def run_import(cfg, split, tmp_path, name="imported"):
    """What stage import_teacher@<name> runs."""
    meta = import_teacher(Params(imports={name: cfg}), name, split, tmp_path / name)
    assert meta["family"] == "import" and meta["parameters"] == 0 and meta["train_seconds"] == 0.0
    return TeacherExport(tmp_path / name)


def test_round_trip_our_export_to_dllm2rec_files_and_back_is_identical(tmp_path, small_split, data, ours):
    write_dllm2rec(ours, tmp_path / "dllm2rec")
    assert {p.name for p in (tmp_path / "dllm2rec").iterdir()} == {RANKS, CONFIDENCE, EMBEDDINGS, "rows.csv"}
    cfg = imported(tmp_path / "dllm2rec", rows="rows.csv")
    back = run_import(cfg, small_split, tmp_path)
    original = pl.read_parquet(ours.folder / "topk.parquet").filter(pl.col("split") == "train")
    assert pl.read_parquet(back.folder / "topk.parquet").equals(original)
    assert np.array_equal(back.item_embeddings(), ours.item_embeddings())
    assert back.info["score"].startswith("-(L2 distance)") and len(back.info["distance_quantiles_5_50_95"]) == 3
    evaluator = Evaluator(small_split, EvaluateParams(ks=[5], latency_repeats=2))
    evaluator.add_teacher("teacher-imported", back.folder)  # training rows only: metrics undefined, no error
    assert evaluator.table["teacher-imported"]["test"]["ndcg@5"] is None
    assert evaluator.rank_table()["teacher-imported"].null_count() == data.split.n_users


def test_parquet_import_revalidates_a_folder_in_our_schema(tmp_path, small_split, ours):
    back = run_import(imported(ours.folder, "parquet"), small_split, tmp_path)
    assert pl.read_parquet(back.folder / "topk.parquet").equals(pl.read_parquet(ours.folder / "topk.parquet"))


def test_raw_user_ids_and_an_item_id_map_are_translated(tmp_path, small_split, data, ours):
    folder = tmp_path / "dllm2rec"
    write_dllm2rec(ours, folder)
    rows = pl.read_csv(folder / "rows.csv").join(data.split.user_map, on="user_idx", maintain_order="left")
    rows.select("user_id", "position").write_csv(folder / "rows_raw.csv")
    # their ids reversed: their id j is our item N - j
    n = data.n_items
    ranks = np.loadtxt(folder / RANKS, dtype=int, ndmin=2)
    np.savetxt(folder / RANKS, (n - 1) - ranks, fmt="%d")
    torch.save(torch.as_tensor(ours.item_embeddings()[::-1].copy()), folder / EMBEDDINGS)
    item_map = data.split.item_map.sort("item_idx")
    pl.DataFrame({"id": np.arange(n)[::-1], "item_id": item_map["item_id"]}).write_csv(folder / "ids.csv")
    cfg = imported(folder, rows="rows_raw.csv", item_ids="ids.csv")
    back = run_import(cfg, small_split, tmp_path)
    original = pl.read_parquet(ours.folder / "topk.parquet").filter(pl.col("split") == "train")
    assert pl.read_parquet(back.folder / "topk.parquet").equals(original)
    assert np.array_equal(back.item_embeddings(), ours.item_embeddings())


@pytest.mark.parametrize("corrupt, message", [
    (lambda f: (f / "rows.csv").write_text("user_idx,position\n1,1\n"), "has 1 rows but"),
    (lambda f: f.joinpath(RANKS).write_text("999 1 2 3 4\n" + "\n".join(f.joinpath(RANKS).read_text().splitlines()[1:])),
     "myrank_train.txt:1: item id 999 is not an item"),
    (lambda f: f.joinpath(CONFIDENCE).write_text("nan 1 2 3 4\n" + "\n".join(
        f.joinpath(CONFIDENCE).read_text().splitlines()[1:])), "confidence_train.txt:1: value 1 is nan"),
    (lambda f: f.joinpath(RANKS).write_text("1 2 x 4 5\n"), "myrank_train.txt:1: expected int"),
    (lambda f: f.joinpath(CONFIDENCE).write_text("1 2\n"), "must describe the same rows"),
    (lambda f: (f / "rows.csv").write_text("user,pos\n" + "1,1\n" * (len(f.joinpath(RANKS).read_text().splitlines()))),
     "expected columns user_id"),
])
def test_import_errors_name_the_file_and_the_problem(tmp_path, small_split, ours, corrupt, message):
    folder = tmp_path / "dllm2rec"
    write_dllm2rec(ours, folder)
    corrupt(folder)
    with pytest.raises(DataError, match=message):
        run_import(imported(folder, rows="rows.csv"), small_split, tmp_path)
    assert not (tmp_path / "imported").exists()


def test_import_params_need_a_path_and_rows_inside_it():
    with pytest.raises(ValueError, match="format dllm2rec needs rows"):
        ImportParams.model_validate({"format": "dllm2rec", "path": "x"})
    with pytest.raises(ValueError, match="must be a file name inside `path`"):
        ImportParams.model_validate({"format": "dllm2rec", "path": "x", "rows": "../rows.csv"})


def test_an_unknown_import_name_is_a_params_error(small_split, tmp_path):
    params = parse_params({"teachers": {"t": {"family": "id"}}, "imports": {"ext": {"path": "x"}}})
    with pytest.raises(ParamsError, match="no import named 't' in params.yaml \\('t' is a trained teacher"):
        import_teacher(params, "t", small_split, tmp_path / "t")
    with pytest.raises(DataError, match="imports: path x is not a folder"):
        import_teacher(params, "ext", small_split, tmp_path / "ext")
    assert not (tmp_path / "ext").exists()


def test_the_import_stage_writes_data_teacher_and_evaluate_and_distill_find_it(tmp_path, small_split, data, ours):
    """`python stages/import_teacher.py <name>` as DVC runs it: paths relative to the repository root, the
    export under data/teacher/<name> with our export's training rows, found by name like a trained teacher."""
    write_dllm2rec(ours, tmp_path / "ext" / "bigrec")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "processed").symlink_to(small_split)
    raw = {"imports": {"bigrec": {"format": "dllm2rec", "path": "ext/bigrec", "rows": "rows.csv", "item_ids": None}},
           "distill": {"methods": ["prmkd"], "teachers": ["bigrec"]}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}  # this checkout's code, whatever is installed
    result = subprocess.run([sys.executable, str(REPO / "stages" / "import_teacher.py"), "bigrec"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    export = TeacherExport(tmp_path / "data" / "teacher" / "bigrec")
    original = pl.read_parquet(ours.folder / "topk.parquet").filter(pl.col("split") == "train")
    assert pl.read_parquet(export.folder / "topk.parquet").equals(original)
    assert np.array_equal(export.item_embeddings(), ours.item_embeddings())
    info = json.loads((export.folder / "teacher.json").read_text())
    assert info["name"] == "bigrec" and info["family"] == "import" and info["source"]["rows"] == "rows.csv"
    assert parse_params(raw).teacher_names == ["bigrec"]   # evaluate's rows and distill's teachers
    evaluator = Evaluator(small_split, EvaluateParams(ks=[5], latency_repeats=2))
    evaluator.add_teacher("teacher-bigrec", export.folder)
    assert evaluator.table["teacher-bigrec"]["cost"]["parameters"] == 0
