"""The few numbers a person compares across runs (DVC metrics), apart from the full detail.

`dvc metrics show` prints one table: a line per metrics file, a column per key of any file. It
stays readable only while the files share a few keys, so the headline is:
* `rows/<row>.json`, one per row, all with the same keys: test HR and NDCG at the compare metric's
  K (MRR is in report.md and details.json: `dvc metrics show` stays within 160 columns), the
  validation value of the compare metric (what every choice reads), the gain and p against the
  baseline, Holm's adjusted p over the table, -log10 p, and parameters;
* `eval.json`, the run's story in a line with the same columns where they apply: the distilled
  row chosen on validation (row `auto`'s choice: its name, test metric, gain, p, Holm's p and its
  gain on tail items) and the name of the teacher with the best validation metric (its gain is
  in its row's file).
`dvc metrics` prints 5 decimals, so p-values below 1e-5 read as 0.0 and two of them can not be
told apart: `neg_log10_p` (2 decimals) survives. Timings are not DVC metrics: they differ on every
run, so every run would show as changed in `dvc exp show --only-changed`; ms per user is in
report.md's headline table. Everything else (intervals, every K, seeds, validation, buckets,
cost) is in `details.json`.
"""

from __future__ import annotations

import math
from typing import Any

from distillrec.evaluate.buckets import BucketReport

P_FLOOR = 1e-300  # a t-test p that underflows to 0.0 is reported as -log10 p = 300, not infinity


def _round(value: float | None, places: int = 4) -> float | None:
    return None if value is None else round(value, places)


def neg_log10(p: float | None) -> float | None:
    return None if p is None else round(-math.log10(max(p, P_FLOOR)), 2) + 0.0  # + 0.0: no -0.0


def versus_keys(versus: dict[str, Any]) -> dict[str, Any]:
    """gain, p, Holm's p and -log10 p of a comparison (None where a row is not compared)."""
    return {"gain": _round(versus.get("gain")), "p": versus.get("p_value"), "p_holm": versus.get("p_holm"),
            "neg_log10_p": neg_log10(versus.get("p_value"))}


def row_label(name: str, row: dict[str, Any]) -> str:
    """A row's name in the tables; row auto names its choice."""
    return f"auto → {row['selection']['chosen']}" if "selection" in row else name


def seeds(row: dict[str, Any]) -> str:
    """The seeds behind a row's figures (students), or `1 run` (teachers, popularity)."""
    return ", ".join(run.removeprefix("seed") for run in row["runs"]) if "runs" in row else "1 run"


def headline_rows(table: dict[str, Any], metric: str) -> dict[str, dict[str, Any]]:
    """rows/<row>.json: the same keys for every row (None where a figure does not apply)."""
    k = metric.split("@")[1]
    rows = {}
    for name, row in table.items():
        rows[name] = {**{f"{m}@{k}": _round(row["test"][f"{m}@{k}"]) for m in ("hr", "ndcg")},
                      f"valid_{metric}": _round(row.get("valid", {}).get(metric)),
                      **versus_keys(row.get("vs_baseline", {})), "params": int(row["cost"]["parameters"])}
    return rows


def story(table: dict[str, Any], metric: str, teachers: list[str], buckets: BucketReport | None) -> dict[str, Any]:
    """eval.json: the distilled row chosen on validation (row `auto`) and the teacher with the best
    validation `metric`, with their test figures against the baseline."""
    out: dict[str, Any] = {}
    if "auto" in table:
        best = table["auto"]["selection"]["chosen"]
        out |= {"best": best, metric: _round(table[best]["test"][metric]),
                **versus_keys(table[best]["vs_baseline"])}
        if buckets is not None and "tail" in buckets.rows[best]:
            out["tail_gain"] = _round(buckets.rows[best]["tail"].get("gain"))
    if teachers:
        out["teacher"] = max(teachers, key=lambda name: table[name]["valid"].get(metric) or 0.0)
    return out
