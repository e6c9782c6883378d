"""The data of dvc.yaml's top-level plots, long format (a `row` column): one file per chart, so
DVC's `rows` template draws every row on one chart instead of one chart per file or metric.

* ndcg_at_k.csv: row, k, ndcg (test, every row);
* gains.csv: row, metric, gain, ci_low, ci_high (percent over the baseline, rows that have one);
* valid_curves.csv: row, epoch, value (the validation curve of each student, from dvclive).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import polars as pl

from distillrec.io import atomic_dir


def _ndcg_at_k(table: dict[str, Any], ks: list[int]) -> pl.DataFrame:
    return pl.DataFrame([{"row": name, "k": k, "ndcg": row["test"][f"ndcg@{k}"]}
                         for name, row in table.items() for k in ks],
                        schema={"row": pl.String, "k": pl.Int64, "ndcg": pl.Float64})


def _percent(value: float | None) -> float | None:
    return None if value is None else 100 * value


def _gains(table: dict[str, Any], metric: str | None) -> pl.DataFrame:
    rows = [(name, row["vs_baseline"]) for name, row in table.items()
            if (row.get("vs_baseline") or {}).get("gain") is not None]
    return pl.DataFrame([{"row": name, "metric": metric, "gain": _percent(v["gain"]),
                          "ci_low": _percent(v.get("ci_low")), "ci_high": _percent(v.get("ci_high"))}
                         for name, v in rows],
                        schema={"row": pl.String, "metric": pl.String, "gain": pl.Float64,
                                "ci_low": pl.Float64, "ci_high": pl.Float64})


def valid_curves(curve_files: dict[str, Path]) -> pl.DataFrame:
    """row, epoch and the validation metric (its column named for it) of each student's dvclive
    curve, read once for curves.png and valid_curves.csv; absent files are skipped. dvclive logs
    epoch 1 as step 0 (the training log counts from 1)."""
    frames = []
    for name, tsv in curve_files.items():
        if Path(tsv).is_file():
            frame = pl.read_csv(tsv, separator="\t")
            frames.append(frame.select(pl.lit(name).alias("row"), (pl.col("step") + 1).cast(pl.Int64).alias("epoch"),
                                       pl.col(frame.columns[-1]).cast(pl.Float64)))
    return pl.concat(frames) if frames else pl.DataFrame(
        schema={"row": pl.String, "epoch": pl.Int64, "value": pl.Float64})


def write_plot_data(plots_dir: Path, table: dict[str, Any], ks: list[int], metric: str | None,
                    curves: pl.DataFrame) -> None:
    """Replace `plots_dir` with the three CSVs; rows in `table` (and `curves`, from `valid_curves`)
    order. `metric`: the compare metric the gains are on (None: no row has a gain)."""
    with atomic_dir(plots_dir) as tmp:
        _ndcg_at_k(table, ks).write_csv(tmp / "ndcg_at_k.csv")
        _gains(table, metric).write_csv(tmp / "gains.csv")
        curves.rename({curves.columns[-1]: "value"}).write_csv(tmp / "valid_curves.csv")
