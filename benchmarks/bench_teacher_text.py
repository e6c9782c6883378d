"""Text teacher (UniSRec-like, all-MiniLM-L6-v2) on ml-100k: quality, cost, and items unseen in training.

Splits (RecBole protocol: no k-core, chronological leave-one-out), written once under
benchmarks/out/teacher_text/:
- `full`: ml-100k as is.
- `holdout`: a random 10% of the items (seed 0) removed from every sequence except where one is a
  user's last (test) interaction, so those items occur only as test targets: never in a training
  target, a history or a validation target.

Each run is a fresh process with 1 torch thread: fit (validation-NDCG selection), export (10
training positions per user + valid + test, validated by `write_export`), then full-catalogue
ranking of valid/test with the evaluator's student path (HR/NDCG@10, ms per user) and, on `holdout`,
the test examples whose target is a held-out item. One JSON line per run, then a markdown table.

    python benchmarks/bench_teacher_text.py --split full --runs text-lora text-frozen
    python benchmarks/bench_teacher_text.py --split holdout --runs text-frozen text-lora id
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
OUT = REPO / "benchmarks" / "out" / "teacher_text"
MINILM = SHARED / "models" / "all-MiniLM-L6-v2"
DATASET = {"dataset": {"source": "recbole", "name": "ml-100k", "path": str(SHARED / "data" / "ml-100k")},
           "split": {"user_core": 0, "item_core": 0}}
HOLDOUT_SHARE, HOLDOUT_SEED = 0.1, 0

TRAIN = {"lr": 0.001, "batch_size": 64, "epochs": 30, "patience": 5, "device": "cpu", "threads": 1}
EXPORT = {"top_k": 20, "train_positions": 10, "batch_size": 256}
SASREC = {"hidden": 64, "layers": 2, "heads": 2, "dropout": 0.5, "max_length": 50}
TEXT = {"family": "text", "train": TRAIN | {"lr": 0.003, "encoder_lr": 0.0003}, "export": EXPORT,
        "model": SASREC | {"base_model": str(MINILM), "max_text_tokens": 32, "grad_items": 64}}
RUNS = {
    "text-lora": TEXT | {"model": TEXT["model"] | {"finetune": "lora"}, "train": TEXT["train"] | {"epochs": 8}},
    "text-frozen": TEXT | {"model": TEXT["model"] | {"finetune": "frozen"}},
    "id": {"family": "id", "train": TRAIN | {"batch_size": 16}, "export": EXPORT, "model": SASREC | {"model": "sasrec"}},
}


def prepare(split: str) -> Path:
    """data/processed of `split` (and its interim), built once."""
    from distillrec.data.ingest import run_ingest
    from distillrec.data.split import run_split
    from distillrec.params import parse_params

    root, params = OUT / split, parse_params(DATASET)
    if (root / "processed" / "sequences.parquet").exists():
        return root / "processed"
    full = OUT / "full" / "interim"
    if not (full / "interactions.parquet").exists():
        run_ingest(params, full)
    if split == "holdout":
        frame = pl.read_parquet(full / "interactions.parquet").with_row_index("order")
        items = frame["item_id"].unique().sort().to_numpy()
        rng = np.random.default_rng(HOLDOUT_SEED)
        held = rng.choice(items, size=round(HOLDOUT_SHARE * len(items)), replace=False).tolist()
        last = frame.sort("user_id", "timestamp", "order").group_by("user_id").agg(pl.col("order").last())["order"]
        keep = ~pl.col("item_id").is_in(held) | pl.col("order").is_in(last.implode())
        (root / "interim").mkdir(parents=True, exist_ok=True)
        frame.filter(keep).drop("order").write_parquet(root / "interim" / "interactions.parquet")
        pl.read_parquet(full / "items.parquet").write_parquet(root / "interim" / "items.parquet")
        (root / "held_out.json").write_text(json.dumps(sorted(held)))
    run_split(params, root / "interim", root / "processed", root / "data.json")
    return root / "processed"


def run_one(job: dict) -> dict:
    """Child process: fit, export and rank one teacher."""
    import torch

    torch.set_num_threads(1)
    from distillrec.evaluate.evaluation import Evaluator
    from distillrec.params import EvaluateParams, validate_teacher
    from distillrec.teachers.registry import teacher_class
    from distillrec.teachers.data import TeacherData
    from distillrec.teachers.export import select_examples, write_export
    from distillrec.train.metrics import metrics_from_ranks
    from distillrec.train.ranking import rank_split, student_scorer

    cfg = validate_teacher(job["config"])
    processed, name = Path(job["processed"]), f"{job['split']}-{job['run']}{job['tag']}"
    data = TeacherData.load(processed)
    shutil.rmtree(OUT / "ckpt" / name, ignore_errors=True)   # always a fresh fit: never resume a finished one
    started = time.perf_counter()
    teacher = teacher_class(cfg.family).create(cfg, data)
    state = teacher.fit(data, OUT / "ckpt" / name, OUT / "live" / name, name)
    fit_wall = time.perf_counter() - started
    examples = select_examples(data.split.examples, cfg.export.train_positions)
    started = time.perf_counter()
    with torch.no_grad():
        tables = teacher.export(data, examples, cfg.export).gathered()
    export_wall = time.perf_counter() - started
    with tempfile.TemporaryDirectory() as folder:
        write_export(folder, tables, data.split.examples, data.n_items, {"name": name})
    model = teacher.module.eval()
    length = cfg.model.max_length
    evaluator = Evaluator(processed, EvaluateParams(ks=[10, 20], latency_repeats=200), "cpu")
    evaluator.add(name, student_scorer(model), length, {})
    row = evaluator.table[name]
    result = {"split": job["split"], "run": job["run"], "tag": job["tag"], "valid": row["valid"], "test": row["test"],
              "fit": state.summary(), "fit_wall": fit_wall, "export_wall": export_wall,
              "export_examples": examples.height, "latency_ms": row["cost"]["latency_ms"],
              "encoder_passes": getattr(getattr(teacher, "encoder", None), "passes", None),
              "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
              "threads": torch.get_num_threads()}
    if job["split"] == "holdout":
        held = json.loads((processed.parent / "held_out.json").read_text())
        held_idx = data.split.item_map.filter(pl.col("item_id").is_in(held))["item_idx"].to_numpy()
        _, ranks = rank_split(student_scorer(model), data.split, "test", length, 1024, teacher.device)
        unseen = torch.as_tensor(np.isin(data.split.targets("test")[2], held_idx))
        result["unseen"] = {"examples": int(unseen.sum()), **metrics_from_ranks(ranks[unseen], [10, 100]),
                            "median_rank": float(ranks[unseen].double().median()), "items": data.n_items,
                            "seen": {**metrics_from_ranks(ranks[~unseen], [10, 100]),
                                     "median_rank": float(ranks[~unseen].double().median())}}
    return result


def summarise(rows: list[dict]) -> str:
    lines = ["| split | run | test HR@10 | test NDCG@10 | unseen-item test HR@10 / HR@100 / median rank (n) "
             "| epochs (best) "
             "| train wall s | encoder passes | export s (examples) | ms/user |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        u = r.get("unseen")
        unseen = f"{u['hr@10']:.3f} / {u['hr@100']:.3f} / {u['median_rank']:.0f} ({u['examples']})" if u else "–"
        lines.append(f"| {r['split']} | {r['run']}{r['tag']} | {r['test']['hr@10']:.4f} | {r['test']['ndcg@10']:.4f} "
                     f"| {unseen} | {r['fit']['epochs']} ({r['fit']['best_epoch']}) | {r['fit_wall']:.0f} "
                     f"| {r['encoder_passes'] if r['encoder_passes'] is not None else '–'} "
                     f"| {r['export_wall']:.1f} ({r['export_examples']}) | {r['latency_ms']:.2f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--split", choices=["full", "holdout"], default="full")
    parser.add_argument("--runs", nargs="+", choices=list(RUNS), default=["text-lora", "text-frozen"])
    parser.add_argument("--set", default="{}", help='JSON overrides per section, e.g. {"model": {"grad_items": 32}}')
    parser.add_argument("--tag", default="")
    parser.add_argument("--results", type=Path, default=OUT / "results.jsonl")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_one(json.loads(args.child))))
        return
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if not MINILM.is_dir():
        sys.exit(f"{MINILM} is absent: the benchmark needs the shared all-MiniLM-L6-v2 folder")
    processed = prepare(args.split)
    overrides = json.loads(args.set)
    args.results.parent.mkdir(parents=True, exist_ok=True)
    rows = []
    for run in args.runs:
        config = {key: value | overrides.get(key, {}) if isinstance(value, dict) else value
                  for key, value in RUNS[run].items()}
        job = {"split": args.split, "run": run, "tag": args.tag, "processed": str(processed), "config": config}
        result = subprocess.run([sys.executable, __file__, "--child", json.dumps(job)], capture_output=True, text=True,
                                env={**os.environ, "OMP_NUM_THREADS": "1"})
        if result.returncode:
            sys.exit(f"{run} failed:\n{result.stderr[-3000:]}")
        rows.append(json.loads(result.stdout.strip().splitlines()[-1]))
        with open(args.results, "a") as handle:
            handle.write(json.dumps(rows[-1]) + "\n")
        logging.info("%s: %s", run, summarise(rows[-1:]).splitlines()[-1])
    print(summarise(rows))


if __name__ == "__main__":
    main()
