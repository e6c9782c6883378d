"""Knowledge-distillation benchmark: the DAG's own stage scripts on a params file, run two at a time.

`dvc repro` runs one stage at a time; on a 2-core machine two 1-thread stages at once finish the
student matrix almost twice as fast. This driver writes the params file (relative paths resolved
against the repository root) into a work folder laid out like the repository, then runs
`stages/*.py` there in the DAG's order: ingest, split, embed_items@*, train_teacher@* and
export_teacher@* (one process per teacher), import_teacher@*, the baseline and every distilled
student per seed, evaluate and release. The numbers are therefore exactly what the DAG gives with the same params:
`python benchmarks/bench_knowledge.py <params file> --params-out params.yaml && dvc repro`.
A step whose output already exists is skipped (delete the work folder, or the output, to redo it).
The wall time of every step goes to `<work>/steps.jsonl`; the table is `<work>/metrics/report.md`.

    python benchmarks/bench_knowledge.py benchmarks/params/office.yaml --work benchmarks/out/knowledge/office
    python benchmarks/bench_knowledge.py benchmarks/params/office.yaml --work ... --set distill.dllm2rec.ed_weight=0 \
        --set 'distill.methods=[dllm2rec]' --tag no-ced --only distill
    # an ablation in <work>/runs/<tag>/ that shares the data, the teachers and (same student params) the baseline
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml

from distillrec.params import parse_params

REPO = Path(__file__).resolve().parents[1]
log = logging.getLogger("bench_knowledge")


def resolve_paths(raw: dict) -> dict:
    """Relative dataset and model paths in the params file are relative to the repository root."""
    dataset = raw.setdefault("dataset", {})
    if dataset.get("path") and not Path(dataset["path"]).is_absolute():
        dataset["path"] = str((REPO / dataset["path"]).resolve())
    for entry in raw.get("embed", {}).values():
        model = entry.get("model")
        if model and (model.startswith(".") or (REPO / model).exists()):
            entry["model"] = str((REPO / model).resolve())
    for entry in raw.get("imports", {}).values():   # imported teacher folders (rows, item_ids are inside them)
        if entry.get("path") and not Path(entry["path"]).is_absolute():
            entry["path"] = str((REPO / entry["path"]).resolve())
    return raw


def apply_sets(raw: dict, sets: list[str]) -> dict:
    """`a.b.c=value` overrides (YAML values), as `dvc exp run -S`."""
    for item in sets:
        key, _, value = item.partition("=")
        node = raw
        *parents, last = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = yaml.safe_load(value)
    return raw


def run_step(work: Path, script: str, *args: str, done: Path) -> dict | None:
    """One stage script in `work`; skipped when `done` exists."""
    name = f"{script}{'@' + '-'.join(args) if args else ''}"
    if done.exists():
        log.info("%s: %s exists, skipped", name, done)
        return None
    started = time.perf_counter()
    env = os.environ | {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    with open(work / "logs" / f"{name}.log", "w") as out:
        code = subprocess.call([sys.executable, str(REPO / "stages" / f"{script}.py"), *args], cwd=work,
                               stdout=out, stderr=subprocess.STDOUT, env=env)
    wall = time.perf_counter() - started
    if code:
        raise RuntimeError(f"{name} failed (exit {code}); see {work / 'logs' / f'{name}.log'}")
    row = {"step": name, "seconds": round(wall, 1)}
    with open(work / "steps.jsonl", "a") as handle:
        handle.write(json.dumps(row) + "\n")
    log.info("%s: %.0f s", name, wall)
    return row


def parallel(jobs: int, calls: list) -> None:
    with ThreadPoolExecutor(jobs) as pool:
        for future in [pool.submit(*call[:-1], **call[-1]) for call in calls]:
            future.result()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("params", type=Path, help="a params.yaml for the whole pipeline")
    parser.add_argument("--work", type=Path, help="work folder (the repository layout)")
    parser.add_argument("--params-out", type=Path, help="only write the complete params (every key, as the DAG "
                                                        "needs) to this file, e.g. params.yaml, and stop")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--set", action="append", default=[], help="key=value override, as dvc exp run -S")
    parser.add_argument("--tag", default="", help="put students and metrics under <work>/runs/<tag>/ "
                                                  "(an ablation sharing the data, embeddings and teachers)")
    parser.add_argument("--only", choices=["teachers", "distill"], help="stop after the teachers / skip them")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    raw = apply_sets(resolve_paths(yaml.safe_load(args.params.read_text())), args.set)
    # every key spelled out: dvc.yaml declares params key by key, and DVC refuses absent ones
    raw = parse_params(raw).model_dump(mode="json")
    if args.params_out:
        args.params_out.write_text(yaml.safe_dump(raw, sort_keys=False))
        return
    if args.work is None:
        parser.error("--work is required unless --params-out is given")
    work = args.work.resolve()
    run = work / "runs" / args.tag if args.tag else work
    for folder in (work, run):
        (folder / "logs").mkdir(parents=True, exist_ok=True)
    (run / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    if args.tag:  # the ablation reads the shared upstream outputs (and the baseline, if its student params match)
        original = parse_params(resolve_paths(yaml.safe_load(args.params.read_text()))).model_dump(mode="json")
        shared_baseline = all({k: v for k, v in raw[section].items() if k != "seeds"} ==
                              {k: v for k, v in original[section].items() if k != "seeds"}
                              for section in ("student", "train"))
        model_name = raw.get("student", {}).get("model", "sasrec")
        for shared in ("data", "models/teachers", *((f"models/students/{model_name}-none",) if shared_baseline else ())):
            target = run / shared
            target.parent.mkdir(parents=True, exist_ok=True)
            if not target.exists():
                target.symlink_to(work / shared)
    else:
        (work / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    started = time.perf_counter()
    if args.only != "distill":
        run_step(work, "ingest", done=work / "data" / "interim")
        run_step(work, "split", done=work / "data" / "processed")
        parallel(args.jobs, [(run_step, work, "embed_items", name, {"done": work / "data" / "item_text" / name})
                             for name in raw.get("embed", {})])
        parallel(args.jobs, [(teacher, work, name, {}) for name in raw.get("teachers", {})])
        parallel(args.jobs, [(run_step, work, "import_teacher", name, {"done": work / "data" / "teacher" / name})
                             for name in raw.get("imports", {})])
    if args.only == "teachers":
        return
    seeds = raw["train"]["seeds"]
    model = raw.get("student", {}).get("model", "sasrec")
    students = run / "models" / "students"
    calls = [(run_step, run, "train_student", str(seed), {"done": students / f"{model}-none" / f"seed{seed}"})
             for seed in seeds]
    calls += [(run_step, run, "distill", method, str(seed), {"done": students / f"{model}-{method}" / f"seed{seed}"})
              for method in parse_params(raw).distill.runs for seed in seeds]
    parallel(args.jobs, calls)
    shutil.rmtree(run / "metrics", ignore_errors=True)
    run_step(run, "evaluate", done=run / "metrics" / "eval.json")
    shutil.rmtree(run / "models" / "release", ignore_errors=True)
    run_step(run, "release", done=run / "models" / "release")   # the validation-chosen row, shippable
    log.info("done in %.0f s: %s", time.perf_counter() - started, run / "metrics" / "report.md")


def teacher(work: Path, name: str) -> None:
    run_step(work, "train_teacher", name, done=work / "models" / "teachers" / name)
    run_step(work, "export_teacher", name, done=work / "data" / "teacher" / name)


if __name__ == "__main__":
    main()
