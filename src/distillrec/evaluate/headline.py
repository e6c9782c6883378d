"""The few numbers a person compares across runs (DVC metrics), apart from the full detail.

`dvc metrics show` prints one table: a line per metrics file, a column per key of any file. It
stays readable only while the files share a few keys, so the headline is:
* `rows/<row>.json`, one per row, all with the same keys: test HR, NDCG and MRR at the compare
  metric's K, the gain and p against the baseline, and parameters;
* `eval.json`, the run's story in a line with the same columns where they apply: the best
  distilled row (its name, metric, gain and p, and its gain on tail items) and the best teacher
  (its name and gain).
Timings are not DVC metrics: they differ on every run, so every run would show as changed in
`dvc exp show --only-changed`; ms per user is in report.md's headline table. Everything else
(intervals, every K, seeds, validation, buckets, cost) is in `details.json`.
"""

from __future__ import annotations

from typing import Any

from distillrec.evaluate.buckets import BucketReport


def _round(value: float | None, places: int = 4) -> float | None:
    return None if value is None else round(value, places)


def headline_rows(table: dict[str, Any], metric: str) -> dict[str, dict[str, Any]]:
    """rows/<row>.json: the same keys for every row (None where a figure does not apply)."""
    k = metric.split("@")[1]
    rows = {}
    for name, row in table.items():
        versus = row.get("vs_baseline", {})
        rows[name] = {**{f"{m}@{k}": _round(row["test"][f"{m}@{k}"]) for m in ("hr", "ndcg", "mrr")},
                      "gain": _round(versus.get("gain")), "p": versus.get("p_value"),
                      "params": int(row["cost"]["parameters"])}
    return rows


def story(table: dict[str, Any], metric: str, teachers: list[str], baseline: str,
          buckets: BucketReport | None) -> dict[str, Any]:
    """eval.json: the best distilled row and the best teacher on `metric`, against the baseline."""
    students = [name for name, row in table.items() if "runs" in row and name != baseline]
    out: dict[str, Any] = {}
    if students:
        best = max(students, key=lambda name: table[name]["test"][metric])
        versus = table[best]["vs_baseline"]
        out |= {"best": best, metric: _round(table[best]["test"][metric]), "gain": _round(versus["gain"]),
                "p": versus["p_value"]}
        if buckets is not None and "tail" in buckets.rows[best]:
            out["tail_gain"] = _round(buckets.rows[best]["tail"].get("gain"))
    if teachers:
        best = max(teachers, key=lambda name: table[name]["test"][metric] or 0.0)
        out |= {"teacher": best, "teacher_gain": _round(table[best].get("vs_baseline", {}).get("gain"))}
    return out
