"""Teacher throughput on CPU: training and export examples per second, LoRA vs full fine-tuning.

Uses the default `teachers.<name>` section of params.yaml (a model built from a config on the
split in data/processed) and varies only `finetune`; one epoch of `--sample` examples per task,
then an export of `--export` examples. Run from the repository root after `dvc repro split`:

    python benchmarks/bench_teacher_cpu.py --teacher pod --sample 2000 --export 2000
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import torch

from distillrec.params import Seq2SeqTeacherParams, load_params, validate_teacher
from distillrec.teachers.registry import teacher_class
from distillrec.teachers.data import TeacherData
from distillrec.teachers.export import select_examples

OUT = Path("benchmarks/out/teacher_cpu")


def measure(cfg: Seq2SeqTeacherParams, data: TeacherData, n_export: int) -> dict:
    teacher = teacher_class(cfg.family).create(cfg, data)
    name = f"{cfg.family}-{cfg.model.finetune}-{time.strftime('%H%M%S')}"
    started = time.perf_counter()
    state = teacher.fit(data, OUT / "ckpt" / name, OUT / "live" / name, name)
    fit_seconds = state.seconds
    examples = select_examples(data.split.examples, "all").head(n_export)
    started = time.perf_counter()
    with torch.no_grad():
        tables = teacher.export(data, examples, cfg.export)
    export_seconds = time.perf_counter() - started
    trained = cfg.train.sample * len(cfg.model.tasks if cfg.family == "seq2seq" else [1])
    trainable = sum(p.numel() for p in teacher.module.parameters() if p.requires_grad)
    return {"family": cfg.family, "finetune": cfg.model.finetune, "trainable_parameters": trainable,
            "parameters": sum(p.numel() for p in teacher.module.parameters()),
            "train_examples": trained, "train_seconds": fit_seconds, "train_ex_per_s": trained / fit_seconds,
            "export_examples": examples.height, "export_seconds": export_seconds,
            "export_ex_per_s": examples.height / export_seconds,
            "explanations": 0 if tables.explanations is None else tables.explanations.height,
            "threads": torch.get_num_threads()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", default="pod")
    parser.add_argument("--sample", type=int, default=2000, help="training examples per task (one epoch)")
    parser.add_argument("--export", type=int, default=2000, help="examples exported")
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)
    base = load_params().teachers[args.teacher].model_dump(mode="json")
    data = TeacherData.load("data/processed")
    OUT.mkdir(parents=True, exist_ok=True)
    rows = []
    for finetune in ("full", "lora"):
        raw = base | {"model": base["model"] | {"finetune": finetune}}
        raw["train"] = raw["train"] | {"epochs": 1, "sample": args.sample, "device": "cpu"}
        rows.append(measure(validate_teacher(raw), data, args.export))
        with open(OUT / "results.jsonl", "a") as handle:
            handle.write(json.dumps(rows[-1]) + "\n")
    print("| finetune | trainable / all params | train ex/s | export ex/s (top-K + state + explanations) |")
    print("|---|---|---|---|")
    for r in rows:
        print(f"| {r['finetune']} | {r['trainable_parameters']:,} / {r['parameters']:,} | {r['train_ex_per_s']:.0f} "
              f"| {r['export_ex_per_s']:.0f} |")


if __name__ == "__main__":
    main()
