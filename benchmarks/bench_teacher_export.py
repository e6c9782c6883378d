"""Causal teacher export cost: one-pass `scoring` vs BIGRec `grounding` (beam search per prefix).

Trains one causal teacher (a tiny config-built LLaMA, or SmolLM2-135M from ../shared with LoRA),
then exports the same examples (every example of the first --users users) in both ranking modes
and prints forward passes, wall time per exported example and HR@K of each, as a markdown table.
A pass is one sequence through the model (a decoder step of one example's beams counts as one).

    python benchmarks/bench_teacher_export.py --model tiny --epochs 3
    python benchmarks/bench_teacher_export.py --model smollm2 --users 4 --epochs 1 --sample 64
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
OUT = REPO / "benchmarks" / "out" / "teacher_causal"
SMOLLM = SHARED / "models" / "smollm2-135m-instruct" / "SmolLM2-135M-Instruct.Q4_1.gguf"


def prepare(processed: str | None) -> Path:
    """The given split, or the small synthetic dataset of the tests (with titles)."""
    if processed:
        return Path(processed)
    from distillrec.data.ingest import run_ingest
    from distillrec.data.split import run_split
    from distillrec.params import DatasetParams, Params, SyntheticParams

    root = OUT / "synthetic"
    if not (root / "processed" / "sequences.parquet").exists():
        params = Params(dataset=DatasetParams(synthetic=SyntheticParams(
            n_users=120, n_items=60, n_clusters=4, min_length=6, max_length=20)))
        run_ingest(params, root / "interim")
        run_split(params, root / "interim", root / "processed", root / "data.json")
    return root / "processed"


def teacher_params(args: argparse.Namespace) -> dict:
    raw = {"family": "causal",
           "model": {"finetune": "lora", "max_history": args.max_history, "max_title_tokens": args.max_title_tokens},
           "train": {"epochs": args.epochs, "batch_size": args.batch_size, "sample": args.sample, "lr": args.lr,
                     "valid_examples": args.valid_examples, "device": args.device, "patience": args.epochs,
                     "threads": args.threads},
           "export": {"top_k": args.top_k, "train_positions": "all", "batch_size": args.batch_size,
                      "grounding_beams": args.beams}}
    if args.model == "tiny":
        raw["model"]["config"] = {"d_model": 64, "layers": 2, "heads": 4, "d_ff": 128, "vocab_size": 400}
    else:
        raw["model"]["base_model"] = str(SMOLLM)
    return raw


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=["tiny", "smollm2"], default="tiny")
    parser.add_argument("--processed", help="a split folder (default: the synthetic test dataset)")
    parser.add_argument("--users", type=int, default=20, help="export every example of the first N users")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--sample", type=int, default=None)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--valid-examples", type=int, default=64)
    parser.add_argument("--max-history", type=int, default=10)
    parser.add_argument("--max-title-tokens", type=int, default=16)
    parser.add_argument("--beams", type=int, default=4)
    parser.add_argument("--top-k", type=int, default=10)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    import polars as pl
    import torch

    from distillrec.params import validate_teacher
    from distillrec.teachers.causal import CausalTeacher
    from distillrec.teachers.data import TeacherData

    if args.model == "smollm2" and not SMOLLM.is_file():
        raise SystemExit(f"{SMOLLM} is absent")
    if args.threads:
        torch.set_num_threads(args.threads)
    data = TeacherData.load(prepare(args.processed))
    cfg = validate_teacher(teacher_params(args))
    started = time.perf_counter()
    teacher = CausalTeacher.create(cfg, data)
    created = time.perf_counter() - started
    fit_seconds = 0.0
    if args.epochs:
        started = time.perf_counter()
        name = f"{args.model}-{time.strftime('%Y%m%d-%H%M%S')}"
        state = teacher.fit(data, OUT / "ckpt" / name, OUT / "live" / name, name)
        fit_seconds = time.perf_counter() - started
        logging.info("fit: %s", state.history)
    users = data.split.examples["user_idx"].unique().sort()[:args.users]
    examples = data.split.examples.filter(pl.col("user_idx").is_in(users.to_list())).sort("user_idx", "position")
    targets = examples["item_idx"].to_numpy()
    rows = []
    for ranking in ("scoring", "grounding"):
        export = cfg.export.model_copy(update={"ranking": ranking})
        started = time.perf_counter()
        with torch.no_grad():
            tables = teacher.export(data, examples, export)
        seconds = time.perf_counter() - started
        hits = (tables.topk.items == targets[:, None]).any(axis=1)
        info = tables.info
        rows.append({"model": args.model, "ranking": ranking, "examples": examples.height,
                     "passes": info["forward_passes"], "passes_per_example": info["passes_per_example"],
                     "seconds": seconds, "ms_per_example": 1000 * seconds / examples.height,
                     f"hr@{args.top_k}": float(hits.mean()),
                     f"test_hr@{args.top_k}": float(hits[(examples["split"] == "test").to_numpy()].mean()),
                     "distance": info.get("distance"), "device": str(teacher.device),
                     "threads": torch.get_num_threads(), "create_s": created, "fit_s": fit_seconds})
    OUT.mkdir(parents=True, exist_ok=True)
    with open(OUT / "results.jsonl", "a") as fh:
        for row in rows:
            fh.write(json.dumps(row) + "\n")
    k = args.top_k
    print(f"\n| model | ranking | examples | passes | passes/example | ms/example | HR@{k} (all) | HR@{k} (test) |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['ranking']} | {r['examples']} | {r['passes']} | {r['passes_per_example']:.3f} "
              f"| {r['ms_per_example']:.1f} | {r[f'hr@{k}']:.3f} | {r[f'test_hr@{k}']:.3f} |")
    ratio = rows[1]["passes"] / rows[0]["passes"]
    speed = rows[1]["seconds"] / rows[0]["seconds"]
    print(f"\ngrounding / scoring: {ratio:.1f}x the forward passes, {speed:.1f}x the wall time "
          f"(target: >= 20x fewer passes for scoring)")
    print(f"grounding raw distances: {json.dumps(rows[1]['distance'])}")


if __name__ == "__main__":
    main()
