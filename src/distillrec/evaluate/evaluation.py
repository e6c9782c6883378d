"""Rank the validation and test splits once per row and gather quality and cost in one table.

Rows: `popularity` (training-item counts, the reference every model must beat), each teacher
(from its exported top-K lists) and each saved student folder. Per-user test ranks are kept so that comparisons can run paired tests
and metrics can be broken down by bucket of users (evaluate/buckets.py).
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch

from distillrec.data.splitdata import SplitData
from distillrec.evaluate.buckets import BucketReport, assign_buckets, bucket_metrics, compare_buckets
from distillrec.evaluate.compare import aggregate, holm, paired_comparison
from distillrec.evaluate.cost import inference_cost
from distillrec.evaluate.listed import listed_metrics
from distillrec.evaluate.text_metrics import explanation_metrics
from distillrec.params import EvaluateParams
from distillrec.teachers.export import TeacherExport
from distillrec.train.metrics import metrics_from_ranks
from distillrec.train.ranking import Scorer, rank_split, student_scorer, table_scorer
from distillrec.students.saved import load_student
from distillrec.hf import resolve_device

log = logging.getLogger(__name__)


def popularity_scores(data: SplitData) -> torch.Tensor:
    """Count of each item in the training part of every sequence (everything before validation)."""
    scores = torch.as_tensor(data.training_counts(), dtype=torch.float32)
    scores[0] = torch.finfo(torch.float32).min
    return scores


def popularity_scorer(data: SplitData) -> Scorer:
    return table_scorer(popularity_scores(data))


class Evaluator:
    """Evaluates rows on one split with one protocol; collects metrics and per-user ranks."""

    def __init__(self, processed: Path | str, cfg: EvaluateParams, device: str = "auto"):
        self.data = SplitData.load(processed)
        self.cfg = cfg
        self.device = resolve_device(device)
        self.table: dict[str, Any] = {}
        self.ranks: dict[str, np.ndarray] = {"user_idx": self.data.targets("test")[0]}
        self.listed: dict[str, int] = {}  # rows that rank only their top K (teachers): K, 0 = no test rows
        self.ks = sorted({*cfg.ks, int(cfg.compare_metric.split("@")[1])})  # valid: choices use compare_metric

    def _evaluate(self, name: str, scorer: Scorer, max_length: int, cost: dict[str, Any]) -> dict[str, Any]:
        """Metrics and cost of one scorer; its per-user test ranks are kept under `name`."""
        cfg = self.cfg
        row: dict[str, Any] = {}
        for split in ("valid", "test"):
            _, ranks = rank_split(scorer, self.data, split, max_length, cfg.batch_size, self.device,
                                  cfg.exclude_history)
            row[split] = metrics_from_ranks(ranks, self.ks)
        self.ranks[name] = ranks.numpy()
        row["cost"] = cost | inference_cost(scorer, self.data, max_length, cfg.latency_batch_size,
                                            cfg.latency_repeats, cfg.batch_size, self.device)
        return row

    def add(self, name: str, scorer: Scorer, max_length: int, cost: dict[str, Any]) -> None:
        self._store(name, self._evaluate(name, scorer, max_length, cost))

    def _store(self, name: str, row: dict[str, Any]) -> None:
        self.table[name] = row
        log.info("%s: test %s", name, {k: v if v is None else round(v, 4) for k, v in row["test"].items()})

    def add_teacher(self, name: str, folder: Path | str) -> None:
        """A teacher row from its exported top-K lists (it is not re-run here)."""
        export = TeacherExport(folder)
        row: dict[str, Any] = {}
        for split in ("valid", "test"):
            ranks, row[split] = listed_metrics(export, self.data, split, self.ks, self.cfg.exclude_history)
        self.ranks[name] = pl.Series(name, ranks).replace(0, None)  # null: beyond the top K
        info = export.info
        self.listed[name] = int(info["top_k"]) if any(v is not None for v in row["test"].values()) else 0
        row["cost"] = {"parameters": info["parameters"], "trainable_parameters": info["trainable_parameters"],
                       "size_mb": info["size_mb"], "train_seconds": info["train_seconds"],
                       "users_per_second": 1000 / max(info["export"]["ms_per_user"], 1e-9),
                       "threads": info["export"]["threads"], "top_k": info["top_k"]}
        explanations = export.explanations()
        if explanations is not None and explanations.height:
            row["explanation"] = explanation_metrics(explanations["generated"].to_list(),
                                                     explanations["reference"].to_list())
        self._store(name, row)

    def add_popularity(self) -> None:
        self.add("popularity", popularity_scorer(self.data), 1, {"parameters": 0})

    def add_student(self, name: str, folder: Path | str) -> None:
        self._store(name, self._student(name, folder))

    def add_runs(self, name: str, folders: dict[str, Path]) -> None:
        """One row from several runs of a student (seeds): mean ± std; ranks kept per run."""
        self._store(name, aggregate({run: self._student(f"{name}/{run}", folder) for run, folder in folders.items()}))

    def compare(self, baseline: str, metric: str) -> None:
        """Gain over `baseline`, its interval, the paired p-value (and the permutation check's) for
        every other row, and Holm's adjusted p over all of them (a teacher's users beyond its top K
        count as misses; a top K shorter than the metric's K, or no test lists, is not compared)."""
        base = self._row_ranks(baseline)
        for name in self.table:
            if name != baseline and self._comparable(name, metric):
                self.table[name]["vs_baseline"] = paired_comparison(base, self._row_ranks(name), metric,
                                                                    resamples=self.cfg.permutation_resamples)
        compared = {name: row["vs_baseline"]["p_value"] for name, row in self.table.items()
                    if "vs_baseline" in row and "selection" not in row}
        for name, adjusted in holm(compared).items():
            self.table[name]["vs_baseline"]["p_holm"] = adjusted
        if "auto" in self.table:
            self.table["auto"]["vs_baseline"] = self.table[self.table["auto"]["selection"]["chosen"]]["vs_baseline"]

    def add_auto(self, candidates: list[str], metric: str, buckets: BucketReport | None = None) -> str:
        """Row `auto`: the candidate with the best mean validation `metric`, chosen before any test
        figure is read; its test figures are that row's (the test only measures the choice). Added
        after `compare`, so it is not a second hypothesis in Holm's family."""
        scores = {name: self.table[name]["valid"].get(metric) for name in candidates}
        missing = [name for name, value in scores.items() if value is None]
        if missing:
            raise ValueError(f"auto: rows {missing} have no validation {metric}")
        chosen = max(candidates, key=lambda name: scores[name])  # ties: the first declared
        self.table["auto"] = copy.deepcopy(self.table[chosen]) | {
            "selection": {"chosen": chosen, "metric": f"valid {metric}", "candidates": scores}}
        if buckets is not None:
            buckets.rows["auto"] = copy.deepcopy(buckets.rows[chosen])
        log.info("auto: %s (validation %s %s)", chosen, metric,
                 ", ".join(f"{name} {value:.4f}" for name, value in scores.items()))
        return chosen

    def _comparable(self, name: str, metric: str) -> bool:
        k = int(metric.split("@")[1])
        return self.listed.get(name, k) >= k

    def _row_ranks(self, name: str) -> list[np.ndarray]:
        """Per-user test ranks of a row, one array per run; a null rank (beyond a top K) is a miss."""
        row = self.table[name]
        if "selection" in row:  # row auto: its choice's ranks
            return self._row_ranks(row["selection"]["chosen"])
        keys = [f"{name}/{run}" for run in row["runs"]] if "runs" in row else [name]
        miss = self.data.n_items + 1
        return [np.array(pl.Series(self.ranks[key]).fill_null(miss).to_numpy()) for key in keys]

    def by_bucket(self, baseline: str, metric: str) -> BucketReport:
        """Test metrics of every row within each bucket of users (`evaluate.buckets`), with the gain
        and paired p-value on `metric` against `baseline` for every other row."""
        masks, info = assign_buckets(self.data, self.cfg.buckets)
        for bucket, users in info["users"].items():
            if not users:
                log.warning("bucket %s has no test users: its metrics are undefined (evaluate.buckets: %s)",
                            bucket, self.cfg.buckets)
        metrics = [f"{m}@{k}" for k in self.cfg.ks for m in ("hr", "ndcg", "mrr")]
        metrics += [metric] if metric not in metrics else []
        base = self._row_ranks(baseline) if baseline in self.table else None
        rows = {}
        for name in self.table:
            ranks = self._row_ranks(name)
            rows[name] = bucket_metrics(ranks, masks, metrics, self.listed.get(name))
            if base is not None and name != baseline and self._comparable(name, metric):
                for bucket, versus in compare_buckets(base, ranks, metric, masks).items():
                    rows[name][bucket].update(versus)
        for bucket in masks:  # Holm over the rows of each bucket's column (auto is its choice)
            tested = {name: row[bucket]["p"] for name, row in rows.items()
                      if "p" in row[bucket] and "selection" not in self.table[name]}
            for name, adjusted in holm(tested).items():
                rows[name][bucket]["p_holm"] = adjusted
        return BucketReport(info, metric, metrics, rows)

    def _student(self, name: str, folder: Path | str) -> dict[str, Any]:
        model, meta = load_student(folder, self.device)
        fit = meta["fit"]
        cost = {"parameters": meta["parameters"], "threads": torch.get_num_threads(),
                "size_mb": (Path(folder) / "model.pt").stat().st_size / 2**20,
                "train_seconds": fit["seconds"], "seconds_to_best": fit["seconds_to_best"],
                "epochs": fit["epochs"], "best_epoch": fit["best_epoch"]}
        return self._evaluate(name, student_scorer(model), int(meta["student"]["max_length"]), cost)

    def rank_table(self) -> pl.DataFrame:
        return pl.DataFrame(self.ranks)
