"""The canonical ingest schema: the one contract between every raw source and `split`."""

from __future__ import annotations

import polars as pl

INTERACTIONS_SCHEMA: dict[str, pl.DataType] = {
    "user_id": pl.String(),
    "item_id": pl.String(),
    "timestamp": pl.Int64(),
    "rating": pl.Float32(),
    "review_title": pl.String(),
    "review_text": pl.String(),
}

ITEMS_SCHEMA: dict[str, pl.DataType] = {
    "item_id": pl.String(),
    "title": pl.String(),
    "description": pl.String(),
    "categories": pl.List(pl.String()),
    "brand": pl.String(),
}


def conform(frame: pl.LazyFrame, schema: dict[str, pl.DataType]) -> pl.LazyFrame:
    """Select the schema's columns in order, cast them, and add absent ones as nulls."""
    present = set(frame.collect_schema().names())
    columns = [
        pl.col(name).cast(dtype) if name in present else pl.lit(None, dtype=dtype).alias(name)
        for name, dtype in schema.items()
    ]
    return frame.select(columns)
