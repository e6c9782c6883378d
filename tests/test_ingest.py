import json
from collections import Counter

import polars as pl
import pytest

from distillrec.data import ingest
from distillrec.data.schema import INTERACTIONS_SCHEMA, ITEMS_SCHEMA
from distillrec.data.sources.base import RawData
from distillrec.errors import BadLineError, DataError
from tests.conftest import small_params


def test_canonical_schema_and_manifest(tmp_path):
    manifest = ingest.run_ingest(small_params(), tmp_path / "interim")
    inter = pl.read_parquet(tmp_path / "interim" / "interactions.parquet")
    items = pl.read_parquet(tmp_path / "interim" / "items.parquet")
    assert dict(inter.schema) == INTERACTIONS_SCHEMA
    assert dict(items.schema) == ITEMS_SCHEMA
    assert set(items["item_id"]) == set(inter["item_id"]) and items["item_id"].is_sorted()
    on_disk = json.loads((tmp_path / "interim" / "manifest.json").read_text())
    assert on_disk == manifest
    assert manifest["interactions"] == inter.height and manifest["items"] == items.height
    assert manifest["users"] == 120 and manifest["dataset"]["source"] == "synthetic"


def test_identical_params_identical_bytes(tmp_path):
    for name in ("a", "b"):
        ingest.run_ingest(small_params(), tmp_path / name)
    for file in ("interactions.parquet", "items.parquet", "manifest.json"):
        assert (tmp_path / "a" / file).read_bytes() == (tmp_path / "b" / file).read_bytes()


def _fake_source(monkeypatch, interactions=None, items=None, error=None):
    def load(dataset, ingest_params, workdir):
        if error:
            raise error
        return RawData(interactions=pl.LazyFrame(interactions), items=pl.LazyFrame(items or {"item_id": []}),
                       files=[], file_rows={"fake": 3}, dropped=Counter({"bad_line:fake": 2}))
    monkeypatch.setattr(ingest, "load_source", load)


def test_rows_without_keys_and_items_without_metadata(tmp_path, monkeypatch):
    _fake_source(monkeypatch,
                 interactions={"user_id": ["u1", "u1", None], "item_id": ["a", "b", "a"], "timestamp": [1, 2, 3]},
                 items={"item_id": ["a", "a", "zz"], "title": ["first", "second", "unused"]})
    manifest = ingest.run_ingest(small_params(), tmp_path / "out")
    items = pl.read_parquet(tmp_path / "out" / "items.parquet")
    assert items.rows() == [("a", "first", None, None, None), ("b", None, None, None, None)]
    assert manifest["dropped"] == {"bad_line:fake": 2, "missing_user_item_or_timestamp": 1}
    assert manifest["items_without_title"] == 1 and manifest["metadata_items_without_interactions"] == 1


def test_failure_keeps_previous_output_and_leaves_no_temporaries(tmp_path, monkeypatch):
    ingest.run_ingest(small_params(), tmp_path / "interim")
    before = (tmp_path / "interim" / "interactions.parquet").read_bytes()
    _fake_source(monkeypatch, error=BadLineError(tmp_path / "x.csv", 7, "1,2", "wrong field count"))
    with pytest.raises(BadLineError, match=r"x.csv:7: wrong field count"):
        ingest.run_ingest(small_params(), tmp_path / "interim")
    assert (tmp_path / "interim" / "interactions.parquet").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["interim"]


def test_empty_dataset_is_an_error(tmp_path, monkeypatch):
    _fake_source(monkeypatch, interactions={"user_id": [], "item_id": [], "timestamp": []})
    with pytest.raises(DataError, match="yielded no interactions"):
        ingest.run_ingest(small_params(), tmp_path / "out")
    assert not (tmp_path / "out").exists()
