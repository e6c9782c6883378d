"""Stage `split`: filtering, iterative k-core, chronological leave-one-out, integer id maps.

Ids: items and users are numbered 1.. in ascending order of their original string id (0 is
padding), so the maps depend only on which ids survive filtering, never on file order or hashing.
Within a user, interactions are ordered by timestamp, ties broken by source order.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import polars as pl

from distillrec.errors import DataError
from distillrec.io import atomic_dir, write_json
from distillrec.params import Params, SplitParams

log = logging.getLogger(__name__)
MIN_SEQUENCE = 3  # a history item, a validation and a test target at least
SPLITS = ("train", "valid", "test")


def _counts(frame: pl.DataFrame) -> dict[str, int]:
    return {"users": frame["user"].n_unique(), "items": frame["item"].n_unique(),
            "interactions": frame.height}


def _read(interim: Path, cfg: SplitParams) -> tuple[pl.DataFrame, dict[str, int]]:
    """Interactions as dense integer codes, ordered by (user, timestamp, source order).

    Codes are ranks of the string ids over the whole ingested file (before any filter), so
    `_maps` can translate them back with one sorted unique pass.
    """
    frame = pl.scan_parquet(interim / "interactions.parquet").with_row_index("order").with_columns(
        pl.col("user_id").rank("dense").cast(pl.Int64).alias("user"),
        pl.col("item_id").rank("dense").cast(pl.Int64).alias("item"),
    )
    dropped: dict[str, int] = {}
    if cfg.min_rating is not None:
        keep = (pl.col("rating") >= cfg.min_rating).fill_null(False)
        dropped["below_min_rating_or_unrated"] = frame.filter(~keep).select(pl.len()).collect().item()
        frame = frame.filter(keep)
    frame = frame.select("user", "item", "timestamp", "order").sort("user", "timestamp", "order").collect()
    if cfg.drop_consecutive_duplicates:
        repeat = ((pl.col("user") == pl.col("user").shift(1))
                  & (pl.col("item") == pl.col("item").shift(1))).fill_null(False)
        dropped["consecutive_duplicates"] = int(frame.select(repeat.sum()).item())
        frame = frame.filter(~repeat)
    return frame, dropped


def _raw_counts(interim: Path) -> dict[str, int]:
    return pl.scan_parquet(interim / "interactions.parquet").select(
        users=pl.col("user_id").n_unique(), items=pl.col("item_id").n_unique(), interactions=pl.len()
    ).collect().row(0, named=True)


def k_core(frame: pl.DataFrame, user_min: int, item_min: int) -> tuple[pl.DataFrame, list[dict[str, int]]]:
    """Drop users/items below their minimum until none is; returns each round's counts."""
    rounds = []
    while True:
        keep = (pl.len().over("user") >= user_min) & (pl.len().over("item") >= item_min)
        filtered = frame.filter(keep)
        rounds.append(_counts(filtered))
        if filtered.height == frame.height:
            return filtered, rounds
        frame = filtered


def _renumber(frame: pl.DataFrame) -> pl.DataFrame:
    """Final 1-based indices in ascending order of the original ids' codes."""
    return frame.with_columns(
        pl.col("user").rank("dense").cast(pl.Int32).alias("user_idx"),
        pl.col("item").rank("dense").cast(pl.Int32).alias("item_idx"),
    )


