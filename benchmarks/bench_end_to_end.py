"""End to end at the scale of a large Amazon category: every stage's wall time and peak memory.

Generates the synthetic 5M-review Amazon-2018 category of `bench_ingest.py` (if absent), writes
`benchmarks/params/amazon-5m.yaml` (every key spelled out, dataset.path = <work>/raw) into a work
folder laid out like the repository, and runs the DAG's stage scripts there in order: ingest, split,
train_teacher@id, export_teacher@id, the baseline and the distilled student (at once, one core
each, as `dvc queue start -j 2` would), evaluate. Each stage is its own process; its peak memory
is sampled from /proc every 0.5 s and split into anonymous memory (heap: what must fit in RAM) and
file-backed memory (memory-mapped files the OS can drop and re-read: the teacher lookup's tables),
with the kernel's own ru_maxrss beside them. A stage whose output exists is skipped.

    python benchmarks/bench_end_to_end.py --reviews 5000000 --work benchmarks/out/e2e
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import yaml

from bench_ingest import CATEGORY, generate
from distillrec.params import parse_params

REPO = Path(__file__).resolve().parents[1]
PARAMS = REPO / "benchmarks" / "params" / "amazon-5m.yaml"
log = logging.getLogger("bench_end_to_end")


def _memory_kib(pid: int) -> dict[str, int]:
    """VmRSS, RssAnon and RssFile of a live process, in KiB (empty once it has exited)."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return {}
    fields = {line.split(":")[0]: line.split()[1] for line in lines if line.startswith(("VmRSS", "RssAnon", "RssFile"))}
    return {name: int(value) for name, value in fields.items()}


class Stage:
    """One stage script as a child process, its memory sampled while it runs."""

    def __init__(self, work: Path, script: str, *args: str, threads: int):
        self.name = f"{script}{'@' + '-'.join(args) if args else ''}"
        env = os.environ | {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "TQDM_DISABLE": "1"}
        self.log_file = open(work / "logs" / f"{self.name}.log", "w")
        self.started = time.perf_counter()
        self.process = subprocess.Popen([sys.executable, str(REPO / "stages" / f"{script}.py"), *args], cwd=work,
                                        stdout=self.log_file, stderr=subprocess.STDOUT, env=env)
        self.peak = {"VmRSS": 0, "RssAnon": 0, "RssFile": 0}
        self.sampler = threading.Thread(target=self._sample, daemon=True)
        self.sampler.start()

    def _sample(self) -> None:
        while self.process.poll() is None:
            for name, value in _memory_kib(self.process.pid).items():
                self.peak[name] = max(self.peak[name], value)
            time.sleep(0.5)

    def wait(self) -> dict:
        _, status, usage = os.wait4(self.process.pid, 0)
        wall = time.perf_counter() - self.started
        self.process.returncode = os.waitstatus_to_exitcode(status)
        self.sampler.join()
        self.log_file.close()
        if self.process.returncode:
            raise RuntimeError(f"{self.name} failed (exit {self.process.returncode}); see {self.log_file.name}")
        gib = 2 ** 20
        return {"stage": self.name, "wall_s": round(wall, 1), "ru_maxrss_gib": round(usage.ru_maxrss / gib, 2),
                "peak_rss_gib": round(self.peak["VmRSS"] / gib, 2), "peak_anon_gib": round(self.peak["RssAnon"] / gib, 2),
                "peak_file_gib": round(self.peak["RssFile"] / gib, 2), "user_s": round(usage.ru_utime, 1)}


def run(work: Path, calls: list[tuple], done: list[Path]) -> None:
    """Starts every call not yet done at once, waits for them, appends their rows to steps.jsonl."""
    stages = [Stage(work, *args, threads=threads) for (args, threads), finished in zip(calls, done)
              if not finished.exists()]
    for stage in stages:
        row = stage.wait()
        log.info("%s", row)
        with open(work / "steps.jsonl", "a") as handle:
            handle.write(json.dumps(row) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", type=Path, default=Path("benchmarks/out/e2e"))
    parser.add_argument("--reviews", type=int, default=5_000_000)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    work = args.work.resolve()
    (work / "logs").mkdir(parents=True, exist_ok=True)
    if not (work / "raw" / f"{CATEGORY}_5.json.gz").exists():
        generate(work / "raw", args.reviews)
    raw = yaml.safe_load(PARAMS.read_text())
    raw["dataset"]["path"] = str(work / "raw")
    params = parse_params(raw)
    (work / "params.yaml").write_text(yaml.safe_dump(params.model_dump(mode="json"), sort_keys=False))
    started = time.perf_counter()
    teacher_threads = params.teachers["id"].train.threads
    run(work, [(("ingest",), 2)], [work / "data" / "interim"])
    run(work, [(("split",), 2)], [work / "data" / "processed"])
    run(work, [(("train_teacher", "id"), teacher_threads)], [work / "models" / "teachers" / "id"])
    run(work, [(("export_teacher", "id"), teacher_threads)], [work / "data" / "teacher" / "id"])
    seed, students = str(params.train.seeds[0]), work / "models" / "students"
    run(work, [(("train_student", seed), 1), *[(("distill", method, seed), 1) for method in params.distill.runs]],
        [students / "sasrec-none" / f"seed{seed}",
         *[students / f"sasrec-{method}" / f"seed{seed}" for method in params.distill.runs]])
    run(work, [(("evaluate",), 2)], [work / "metrics" / "eval.json"])
    log.info("done in %.0f s (stages not skipped); rows in %s", time.perf_counter() - started, work / "steps.jsonl")


if __name__ == "__main__":
    main()
