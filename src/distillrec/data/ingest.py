"""Stage `ingest`: any raw source → canonical interactions/items Parquet + manifest.

Interactions are streamed (`sink_parquet`) so a category of ~10M reviews stays in bounded memory;
items are restricted to those that occur in interactions, sorted by id for stable bytes.

Exact duplicate rows (every column equal to an earlier row's) are kept, since no param asks to drop
them, but counted in the manifest (`duplicates`) and warned about: they usually mean a file was
concatenated twice or a crawl repeated itself.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

import polars as pl

from distillrec.data.schema import INTERACTIONS_SCHEMA, ITEMS_SCHEMA, conform
from distillrec.data.sources import load_source
from distillrec.data.sources.base import RawData
from distillrec.errors import DataError
from distillrec.io import atomic_dir, sha256_file, write_json
from distillrec.params import Params

log = logging.getLogger(__name__)
KEY_COLUMNS = ("user_id", "item_id", "timestamp")


def _write_interactions(raw: RawData, out: Path) -> int:
    """Stream to Parquet, dropping rows without a key column; returns how many were dropped."""
    frame = conform(raw.interactions, INTERACTIONS_SCHEMA)
    incomplete = pl.any_horizontal(pl.col(*KEY_COLUMNS).is_null())
    n_incomplete = frame.filter(incomplete).select(pl.len()).collect().item()
    frame.filter(~incomplete).sink_parquet(out)
    return n_incomplete


def _count_duplicates(interactions: Path) -> int:
    """Rows equal in every column to an earlier row, exactly: hashes find candidates in bounded
    memory, and only rows whose hash repeats are compared in full."""
    frame = pl.scan_parquet(interactions)
    row_hash = pl.struct(pl.all()).hash().alias("_hash")
    repeated = (frame.select(row_hash).group_by("_hash").len().filter(pl.col("len") > 1)
                .select("_hash").collect(engine="streaming"))
    if repeated.height == 0:
        return 0
    candidates = frame.with_columns(row_hash).join(repeated.lazy(), on="_hash", how="semi").drop("_hash")
    rows = candidates.select(pl.len()).collect().item()
    return rows - candidates.unique().select(pl.len()).collect().item()


def _write_items(raw: RawData, interactions: Path, out: Path) -> dict[str, int]:
    """Every interacted item gets exactly one row: first metadata row wins, null text if none."""
    used = pl.scan_parquet(interactions).select("item_id").unique()
    meta = (conform(raw.items, ITEMS_SCHEMA).filter(pl.col("item_id").is_not_null())
            .unique("item_id", keep="first", maintain_order=True).collect())
    table = used.join(meta.lazy(), on="item_id", how="left").sort("item_id").collect()
    table.select(list(ITEMS_SCHEMA)).write_parquet(out)
    return {
        "items": table.height,
        "items_without_title": int(table["title"].is_null().sum()),
        "metadata_items_without_interactions": meta.height - int(
            table["item_id"].is_in(meta["item_id"].implode()).sum()),
    }


def _file_entries(raw: RawData) -> list[dict[str, Any]]:
    return [{"path": str(path), "sha256": sha256_file(path), "bytes": path.stat().st_size,
             "rows": raw.file_rows.get(path.name)} for path in raw.files]


def run_ingest(params: Params, out_dir: Path | str) -> dict[str, Any]:
    """Ingest `params.dataset` into `out_dir` atomically; returns the manifest."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with atomic_dir(out_dir) as tmp, tempfile.TemporaryDirectory(dir=out_dir.parent) as work:
        raw = load_source(params.dataset, params.ingest, Path(work))
        n_incomplete = _write_interactions(raw, tmp / "interactions.parquet")
        stats = pl.scan_parquet(tmp / "interactions.parquet").select(
            interactions=pl.len(), users=pl.col("user_id").n_unique()
        ).collect().row(0, named=True)
        if stats["interactions"] == 0:
            read = ", ".join(str(path) for path in raw.files) or str(params.dataset.raw_dir)
            raise DataError(f"dataset '{params.dataset.name}' ({params.dataset.source}) yielded no "
                            f"interactions from {read}")
        counts = _write_items(raw, tmp / "interactions.parquet", tmp / "items.parquet")
        duplicates = _count_duplicates(tmp / "interactions.parquet")
        if duplicates:
            log.warning("%d interaction rows repeat an earlier row exactly (same user, item, timestamp, rating "
                        "and review); they are kept and counted as `duplicates` in the manifest", duplicates)
        dropped = dict(raw.dropped)
        if n_incomplete:
            dropped["missing_user_item_or_timestamp"] = n_incomplete
        manifest = {
            "dataset": params.dataset.model_dump(mode="json"),
            "files": _file_entries(raw),
            "rows_read": raw.file_rows,
            "dropped": dropped,
            "duplicates": duplicates,
            **stats,
            **counts,
        }
        write_json(tmp / "manifest.json", manifest)
    log.info("ingested %d interactions, %d users, %d items into %s",
             stats["interactions"], stats["users"], counts["items"], out_dir)
    return manifest
