"""Paired comparison of two rows from two evaluations of the same split (e.g. a d=32 student vs the d=64 baseline).

Reads the per-user test ranks that `evaluate` writes (`metrics/ranks.parquet`, one column per row and
seed, `<row>/seed<k>`, or `<row>` for a teacher) and runs the evaluate stage's paired t-test over
users, overall and per bucket.

    python benchmarks/compare_runs.py benchmarks/out/knowledge/office:baseline \
        benchmarks/out/knowledge/office/runs/d32:dllm2rec
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import polars as pl
import yaml

from distillrec.data.splitdata import SplitData
from distillrec.evaluate.buckets import assign_buckets
from distillrec.evaluate.compare import paired_comparison, per_user
from distillrec.params import parse_params


def runs(spec: str) -> tuple[Path, list[np.ndarray]]:
    """`<run folder>:<row>` -> (folder, that row's per-seed test ranks)."""
    folder, _, row = spec.rpartition(":")
    ranks = pl.read_parquet(Path(folder) / "metrics" / "ranks.parquet")
    columns = [c for c in ranks.columns if c == row or c.startswith(f"{row}/")]
    if not columns:
        raise SystemExit(f"{folder}/metrics/ranks.parquet has no runs of row {row!r}: {ranks.columns}")
    # a teacher's rank is null where the target is not in its top K: a miss at every cut-off <= K
    return Path(folder), [ranks[c].fill_null(np.iinfo(np.int32).max).to_numpy().copy() for c in columns]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("baseline", help="<run folder>:<row>")
    parser.add_argument("other", help="<run folder>:<row>")
    parser.add_argument("--metric", default="ndcg@10")
    args = parser.parse_args()
    folder, base = runs(args.baseline)
    _, other = runs(args.other)
    params = parse_params(yaml.safe_load((folder / "params.yaml").read_text()))
    masks, _ = assign_buckets(SplitData.load(folder / "data" / "processed"), params.evaluate.buckets)
    result = {"all": paired_comparison(base, other, args.metric)}
    for bucket, mask in masks.items():
        result[bucket] = paired_comparison(base, other, args.metric, mask)
    means = {"baseline": float(per_user(base, args.metric).mean()), "other": float(per_user(other, args.metric).mean())}
    print(json.dumps({"runs": [len(base), len(other)], "mean": means, **result}, indent=2))


if __name__ == "__main__":
    main()
