"""DVC-facing outputs of `evaluate`: eval.json (metrics), report.md (table), NDCG@K plot data."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import polars as pl

from distillrec.io import atomic_file, write_json


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def markdown_table(table: dict[str, Any], ks: list[int], protocol: str) -> str:
    metrics = [f"{m}@{k}" for k in ks for m in ("hr", "ndcg", "mrr")]
    head = ["row", *[m.upper() for m in metrics],
            "train s", "ms/user", "users/s", "params", "MB"]
    lines = [f"# Test results\n\n{protocol}\n", "| " + " | ".join(head) + " |",
             "|" + "---|" * len(head)]
    for name, row in table.items():
        cost = row["cost"]
        cells = [name, *[_fmt(row["test"][m]) for m in metrics], _fmt(cost.get("train_seconds"), 1),
                 _fmt(cost["ms_per_user"], 3), _fmt(cost["users_per_second"], 0),
                 f"{cost['parameters']:,}", _fmt(cost.get("size_mb"), 2)]
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
    """eval.json (nested: `<row>.test.ndcg@10`), report.md, plots/ndcg_at_k.csv, ranks.parquet."""
    metrics_dir = Path(metrics_dir)
    write_json(metrics_dir / "eval.json", table)
    with atomic_file(metrics_dir / "report.md") as tmp:
        tmp.write_text(markdown_table(table, ks, protocol))
    curve = pl.DataFrame({"k": ks, **{name: [row["test"][f"ndcg@{k}"] for k in ks] for name, row in table.items()}})
    (metrics_dir / "plots").mkdir(parents=True, exist_ok=True)
    with atomic_file(metrics_dir / "plots" / "ndcg_at_k.csv") as tmp:
        curve.write_csv(tmp)
    with atomic_file(metrics_dir / "ranks.parquet") as tmp:
        ranks.write_parquet(tmp)
