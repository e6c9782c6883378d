"""DVC-facing outputs of `evaluate`: the headline metrics (eval.json, rows/), the full detail
(details.json, report.md, buckets.csv), pictures (figures/) and NDCG@K plot data (plots/)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import polars as pl

from distillrec.evaluate.buckets import BucketReport
from distillrec.evaluate.figures import write_figures
from distillrec.evaluate.headline import headline_rows, row_label, seeds, story
from distillrec.evaluate.plotdata import valid_curves, write_plot_data
from distillrec.io import atomic_dir, atomic_file, write_json


def significant(value: float, digits: int = 2) -> float:
    """`value` to `digits` significant digits: timings jitter below that from run to run."""
    if value == 0 or not math.isfinite(value):
        return value
    return round(value, digits - 1 - math.floor(math.log10(abs(value))))


def ms_per_user(cost: dict[str, Any]) -> float:
    """Batched scoring throughput as milliseconds per user (students: the evaluation batch;
    teachers: their export, one pass over each user's history)."""
    return 1000.0 / cost["users_per_second"]


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _cell(row: dict[str, Any], metric: str) -> str:
    std = row.get("test_std", {}).get(metric)
    return _fmt(row["test"][metric]) + (f" ± {std:.4f}" if std else "")


def _p(p: float | None) -> str:
    return "–" if p is None else f"{p:.2g}"


def _gain_p(gain: float | None, p: float | None, p_holm: float | None = None) -> list[str]:
    """Gain and p cells; with `p_holm`, the p cell reads `raw (Holm)`."""
    p_cell = _p(p) if p is None or p_holm is None else f"{_p(p)} ({_p(p_holm)})"
    return ["–" if gain is None else f"{100 * gain:+.1f}%", p_cell]


def _versus(row: dict[str, Any]) -> list[str]:
    versus = row.get("vs_baseline")
    if not versus:
        return ["", ""]
    return _gain_p(versus["gain"], versus["p_value"], versus.get("p_holm"))


def bucket_tables(buckets: BucketReport) -> list[str]:
    """report.md lines: rows x buckets on the compare metric (value, gain, p), then every metric."""
    info, metric = buckets.info, buckets.metric
    users = info["users"]
    names = list(users)
    head = ["row", *[cell for b in names for cell in (f"{b} (n={users[b]})", "gain", "p (Holm)")]]
    lines = ["", f"## By item popularity and history length (test, {metric})", "",
             f"tail: the target is among the {100 * info['tail_share']:g} % least frequent training items "
             f"({info['tail_items']} items, at most {info['tail_max_count']} training occurrences; ties by "
             f"item_idx, unseen items always tail); head: the rest. short: at most {info['short_history']} items "
             "before the target; long: the rest. Gain and p (paired t-test over the bucket's users) against "
             "the baseline, Holm's adjusted p over the column's rows in brackets; n = test users.", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, row in buckets.rows.items():
        cells = [name]
        for b in names:
            entry = row[b]
            versus = _gain_p(entry["gain"], entry["p"], entry.get("p_holm")) if "gain" in entry else ["", ""]
            cells += [_fmt(entry[metric]), *versus]
        lines.append("| " + " | ".join(cells) + " |")
    head = ["row", "bucket", "users", *[m.upper() for m in buckets.metrics], f"gain {metric}", "p (Holm)"]
    lines += ["", "### Every metric by bucket", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, row in buckets.rows.items():
        for b, entry in row.items():
            versus = _gain_p(entry["gain"], entry["p"], entry.get("p_holm")) if "gain" in entry else ["", ""]
            cells = [name, b, str(entry["users"]), *[_fmt(entry[m]) for m in buckets.metrics], *versus]
            lines.append("| " + " | ".join(cells) + " |")
    return lines


def headline_table(table: dict[str, Any], metric: str, buckets: BucketReport | None = None) -> list[str]:
    """The table README quotes: one K, the seeds, gain with its interval and tests, tail items, cost."""
    rows = headline_rows(table, metric)
    k = metric.split("@")[1]
    tail = buckets is not None and buckets.info["users"].get("tail")
    head = ["row", "seeds", f"HR@{k}", f"NDCG@{k}", f"MRR@{k}", f"gain {metric}", "95 % CI", "p", "p Holm", "p perm",
            *([f"tail {metric}", "tail gain"] if tail else []), "ms/user", "params"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, row in rows.items():
        versus = table[name].get("vs_baseline", {})
        gain = "" if row["gain"] is None else f"{100 * row['gain']:+.1f}%"
        ci = ("" if versus.get("ci_low") is None
              else f"{100 * versus['ci_low']:+.1f} … {100 * versus['ci_high']:+.1f}%")
        tests = ["" if versus.get(key) is None else f"{versus[key]:.2g}" for key in ("p_value", "p_holm", "p_perm")]
        cells = [row_label(name, table[name]), seeds(table[name]),
                 *[_fmt(table[name]["test"][f"{m}@{k}"]) for m in ("hr", "ndcg", "mrr")], gain, ci, *tests]
        if tail:
            entry = buckets.rows[name]["tail"]
            cells += [_fmt(entry[buckets.metric]),
                      "" if entry.get("gain") is None else f"{100 * entry['gain']:+.1f}%"]
        cells += [f"{significant(ms_per_user(table[name]['cost'])):g}", f"{row['params']:,}"]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def selection_lines(table: dict[str, Any]) -> list[str]:
    """report.md: how row auto was chosen (the candidates' validation values, best first)."""
    auto = table.get("auto")
    if auto is None:
        return []
    chosen, scores = auto["selection"]["chosen"], auto["selection"]["candidates"]
    ranked = sorted(scores.items(), key=lambda item: -item[1])
    return ["## The distilled student, chosen on validation", "",
            f"Row `auto` is **{chosen}**: the best {auto['selection']['metric']} (mean over seeds) among "
            + ", ".join(f"{name} {value:.4f}" for name, value in ranked)
            + ". The test split never chose it; its test figures are the chosen row's.", ""]


def markdown_table(table: dict[str, Any], ks: list[int], protocol: str, buckets: BucketReport | None = None,
                   figures: list[str] | None = None) -> str:
    compared = next((row["vs_baseline"]["metric"] for row in table.values() if "vs_baseline" in row), None)
    lines = [f"# Test results\n\n{protocol}\n"]
    if compared:
        lines += [f"## Headline (test, {compared})", "", *headline_table(table, compared, buckets), "",
                  "seeds: the runs averaged in a row (one seed is one run, not a mean). p: paired t-test over "
                  "users; p Holm: Holm–Bonferroni over the table's rows (auto, a copy of its choice, is not "
                  "counted twice); p perm: paired sign-flip permutation test (its smallest value is "
                  "2 / (flips + 1)). ms/user: batched scoring throughput (students: the evaluation batch; teachers: "
                  "their export, one pass over each user's history). Tail: the target is among the least frequent "
                  "training items (below).", "",
                  *selection_lines(table)]
    if figures:
        lines += ["## Figures", "", *[f"![{name.removesuffix('.png')}](figures/{name})" for name in figures], ""]
    metrics = [f"{m}@{k}" for k in ks for m in ("hr", "ndcg", "mrr")]
    head = ["row", *[m.upper() for m in metrics], f"gain {compared or ''}".strip(), "p (Holm)",
            "train s", "latency ms", "users/s", "params", "MB"]
    lines += ["## Every K", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, row in table.items():
        cost = row["cost"]
        cells = [row_label(name, row), *[_cell(row, m) for m in metrics], *_versus(row),
                 _fmt(cost.get("train_seconds"), 1),
                 _fmt(cost.get("latency_ms"), 3), _fmt(cost["users_per_second"], 0),
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
                  metrics_dir: Path | str, buckets: BucketReport | None = None, *, teachers: list[str] = (),
                  curve_files: dict[str, Path] | None = None) -> None:
    """Headline metrics (eval.json, rows/<row>.json), details.json, report.md, figures/*.png,
    plots/ (valid_curves, ndcg_at_k, gains .csv), ranks.parquet and (with `buckets`) buckets.csv.

    details.json is the whole table (`<row>.test.ndcg@10`, seeds, validation, cost); with
    `buckets`, each row also gets `buckets.<bucket>.<metric>` (and `.gain`, `.p`), and the top
    level `buckets` holds the user counts and thresholds.
    """
    metrics_dir = Path(metrics_dir)
    details = table
    if buckets is not None:
        if "buckets" in table:
            raise ValueError("a row named 'buckets' would clash with details.json's bucket summary")
        details = {name: row | {"buckets": buckets.headline(name)} for name, row in table.items()}
        details["buckets"] = buckets.info
        columns = ["row", "bucket", "users", *buckets.metrics, "gain", "p", "p_holm"]
        frame = pl.DataFrame(buckets.records(), schema={c: pl.String if c in ("row", "bucket") else
                                                         pl.Int64 if c == "users" else pl.Float64 for c in columns})
        with atomic_file(metrics_dir / "buckets.csv") as tmp:
            frame.write_csv(tmp)
    write_json(metrics_dir / "details.json", details)
    curves = valid_curves(curve_files or {})  # read once: curves.png and dvc plots' valid_curves.csv
    metric = next((row["vs_baseline"]["metric"] for row in table.values() if "vs_baseline" in row), None)
    if metric is not None:
        write_json(metrics_dir / "eval.json", story(table, metric, list(teachers), buckets))
        with atomic_dir(metrics_dir / "rows") as tmp:
            for name, row in headline_rows(table, metric).items():
                write_json(tmp / f"{name}.json", row)
    with atomic_dir(metrics_dir / "figures") as tmp:
        figures = write_figures(tmp, table, ks, metric or f"ndcg@{ks[0]}", buckets, curves)
    with atomic_file(metrics_dir / "report.md") as tmp:
        tmp.write_text(markdown_table(table, ks, protocol, buckets, figures))
    write_plot_data(metrics_dir / "plots", table, ks, metric, curves)
    with atomic_file(metrics_dir / "ranks.parquet") as tmp:
        ranks.write_parquet(tmp)
