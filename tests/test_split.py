import json

import polars as pl
import pytest

from distillrec.data.schema import INTERACTIONS_SCHEMA, ITEMS_SCHEMA
from distillrec.data.split import k_core, run_split
from distillrec.errors import DataError
from distillrec.params import Params, SplitParams


def write_interim(root, rows, items=None):
    """rows: (user_id, item_id, timestamp[, rating]) in source order."""
    root.mkdir(parents=True, exist_ok=True)
    records = [dict(zip(("user_id", "item_id", "timestamp", "rating"), r)) for r in rows]
    pl.DataFrame(records, schema={k: INTERACTIONS_SCHEMA[k] for k in ("user_id", "item_id", "timestamp", "rating")}) \
        .with_columns(review_title=pl.lit(None, pl.String), review_text=pl.lit(None, pl.String)) \
        .write_parquet(root / "interactions.parquet")
    ids = sorted({r[1] for r in rows})
    items = items or [{"item_id": i, "title": f"title {i}", "description": None, "categories": [], "brand": None} for i in ids]
    pl.DataFrame(items, schema=ITEMS_SCHEMA).write_parquet(root / "items.parquet")
    return root


def split(tmp_path, rows, **cfg):
    interim = write_interim(tmp_path / "interim", rows)
    report = run_split(Params(split=SplitParams(**({"user_core": 0, "item_core": 0} | cfg))),
                       interim, tmp_path / "processed", tmp_path / "data.json")
    read = lambda name: pl.read_parquet(tmp_path / "processed" / f"{name}.parquet")  # noqa: E731
    return report, read


def test_leave_one_out_with_tie_break_by_source_order(tmp_path):
    rows = [("b", "x", 5), ("a", "z", 30), ("a", "x", 10), ("a", "y", 10), ("a", "w", 40), ("b", "y", 6), ("b", "z", 7)]
    report, read = split(tmp_path, rows)
    item_map, user_map = read("item_map"), read("user_map")
    assert item_map["item_id"].to_list() == ["w", "x", "y", "z"]  # sorted original ids → 1..N
    assert item_map["item_idx"].to_list() == [1, 2, 3, 4]
    assert user_map.rows() == [(1, "a"), (2, "b")]
    seq = read("sequences")
    # user a: x(10) then y(10) by source order, z(30), w(40)
    assert seq.filter(pl.col("user_idx") == 1)["items"].to_list() == [[2, 3, 4, 1]]
    ex = read("examples").filter(pl.col("user_idx") == 1).sort("position")
    assert ex.select("position", "split", "item_idx").rows() == [(1, "train", 3), (2, "valid", 4), (3, "test", 1)]
    assert report["raw"] == {"users": 2, "items": 4, "interactions": 7}


def test_split_invariants_on_synthetic(small_split):
    seq = pl.read_parquet(small_split / "sequences.parquet")
    ex = pl.read_parquet(small_split / "examples.parquet")
    item_map = pl.read_parquet(small_split / "item_map.parquet")
    user_map = pl.read_parquet(small_split / "user_map.parquet")
    n_items = item_map.height
    # maps are bijective, dense, 1-based (0 = padding never used)
    assert item_map["item_idx"].to_list() == list(range(1, n_items + 1))
    assert item_map["item_id"].n_unique() == n_items and item_map["item_id"].is_sorted()
    assert user_map["user_idx"].to_list() == list(range(1, user_map.height + 1))
    items = seq["items"].explode(empty_as_null=False)
    assert items.min() >= 1 and items.max() == n_items and items.n_unique() == n_items
    # per user: keys unique, test = latest, valid = second latest, train strictly earlier
    assert ex.select("user_idx", "position").is_duplicated().sum() == 0
    timed = ex.join(seq.explode("items", "timestamps", empty_as_null=False).with_columns(
        position=pl.int_range(pl.len()).over("user_idx").cast(pl.Int32)), on=["user_idx", "position"])
    assert (timed["items"] == timed["item_idx"]).all()  # examples reconstruct from sequences
    per_user = timed.group_by("user_idx").agg(
        test_pos=pl.col("position").filter(pl.col("split") == "test").first(),
        valid_pos=pl.col("position").filter(pl.col("split") == "valid").first(),
        last=pl.col("position").max(),
        train_max_ts=pl.col("timestamps").filter(pl.col("split") == "train").max(),
        valid_ts=pl.col("timestamps").filter(pl.col("split") == "valid").first(),
        test_ts=pl.col("timestamps").filter(pl.col("split") == "test").first(),
    )
    assert (per_user["test_pos"] == per_user["last"]).all()
    assert (per_user["valid_pos"] == per_user["last"] - 1).all()
    assert (per_user["train_max_ts"] <= per_user["valid_ts"]).all()
    assert (per_user["valid_ts"] <= per_user["test_ts"]).all()
    assert ex.filter(pl.col("split") == "test").height == seq.height
    assert seq["items"].list.len().min() >= 3


