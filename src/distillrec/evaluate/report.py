"""DVC-facing outputs of `evaluate`: eval.json (metrics), report.md (tables), NDCG@K plot data,
buckets.csv (metrics by bucket of users)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import polars as pl

from distillrec.evaluate.buckets import BucketReport
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


def _gain_p(gain: float | None, p: float | None) -> list[str]:
    return ["–" if gain is None else f"{100 * gain:+.1f}%", "–" if p is None else f"{p:.2g}"]


def _versus(row: dict[str, Any]) -> list[str]:
    versus = row.get("vs_baseline")
    if not versus:
        return ["", ""]
    return _gain_p(versus["gain"], versus["p_value"])


def bucket_tables(buckets: BucketReport) -> list[str]:
    """report.md lines: rows x buckets on the compare metric (value, gain, p), then every metric."""
    info, metric = buckets.info, buckets.metric
    users = info["users"]
    names = list(users)
    head = ["row", *[cell for b in names for cell in (f"{b} (n={users[b]})", "gain", "p")]]
    lines = ["", f"## By item popularity and history length (test, {metric})", "",
             f"tail: the target is among the {100 * info['tail_share']:g} % least frequent training items "
             f"({info['tail_items']} items, at most {info['tail_max_count']} training occurrences; ties by "
             f"item_idx, unseen items always tail); head: the rest. short: at most {info['short_history']} items "
             "before the target; long: the rest. Gain and p (paired t-test over the bucket's users) against "
             "the baseline; n = test users.", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, row in buckets.rows.items():
        cells = [name]
        for b in names:
            entry = row[b]
            versus = _gain_p(entry["gain"], entry["p"]) if "gain" in entry else ["", ""]
            cells += [_fmt(entry[metric]), *versus]
        lines.append("| " + " | ".join(cells) + " |")
    head = ["row", "bucket", "users", *[m.upper() for m in buckets.metrics], f"gain {metric}", "p"]
    lines += ["", "### Every metric by bucket", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, row in buckets.rows.items():
        for b, entry in row.items():
            versus = _gain_p(entry["gain"], entry["p"]) if "gain" in entry else ["", ""]
            cells = [name, b, str(entry["users"]), *[_fmt(entry[m]) for m in buckets.metrics], *versus]
            lines.append("| " + " | ".join(cells) + " |")
    return lines


def markdown_table(table: dict[str, Any], ks: list[int], protocol: str, buckets: BucketReport | None = None) -> str:
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
    if buckets is not None:
        lines += bucket_tables(buckets)
    explained = {name: row["explanation"] for name, row in table.items() if "explanation" in row}
    if explained:
        lines += ["", "## Explanations (test, x100)", "",
                  "| row | BLEU-1 | BLEU-4 | ROUGE-1 F | ROUGE-2 F | ROUGE-L F | n |", "|---|---|---|---|---|---|---|"]
        for name, m in explained.items():
            lines.append(f"| {name} | " + " | ".join(_fmt(m[key], 2) for key in
                                                    ("bleu1", "bleu4", "rouge1", "rouge2", "rougeL")) + f" | {m['n']} |")
    return "\n".join(lines) + "\n"


def write_reports(table: dict[str, Any], ranks: pl.DataFrame, ks: list[int], protocol: str,
                  metrics_dir: Path | str, buckets: BucketReport | None = None) -> None:
    """eval.json (nested: `<row>.test.ndcg@10`), report.md, plots/ndcg_at_k/<row>.csv, ranks.parquet.

    With `buckets`: each row of eval.json gets `buckets.<bucket>.<metric>` (and `.gain`, `.p`), the
    top level `buckets` holds the user counts and thresholds, and every metric per bucket goes to
    report.md and buckets.csv.
    """
    metrics_dir = Path(metrics_dir)
    evaluation = table
    if buckets is not None:
        if "buckets" in table:
            raise ValueError("a row named 'buckets' would clash with eval.json's bucket summary")
        evaluation = {name: row | {"buckets": buckets.headline(name)} for name, row in table.items()}
        evaluation["buckets"] = buckets.info
        columns = ["row", "bucket", "users", *buckets.metrics, "gain", "p"]
        frame = pl.DataFrame(buckets.records(), schema={c: pl.String if c in ("row", "bucket") else
                                                         pl.Int64 if c == "users" else pl.Float64 for c in columns})
        with atomic_file(metrics_dir / "buckets.csv") as tmp:
            frame.write_csv(tmp)
    write_json(metrics_dir / "eval.json", evaluation)
    with atomic_file(metrics_dir / "report.md") as tmp:
        tmp.write_text(markdown_table(table, ks, protocol, buckets))
    with atomic_dir(metrics_dir / "plots" / "ndcg_at_k") as tmp:  # one line per row in `dvc plots`
        for name, row in table.items():
            pl.DataFrame({"k": ks, "ndcg": [row["test"][f"ndcg@{k}"] for k in ks]}).write_csv(tmp / f"{name}.csv")
    with atomic_file(metrics_dir / "ranks.parquet") as tmp:
        ranks.write_parquet(tmp)
