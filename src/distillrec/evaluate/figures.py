"""Static pictures of a run (PNG, matplotlib's Agg backend): they open offline, unlike the page
`dvc plots show` writes, which loads its JavaScript from a CDN.

* ndcg_at_k.png: test NDCG@K of every row;
* gain.png: each row's gain over the baseline on the compare metric, with its 95 % interval;
* buckets.png: the compare metric on tail vs head items and short vs long histories;
* curves.png: the validation metric per epoch of every student (first seed), from dvclive.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend is chosen before pyplot loads)
import polars as pl  # noqa: E402

from distillrec.evaluate.buckets import BucketReport  # noqa: E402
from distillrec.evaluate.headline import row_label  # noqa: E402

PNG = {"dpi": 110, "metadata": {"Software": None}}  # no version stamp: identical bytes for identical data


def _save(fig: plt.Figure, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, format="png", **PNG)
    plt.close(fig)


def ndcg_at_k(table: dict[str, Any], ks: list[int], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, row in table.items():
        ax.plot(ks, [row["test"][f"ndcg@{k}"] for k in ks], marker="o", label=name,
                linestyle="--" if "runs" not in row else "-")
    ax.set(xlabel="K", ylabel="test NDCG@K", xticks=ks, title="Test NDCG@K (dashed: not a student)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1, 0.5))
    _save(fig, path)


def gain(table: dict[str, Any], metric: str, path: Path) -> None:
    rows = [(name, row["vs_baseline"]) for name, row in table.items()
            if row.get("vs_baseline", {}).get("gain") is not None]
    fig, ax = plt.subplots(figsize=(7, 0.45 * len(rows) + 1.2))
    for y, (name, v) in enumerate(rows):
        p = v.get("p_holm", v["p_value"])
        significant = p is not None and p < 0.05
        color = ("tab:green" if v["gain"] > 0 else "tab:red") if significant else "tab:gray"
        ax.barh(y, 100 * v["gain"], color=color)
        if v["ci_low"] is not None:
            ax.errorbar(100 * v["gain"], y, xerr=[[100 * (v["gain"] - v["ci_low"])], [100 * (v["ci_high"] - v["gain"])]],
                        color="black", capsize=3)
    ax.set(yticks=range(len(rows)), yticklabels=[row_label(name, table[name]) for name, _ in rows],
           xlabel=f"gain in test {metric} over the baseline (%)",
           title="Gain over the baseline, 95 % interval (gray: Holm's p >= 0.05)")
    ax.axvline(0, color="black", linewidth=0.8)
    ax.invert_yaxis()
    ax.grid(axis="x", alpha=0.3)
    _save(fig, path)


def buckets(report: BucketReport, path: Path) -> None:
    names = list(report.rows)
    pairs = [("tail", "head"), ("short", "long")]
    fig, axes = plt.subplots(1, 2, figsize=(10, 0.4 * len(names) + 1.5), sharey=True)
    for ax, pair in zip(axes, pairs):
        for offset, bucket in zip((-0.2, 0.2), pair):
            values = [report.rows[n][bucket][report.metric] or 0.0 for n in names]
            ax.barh([i + offset for i in range(len(names))], values, height=0.4,
                    label=f"{bucket} (n={report.info['users'][bucket]})")
        ax.set(xlabel=f"test {report.metric}", title=" vs ".join(pair))
        ax.legend(fontsize=8)
        ax.grid(axis="x", alpha=0.3)
    axes[0].set(yticks=range(len(names)), yticklabels=names)
    axes[0].invert_yaxis()
    _save(fig, path)


def curves(frame: pl.DataFrame, path: Path) -> None:
    """`frame`: plotdata.valid_curves (row, epoch, the validation metric)."""
    fig, ax = plt.subplots(figsize=(7, 4))
    metric = frame.columns[-1] if frame.height else ""
    for (name,), part in frame.group_by("row", maintain_order=True):
        ax.plot(part["epoch"], part[metric], label=name)
    ax.set(xlabel="epoch", ylabel=f"validation {metric}".strip(), title="Training curves (first seed)")
    ax.grid(alpha=0.3)
    if metric:
        ax.legend(fontsize=8)
    _save(fig, path)


def write_figures(folder: Path, table: dict[str, Any], ks: list[int], metric: str,
                  report: BucketReport | None, curves_frame: pl.DataFrame) -> list[str]:
    """Every figure into `folder`; returns the file names, in the order report.md shows them."""
    ndcg_at_k(table, ks, folder / "ndcg_at_k.png")
    gain(table, metric, folder / "gain.png")
    names = ["gain.png", "ndcg_at_k.png"]
    if report is not None:
        buckets(report, folder / "buckets.png")
        names.append("buckets.png")
    curves(curves_frame, folder / "curves.png")
    return names + ["curves.png"]