def test_k_core_is_iterative_and_reports_rounds(tmp_path):
    # q has 2 interactions → dropped; then user c has 1 < 3 → dropped; then r has 2 < 3 → dropped
    rows = [("a", "p", 1), ("a", "s", 2), ("a", "r", 3), ("a", "p", 4),
            ("b", "p", 1), ("b", "s", 2), ("b", "r", 3), ("b", "s", 4),
            ("c", "q", 1), ("c", "r", 2), ("c", "q", 3),
            ("d", "p", 1), ("d", "s", 2), ("d", "p", 3)]
    report, read = split(tmp_path, rows, item_core=3, user_core=3)
    rounds = report["k_core_rounds"]
    assert [r["interactions"] for r in rounds] == [12, 11, 9, 9]
    assert read("item_map")["item_id"].to_list() == ["p", "s"]
    assert read("user_map")["user_id"].to_list() == ["a", "b", "d"]
    # the stand-alone function agrees with the report
    frame = pl.DataFrame({"user": [1, 1, 1, 2], "item": [1, 2, 3, 1], "timestamp": [1, 2, 3, 4], "order": [0, 1, 2, 3]})
    kept, _ = k_core(frame, 3, 1)
    assert kept["user"].to_list() == [1, 1, 1]


def test_filters_min_rating_and_consecutive_duplicates(tmp_path):
    rows = [("a", "x", 1, 5.0), ("a", "x", 2, 5.0), ("a", "y", 3, 1.0), ("a", "z", 4, 4.0),
            ("a", "w", 5, 4.0), ("a", "v", 6, None)]
    report, read = split(tmp_path, rows, min_rating=4.0, drop_consecutive_duplicates=True)
    assert report["dropped"] == {"below_min_rating_or_unrated": 2, "consecutive_duplicates": 1}
    ids = read("item_map")["item_id"].to_list()
    assert [ids[i - 1] for i in read("sequences")["items"][0]] == ["x", "z", "w"]


def test_short_users_are_dropped_and_metrics_written(tmp_path):
    rows = [("a", "x", 1), ("a", "y", 2), ("a", "z", 3), ("b", "x", 1), ("b", "y", 2)]
    report, read = split(tmp_path, rows)
    assert read("user_map")["user_id"].to_list() == ["a"]
    metrics = json.loads((tmp_path / "data.json").read_text())
    assert metrics["raw"] == {"users": 2, "items": 3, "interactions": 5}
    assert metrics["filtered"]["users"] == 1 and metrics["filtered"]["interactions"] == 3
    assert metrics["filtered"]["density"] == pytest.approx(1.0)
    assert metrics["sequence_length"] == {"mean": 3.0, "median": 3.0, "min": 3, "max": 3}
    assert metrics["examples"] == {"train": 0, "valid": 1, "test": 1}  # position 0 has no history


def test_empty_after_filtering_is_an_error_and_keeps_previous_output(tmp_path):
    split(tmp_path, [("a", "x", 1), ("a", "y", 2), ("a", "z", 3)])
    before = (tmp_path / "processed" / "sequences.parquet").read_bytes()
    with pytest.raises(DataError, match="no interactions left after filtering"):
        split(tmp_path, [("a", "x", 1), ("a", "y", 2), ("a", "z", 3)], item_core=2)
    assert (tmp_path / "processed" / "sequences.parquet").read_bytes() == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_same_params_identical_bytes(tmp_path, small_split):
    from tests.conftest import small_params
    params = small_params()
    run_split(params, small_split.parent / "interim", tmp_path / "again", tmp_path / "data.json")
    for name in ("sequences", "examples", "item_map", "user_map"):
        assert (tmp_path / "again" / f"{name}.parquet").read_bytes() == (small_split / f"{name}.parquet").read_bytes()
