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
