"""Student benchmark: test quality and training time per model, mean ± std over seeds.

Runs each (dataset, model, seed) in a fresh process with 1 torch thread (see
../shared/reference/BENCHMARKING.md) and writes one JSON line per run, then a markdown table.

    python benchmarks/bench_students.py --datasets ml-100k synthetic --models sasrec gru4rec caser bert4rec --seeds 1 2 3

`--target 0.070` adds when each run first reaches that test NDCG@10 with the model that validation
had selected so far (time to quality; test is measured, never used to select).
`--compare _a _b` runs the paired t-test over test users between two tags' saved runs.
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
OUT = REPO / "benchmarks" / "out" / "students"

DATASETS = {  # the RecBole reference protocol: no k-core, leave-one-out, full ranking
    "ml-100k": {"dataset": {"source": "recbole", "name": "ml-100k", "path": str(SHARED / "data" / "ml-100k")},
                "split": {"user_core": 0, "item_core": 0}},
    "office": {"dataset": {"source": "lcrec", "name": "Office", "path": str(SHARED / "data" / "amazon-office-lcrec")},
               "split": {"user_core": 0, "item_core": 0}},
    "synthetic": {},
}
# sizes fixed by the RecBole comparison (d=64, 2 layers, 2 heads, max length 50)
STUDENT = {"hidden": 64, "layers": 2, "heads": 2, "max_length": 50}


def params_for(dataset: str, model: str, seed: int, overrides: dict) -> dict:
    from distillrec.params import Params
    raw = Params().model_dump(mode="json") | DATASETS[dataset]
    raw["student"] = raw["student"] | STUDENT | {"model": model} | overrides.get("student", {})
    raw["train"] = raw["train"] | {"seeds": [seed], "threads": 1, "device": "cpu"} | overrides.get("train", {})
    raw["evaluate"] = raw["evaluate"] | {"latency_repeats": 200}
    return raw


def prepare(dataset: str) -> Path:
    from distillrec.data.ingest import run_ingest
    from distillrec.data.split import run_split
    from distillrec.params import parse_params
    root = OUT / dataset
    if not (root / "processed" / "sequences.parquet").exists():
        params = parse_params(params_for(dataset, "sasrec", 0, {}))
        run_ingest(params, root / "interim")
        run_split(params, root / "interim", root / "processed", root / "data.json")
    return root / "processed"


def run_one(config: str) -> None:
    """Child process: train + evaluate one student, print one JSON line."""
    import torch

    from distillrec.evaluate.evaluation import Evaluator
    from distillrec.params import parse_params
    from distillrec.train.objectives import build_objective
    from distillrec.train.run import Plan, train_student
    job = json.loads(config)
    params = parse_params(job["params"])
    torch.set_num_threads(1)
    name = f"{job['dataset']}-{params.student.model}-{params.train.seeds[0]}{job['tag']}"
    started = time.perf_counter()
    trajectory: list[list[float]] = []
    summary = train_student(params, job["processed"], OUT / "models" / name, OUT / "ckpt" / name, OUT / "live" / name,
                            plan=lambda model, data: Plan(build_objective(params.train, data), {},
                                                          track_test_quality(model, data, params, trajectory)))
    wall = time.perf_counter() - started - sum(row[-1] for row in trajectory)
    evaluator = Evaluator(job["processed"], params.evaluate, "cpu")
    evaluator.add_student(name, OUT / "models" / name)
    row = evaluator.table[name]
    print(json.dumps({"dataset": job["dataset"], "model": params.student.model, "seed": params.train.seeds[0],
                      "tag": job["tag"], "test": row["test"], "fit": summary["fit"], "wall": wall,
                      "trajectory": [r[:-1] for r in trajectory],
                      "cost": row["cost"], "threads": torch.get_num_threads()}))


def track_test_quality(model, data, params, trajectory: list[list[float]]) -> Callable[[dict[str, float]], None]:
    """After each validation: when the selection metric improves, the test NDCG@10 of the model a run
    stopped now would keep, as [training seconds, epoch, valid metric, test NDCG@10, seconds spent here].
    Test never selects anything; it measures when a run reaches a quality. These seconds (and the
    run's `wall`) exclude the test evaluations and include setup and checkpoint writes; the loop's
    `s to best` counts epochs and validation only, test evaluations included (on ml-100k it comes
    out ~1 s below these at the same epoch)."""
    import torch

    from distillrec.train.metrics import metrics_from_ranks
    from distillrec.train.ranking import rank_split, student_scorer
    started, metric, epoch = time.perf_counter(), params.train.select_metric, 0

    def record(valid: dict[str, float]) -> None:
        nonlocal epoch
        epoch += 1
        if trajectory and valid[metric] <= trajectory[-1][2]:
            return
        begin = time.perf_counter()
        _, ranks = rank_split(student_scorer(model), data, "test", params.student.max_length,
                              params.evaluate.batch_size, torch.device("cpu"))
        spent = sum(row[-1] for row in trajectory)
        trajectory.append([begin - started - spent, epoch, valid[metric],
                           metrics_from_ranks(ranks, [10])["ndcg@10"], time.perf_counter() - begin])

    return record


def seconds_to(target: float, rows: list[dict]) -> str:
    """Training seconds until the validation-selected model first has test NDCG@10 >= target, per run."""
    times = [next((t for t, _, _, test in r.get("trajectory", []) if test >= target), None) for r in rows]
    return " / ".join("never" if t is None else f"{t:.0f}" for t in times)


def compare(dataset: str, model: str, seeds: list[int], baseline: str, other: str) -> dict:
    """Paired t-test over test users (per-user NDCG@10 averaged over seeds) of two tags' saved runs,
    as `evaluate` compares a distilled student with its baseline."""
    from distillrec.evaluate.evaluation import Evaluator
    from distillrec.params import EvaluateParams
    evaluator = Evaluator(OUT / dataset / "processed", EvaluateParams(latency_repeats=1), "cpu")
    for tag in (baseline, other):
        evaluator.add_runs(tag, {str(seed): OUT / "models" / f"{dataset}-{model}-{seed}{tag}" for seed in seeds})
    evaluator.compare(baseline, "ndcg@10")
    return {"dataset": dataset, "model": model, "baseline": baseline, "other": other, "seeds": seeds,
            **evaluator.table[other]["vs_baseline"]}


def summarise(rows: list[dict], target: float | None = None) -> str:
    reach = [f"s to test NDCG@10 ≥ {target} (each run)"] if target is not None else []
    header = ["dataset", "model", "runs", "test HR@10", "test NDCG@10", "test MRR@10", "test NDCG@20",
              "epochs (best)", "s/epoch", "s to best", *reach, "total s", "ms/user"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    keys = sorted({(r["dataset"], r["model"], r["tag"]) for r in rows})
    for dataset, model, tag in keys:
        group = [r for r in rows if (r["dataset"], r["model"], r["tag"]) == (dataset, model, tag)]
        def ms(values, digits=4):
            values = np.asarray(values, dtype=float)
            return f"{values.mean():.{digits}f} ± {values.std(ddof=1) if len(values) > 1 else 0:.{digits}f}"
        lines.append("| " + " | ".join([
            dataset, model + tag, str(len(group)),
            ms([r["test"]["hr@10"] for r in group]), ms([r["test"]["ndcg@10"] for r in group]),
            ms([r["test"]["mrr@10"] for r in group]), ms([r["test"]["ndcg@20"] for r in group]),
            f"{np.mean([r['fit']['epochs'] for r in group]):.0f} ({np.mean([r['fit']['best_epoch'] for r in group]):.0f})",
            ms([r["fit"]["seconds_per_epoch"] for r in group], 2), ms([r["fit"]["seconds_to_best"] for r in group], 1),
            *([seconds_to(target, group)] if target is not None else []),
            ms([r["wall"] for r in group], 1), ms([r["cost"]["latency_ms"] for r in group], 3),
        ]) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--datasets", nargs="+", default=["ml-100k", "synthetic"])
    parser.add_argument("--models", nargs="+", default=["sasrec", "gru4rec", "caser", "bert4rec"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    parser.add_argument("--set", default="{}", help='JSON overrides, e.g. {"train": {"lr": 0.001}}')
    parser.add_argument("--tag", default="")
    parser.add_argument("--target", type=float, help="also report when each run first reaches this test NDCG@10")
    parser.add_argument("--results", type=Path, default=OUT / "results.jsonl")
    parser.add_argument("--compare", nargs=2, metavar=("BASELINE_TAG", "OTHER_TAG"),
                        help="paired test of two tags' saved runs (same datasets, models, seeds); trains nothing")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return run_one(args.child)
    if args.compare:
        for dataset in args.datasets:
            for model in args.models:
                print(json.dumps(compare(dataset, model, args.seeds, *args.compare)))
        return None
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    overrides = json.loads(args.set)
    args.results.parent.mkdir(parents=True, exist_ok=True)
    for dataset in args.datasets:
        processed = prepare(dataset)
        for model in args.models:
            for seed in args.seeds:
                job = {"dataset": dataset, "processed": str(processed), "tag": args.tag,
                       "params": params_for(dataset, model, seed, overrides.get(model, overrides.get("all", {})))}
                result = subprocess.run([sys.executable, __file__, "--child", json.dumps(job)],
                                        capture_output=True, text=True, check=True)
                line = result.stdout.strip().splitlines()[-1]
                with open(args.results, "a") as handle:
                    handle.write(line + "\n")
                logging.info("%s", line[:300])
    rows = [json.loads(line) for line in args.results.read_text().splitlines()]
    print(summarise(rows, args.target))


if __name__ == "__main__":
    main()
