"""Distillation benchmark on ml-100k: teachers, then students per method and seed, with paired tests.

Every run is a fresh process with 1 torch thread (../shared/reference/BENCHMARKING.md); `--jobs 2`
runs two at a time on a 2-core machine. Results are one JSON line per run in
`benchmarks/out/distill/results.jsonl`; each run's per-user test ranks are kept so the summary can
pair users against the baseline of the same student and seeds (the evaluate stage's paired t-test).

    python benchmarks/bench_distill.py teachers --names sasrec-l gru4rec-l
    python benchmarks/bench_distill.py students --models sasrec --methods none logit_kd dllm2rec \
        --teachers sasrec-l --seeds 1 2 3 --jobs 2
    python benchmarks/bench_distill.py summary
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_students import params_for, prepare  # noqa: E402

OUT = Path(__file__).resolve().parent / "out" / "distill"
DATASET = "ml-100k"
# the students benchmark's tuned ml-100k settings; patience 10 keeps the matrix affordable on 2 cores
STUDENT_SETTINGS = {
    "sasrec": {"student": {"dropout": 0.5}, "train": {"batch_size": 16, "lr": 0.001, "patience": 10}},
    "gru4rec": {"student": {"layers": 1, "dropout": 0.3},
                "train": {"batch_size": 64, "lr": 0.002, "window_stride": 10, "patience": 10}},
    "caser": {"student": {"dropout": 0.5}, "train": {"batch_size": 16, "lr": 0.001, "patience": 10}},
}
_TRAIN = {"lr": 0.001, "batch_size": 16, "epochs": 200, "patience": 10, "seed": 7, "device": "cpu", "threads": 1}
# teachers our CPU trains in minutes; `weak` is deliberately worse than the student
TEACHERS = {
    "sasrec-l": {"family": "id", "train": _TRAIN,
                 "id": {"model": "sasrec", "hidden": 128, "layers": 2, "heads": 2, "dropout": 0.5, "max_length": 50}},
    "gru4rec-l": {"family": "id", "train": _TRAIN | {"batch_size": 64, "lr": 0.002},
                  "id": {"model": "gru4rec", "hidden": 128, "layers": 1, "dropout": 0.3, "max_length": 50,
                         "window_stride": 10}},
    "caser-l": {"family": "id", "train": _TRAIN,
                "id": {"model": "caser", "hidden": 128, "layers": 1, "dropout": 0.5, "max_length": 50}},
    "weak": {"family": "id", "train": _TRAIN | {"epochs": 1, "lr": 0.0002},
             "id": {"model": "sasrec", "hidden": 16, "layers": 1, "heads": 1, "dropout": 0.5, "max_length": 50}},
}
EXPORT = {"top_k": 100, "train_positions": "all", "batch_size": 256}


def bench_params(model: str, seed: int, teachers: list[str], overrides: dict) -> dict:
    raw = params_for(DATASET, model, seed, STUDENT_SETTINGS.get(model, {}))
    raw["teachers"] = {name: TEACHERS[name] | {"export": EXPORT} for name in teachers}
    distill = overrides.get("distill", {})
    raw["distill"] = raw["distill"] | {"teachers": teachers} | {
        k: raw["distill"][k] | v if isinstance(v, dict) else v for k, v in distill.items()}
    for section in ("student", "train"):
        raw[section] = raw[section] | overrides.get(section, {})
    return raw


def child_teacher(job: dict) -> dict:
    import torch

    from distillrec.evaluate.evaluation import Evaluator
    from distillrec.params import parse_params
    from distillrec.teachers.run import export_teacher, train_teacher
    torch.set_num_threads(1)
    params, name = parse_params(job["params"]), job["name"]
    started = time.perf_counter()
    summary = train_teacher(params, name, job["processed"], OUT / "teachers" / name, OUT / "ckpt" / f"teacher-{name}",
                            OUT / "live" / f"teacher-{name}")
    export = export_teacher(params, name, job["processed"], OUT / "teachers" / name, OUT / "exports" / name)
    evaluator = Evaluator(job["processed"], params.evaluate, "cpu")
    evaluator.add_teacher(name, OUT / "exports" / name)
    row = evaluator.table[name]
    return {"kind": "teacher", "name": name, "test": row["test"], "valid": row["valid"], "fit": summary["fit"],
            "parameters": summary["parameters"], "export_seconds": export["export"]["seconds"],
            "ms_per_example": export["export"]["ms_per_example"], "wall": time.perf_counter() - started}


def child_student(job: dict) -> dict:
    import torch

    from distillrec.evaluate.evaluation import Evaluator
    from distillrec.params import parse_params
    from distillrec.distill.run import distill_student
    torch.set_num_threads(1)
    params, method, seed = parse_params(job["params"]), job["method"], job["seed"]
    name = job["run"]
    started = time.perf_counter()
    summary = distill_student(params, job["processed"], OUT / "models" / name, OUT / "ckpt" / name, OUT / "live" / name,
                            method=method, seed=seed, teachers_root=OUT / "exports")
    wall = time.perf_counter() - started
    evaluator = Evaluator(job["processed"], params.evaluate, "cpu")
    evaluator.add_student(name, OUT / "models" / name)
    np.save(OUT / "ranks" / f"{name}.npy", evaluator.ranks[name])
    row = evaluator.table[name]
    return {"kind": "student", "run": name, "model": params.student.model, "method": method, "seed": seed,
            "teachers": job["teachers"], "tag": job["tag"], "test": row["test"], "valid": row["valid"],
            "fit": summary["fit"], "wall": wall, "cost": row["cost"]}


def launch(job: dict) -> dict:
    result = subprocess.run([sys.executable, __file__, "child", json.dumps(job)], capture_output=True, text=True)
    if result.returncode:
        raise RuntimeError(f"{job.get('run', job.get('name'))} failed:\n{result.stderr[-3000:]}")
    row = json.loads(result.stdout.strip().splitlines()[-1])
    with open(OUT / "results.jsonl", "a") as handle:
        handle.write(json.dumps(row) + "\n")
    logging.info("%s: test ndcg@10 %.4f (%.0f s)", row.get("run", row.get("name")), row["test"]["ndcg@10"],
                 row["wall"])
    return row


def run_name(model: str, method: str, teachers: list[str], tag: str, seed: int) -> str:
    return f"{model}-{method}" + (f"-{'+'.join(teachers)}" if method != "none" else "") + f"{tag}-s{seed}"


def summarise(rows: list[dict]) -> str:
    from distillrec.evaluate.compare import paired_comparison
    students = [r for r in rows if r["kind"] == "student"]
    lines = ["| student | method | teachers | runs | test HR@10 | test NDCG@10 | gain | p | epochs (best) | s/epoch | total s |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in sorted((r for r in rows if r["kind"] == "teacher"), key=lambda r: r["name"]):
        lines.append(f"| teacher {r['name']} | | | 1 | {r['test']['hr@10']:.4f} | {r['test']['ndcg@10']:.4f} | | | "
                     f"{r['fit']['epochs']} ({r['fit']['best_epoch']}) | {r['fit']['seconds_per_epoch']:.2f} | "
                     f"{r['wall']:.0f} |")
    groups: dict[tuple, dict[int, dict]] = {}
    for r in students:  # a rerun of the same run replaces the earlier line
        key = (r["model"], r["method"], "+".join(r["teachers"]) if r["method"] != "none" else "", r["tag"])
        groups.setdefault(key, {})[r["seed"]] = r
    def ms(values: list[float], digits: int = 4) -> str:
        v = np.asarray(values, dtype=float)
        return f"{v.mean():.{digits}f} ± {v.std(ddof=1) if len(v) > 1 else 0:.{digits}f}"
    for key in sorted(groups):
        runs = groups[key]
        base = groups.get((key[0], "none", "", ""), {})
        seeds = sorted(set(runs) & set(base))
        gain, p = "", ""
        if key[1] != "none" and seeds:
            cmp = paired_comparison([np.load(OUT / "ranks" / f"{base[s]['run']}.npy") for s in seeds],
                                    [np.load(OUT / "ranks" / f"{runs[s]['run']}.npy") for s in seeds], "ndcg@10")
            gain, p = f"{100 * cmp['gain']:+.1f}% ({len(seeds)} seeds)", f"{cmp['p_value']:.3f}"
        group = list(runs.values())
        lines.append("| " + " | ".join([
            key[0], key[1] + key[3], key[2], str(len(group)),
            ms([r["test"]["hr@10"] for r in group]), ms([r["test"]["ndcg@10"] for r in group]), gain, p,
            f"{np.mean([r['fit']['epochs'] for r in group]):.0f} ({np.mean([r['fit']['best_epoch'] for r in group]):.0f})",
            ms([r["fit"]["seconds_per_epoch"] for r in group], 2), ms([r["wall"] for r in group], 0)]) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command", required=True)
    t = sub.add_parser("teachers")
    t.add_argument("--names", nargs="+", default=list(TEACHERS))
    s = sub.add_parser("students")
    s.add_argument("--models", nargs="+", default=["sasrec"])
    s.add_argument("--methods", nargs="+", default=["none", "dllm2rec", "prmkd", "feature", "logit_kd"])
    s.add_argument("--teachers", nargs="+", default=["sasrec-l"])
    s.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    s.add_argument("--set", default="{}", help='JSON overrides, e.g. {"distill": {"dllm2rec": {"ed_weight": 0}}}')
    s.add_argument("--tag", default="")
    for p in (t, s):
        p.add_argument("--jobs", type=int, default=2)
    sub.add_parser("summary")
    c = sub.add_parser("child")
    c.add_argument("job")
    args = parser.parse_args()
    if args.command == "child":
        job = json.loads(args.job)
        print(json.dumps(child_teacher(job) if job["kind"] == "teacher" else child_student(job)))
        return
    if args.command == "summary":
        print(summarise([json.loads(line) for line in (OUT / "results.jsonl").read_text().splitlines()]))
        return
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    (OUT / "ranks").mkdir(parents=True, exist_ok=True)
    processed = str(prepare(DATASET))
    if args.command == "teachers":
        jobs = [{"kind": "teacher", "name": n, "processed": processed, "params": bench_params("sasrec", 1, [n], {})}
                for n in args.names]
    else:
        overrides = json.loads(args.set)
        jobs = [{"kind": "student", "processed": processed, "method": method, "seed": seed, "tag": args.tag,
                 "teachers": args.teachers, "run": run_name(model, method, args.teachers, args.tag, seed),
                 "params": bench_params(model, seed, args.teachers, overrides)}
                for model in args.models for method in args.methods for seed in args.seeds]
    with ThreadPoolExecutor(args.jobs) as pool:
        list(pool.map(launch, jobs))


if __name__ == "__main__":
    main()
