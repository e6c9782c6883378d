"""DVC-facing outputs of `evaluate`: eval.json (metrics), report.md (table), NDCG@K plot data."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import polars as pl

from distillrec.io import atomic_dir, atomic_file, write_json


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _cell(row: dict[str, Any], metric: str) -> str:
    std = row.get("test_std", {}).get(metric)
    return _fmt(row["test"][metric]) + (f" ± {std:.4f}" if std else "")


def _versus(row: dict[str, Any]) -> list[str]:
    versus = row.get("vs_baseline")
    if not versus:
        return ["", ""]
    gain = "–" if versus["gain"] is None else f"{100 * versus['gain']:+.1f}%"
    p = versus["p_value"]
    return [gain, "–" if p is None else f"{p:.2g}"]


def markdown_table(table: dict[str, Any], ks: list[int], protocol: str) -> str:
    metrics = [f"{m}@{k}" for k in ks for m in ("hr", "ndcg", "mrr")]
    compared = next((row["vs_baseline"]["metric"] for row in table.values() if "vs_baseline" in row), None)
    head = ["row", *[m.upper() for m in metrics], f"gain {compared or ''}".strip(), "p",
            "train s", "ms/user", "users/s", "params", "MB"]
    lines = [f"# Test results\n\n{protocol}\n", "| " + " | ".join(head) + " |",
             "|" + "---|" * len(head)]
    for name, row in table.items():
        cost = row["cost"]
        cells = [name, *[_cell(row, m) for m in metrics], *_versus(row), _fmt(cost.get("train_seconds"), 1),
                 _fmt(cost["ms_per_user"], 3), _fmt(cost["users_per_second"], 0),
                 f"{int(cost['parameters']):,}", _fmt(cost.get("size_mb"), 2)]
        lines.append("| " + " | ".join(cells) + " |")
    explained = {name: row["explanation"] for name, row in table.items() if "explanation" in row}
    if explained:
        lines += ["", "## Explanations (test, x100)", "",
                  "| row | BLEU-1 | BLEU-4 | ROUGE-1 F | ROUGE-2 F | ROUGE-L F | n |", "|---|---|---|---|---|---|---|"]
        for name, m in explained.items():
            lines.append(f"| {name} | " + " | ".join(_fmt(m[key], 2) for key in
                                                    ("bleu1", "bleu4", "rouge1", "rouge2", "rougeL")) + f" | {m['n']} |")
    return "\n".join(lines) + "\n"


def write_reports(table: dict[str, Any], ranks: pl.DataFrame, ks: list[int], protocol: str,
                  metrics_dir: Path | str) -> None:
    """eval.json (nested: `<row>.test.ndcg@10`), report.md, plots/ndcg_at_k/<row>.csv, ranks.parquet."""
    metrics_dir = Path(metrics_dir)
    write_json(metrics_dir / "eval.json", table)
    with atomic_file(metrics_dir / "report.md") as tmp:
        tmp.write_text(markdown_table(table, ks, protocol))
    with atomic_dir(metrics_dir / "plots" / "ndcg_at_k") as tmp:  # one line per row in `dvc plots`
        for name, row in table.items():
            pl.DataFrame({"k": ks, "ndcg": [row["test"][f"ndcg@{k}"] for k in ks]}).write_csv(tmp / f"{name}.csv")
    with atomic_file(metrics_dir / "ranks.parquet") as tmp:
        ranks.write_parquet(tmp)
