"""Shared fixtures: a tiny ingested+split synthetic dataset and the optional ../shared folder."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from distillrec.data.ingest import run_ingest
from distillrec.data.split import run_split
from distillrec.params import DatasetParams, Params, SyntheticParams

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    """Tests use tiny models that gain nothing from threads, and a second thread stalls on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def shared() -> Path:
    if not (SHARED / "data").is_dir():
        pytest.skip(f"{SHARED} is absent: real-data tests need the shared reference folder")
    return SHARED


def small_params(**synthetic) -> Params:
    # successors=1: the next item's group narrows to the previous item's brand, a sequential signal
    # strong enough for tests that check that a model learns it from 120 users
    cfg = dict(n_users=120, n_items=60, n_clusters=4, min_length=6, max_length=20, successors=1) | synthetic
    return Params(dataset=DatasetParams(synthetic=SyntheticParams(**cfg)))


@pytest.fixture(scope="session")
def small_split(tmp_path_factory) -> Path:
    """data/processed of a small synthetic dataset, built once per test session."""
    root = tmp_path_factory.mktemp("small")
    params = small_params()
    run_ingest(params, root / "interim")
    run_split(params, root / "interim", root / "processed", root / "data.json")
    return root / "processed"


def make_release(folder: Path, n_items: int = 40, max_length: int = 8, seed: int = 0) -> Path:
    """A small release folder (random SASRec with folded item offsets, titles, ONNX) written by the
    release stage's own writers, without running the pipeline."""
    import polars as pl

    from distillrec.params import StudentParams
    from distillrec.serving.artifact import export_onnx, write_model
    from distillrec.students import build_student
    from distillrec.students.base import ItemOffsets

    torch.manual_seed(seed)
    architecture = StudentParams(model="sasrec", hidden=16, layers=1, heads=2, dropout=0.1, max_length=max_length)
    model = build_student(architecture, n_items)
    model.item_adapter = ItemOffsets(0.1 * torch.randn(n_items + 1, 16))
    model.eval()
    folder.mkdir(parents=True, exist_ok=True)
    write_model(folder, model, architecture.model_dump(), {"row": "dllm2rec", "method": "dllm2rec", "seed": seed,
                                                            "serve": Params().serve.model_dump()})
    pl.DataFrame({"item_idx": range(1, n_items + 1), "item_id": [f"i{i:03d}" for i in range(1, n_items + 1)],
                  "title": [f"{('red', 'blue', 'green')[i % 3]} item number {i}" for i in range(1, n_items + 1)]},
                 schema={"item_idx": pl.Int32, "item_id": pl.String, "title": pl.String}
                 ).write_parquet(folder / "item_map.parquet")
    export_onnx(model, max_length, folder / "model.onnx")
    return folder


@pytest.fixture(scope="session")
def release_dir(tmp_path_factory) -> Path:
    """A small release folder with a teacher/ beside the student (another random SASRec), built once."""
    folder = make_release(tmp_path_factory.mktemp("release") / "release")
    make_release(folder / "teacher", seed=1)
    return folder