def _maps(interim: Path, frame: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    raw = pl.scan_parquet(interim / "interactions.parquet")
    users = raw.select("user_id").unique().sort("user_id").with_row_index("user", offset=1)
    items = raw.select("item_id").unique().sort("item_id").with_row_index("item", offset=1)
    kept_users = frame.select("user", "user_idx").unique().lazy()
    kept_items = frame.select("item", "item_idx").unique().lazy()
    user_map = (kept_users.join(users.with_columns(pl.col("user").cast(pl.Int64)), on="user")
                .select("user_idx", "user_id").sort("user_idx").collect())
    item_text = pl.scan_parquet(interim / "items.parquet")
    item_map = (kept_items.join(items.with_columns(pl.col("item").cast(pl.Int64)), on="item")
                .join(item_text, on="item_id", how="left")
                .drop("item").sort("item_idx").collect())
    return user_map, item_map


def _sequences(frame: pl.DataFrame) -> pl.DataFrame:
    return (frame.group_by("user_idx", maintain_order=True)
            .agg(pl.col("item_idx").alias("items"), pl.col("timestamp").alias("timestamps"))
            .sort("user_idx"))


def _examples(frame: pl.DataFrame) -> pl.DataFrame:
    """One row per target: positions 1..n-3 train, n-2 valid, n-1 test (0-based positions)."""
    position = pl.int_range(pl.len()).over("user_idx").cast(pl.Int32)
    n = pl.len().over("user_idx").cast(pl.Int32)
    split = (pl.when(position == n - 1).then(pl.lit("test"))
             .when(position == n - 2).then(pl.lit("valid")).otherwise(pl.lit("train")))
    return (frame.select("user_idx", position.alias("position"), split.alias("split"), "item_idx")
            .filter(pl.col("position") >= 1)
            .with_columns(pl.col("split").cast(pl.Enum(SPLITS))))


def _reviews(interim: Path, frame: pl.DataFrame) -> pl.DataFrame:
    """Review text of every kept interaction that has some, keyed like the examples."""
    position = pl.int_range(pl.len()).over("user_idx").cast(pl.Int32)
    keys = frame.select("user_idx", position.alias("position"), "item_idx", "order").lazy()
    text = (pl.scan_parquet(interim / "interactions.parquet").with_row_index("order")
            .select(pl.col("order").cast(pl.Int64), "review_title", "review_text")
            .filter(pl.col("review_title").is_not_null() | pl.col("review_text").is_not_null()))
    return (keys.with_columns(pl.col("order").cast(pl.Int64)).join(text, on="order")
            .drop("order").sort("user_idx", "position").collect())


def data_metrics(raw: dict[str, int], sequences: pl.DataFrame, examples: pl.DataFrame) -> dict[str, Any]:
    lengths = sequences["items"].list.len()
    users, items = sequences.height, sequences["items"].explode(empty_as_null=False).n_unique()
    interactions = int(lengths.sum())
    return {
        "raw": raw,
        "filtered": {"users": users, "items": items, "interactions": interactions,
                     "density": interactions / (users * items)},
        "sequence_length": {"mean": float(lengths.mean()), "median": float(lengths.median()),
                            "min": int(lengths.min()), "max": int(lengths.max())},
        "examples": {split: int((examples["split"] == split).sum()) for split in SPLITS},
    }


def run_split(params: Params, interim_dir: Path | str, out_dir: Path | str,
              metrics_path: Path | str) -> dict[str, Any]:
    """Split `interim_dir` into `out_dir` atomically; writes data metrics; returns the report."""
    interim, cfg = Path(interim_dir), params.split
    frame, dropped = _read(interim, cfg)
    raw = _raw_counts(interim)
    user_min = max(cfg.user_core, MIN_SEQUENCE)
    frame, rounds = k_core(frame, user_min, cfg.item_core)
    if frame.height == 0:
        raise DataError(
            f"no interactions left after filtering {interim}/interactions.parquet "
            f"(min_rating={cfg.min_rating}, user_core={cfg.user_core}, item_core={cfg.item_core}, "
            f"users need >= {MIN_SEQUENCE} interactions); k-core rounds: {rounds}"
        )
    frame = _renumber(frame)
    user_map, item_map = _maps(interim, frame)
    sequences, examples = _sequences(frame), _examples(frame)
    metrics = data_metrics(raw, sequences, examples)
    report = {"filters": cfg.model_dump(mode="json"), "user_min_effective": user_min,
              "dropped": dropped, "k_core_rounds": rounds, **metrics}
    with atomic_dir(out_dir) as tmp:
        sequences.write_parquet(tmp / "sequences.parquet")
        examples.write_parquet(tmp / "examples.parquet")
        user_map.write_parquet(tmp / "user_map.parquet")
        item_map.write_parquet(tmp / "item_map.parquet")
        _reviews(interim, frame).write_parquet(tmp / "reviews.parquet")
        write_json(tmp / "split_report.json", report)
    write_json(metrics_path, metrics)
    log.info("split: %d users, %d items, %d interactions (k-core rounds: %d)",
             metrics["filtered"]["users"], metrics["filtered"]["items"],
             metrics["filtered"]["interactions"], len(rounds))
    return report
