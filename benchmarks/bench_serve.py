"""Serving under load: `distillrec serve` on loopback, driven by wrk (closed loop, bounded in time).

For each release folder and each served model (the student on ONNX Runtime and on torch, the
teacher folded beside it on both), the server starts on CPU 0 and wrk (one thread, `c`
connections that each send the next request when the last one is answered) runs on CPU 1, so the
load generator never competes with the server for a core. Every request is `POST /recommend` with
one real history (a test user's items before the target, from the run's data/processed),
cycling through 512 of them, k = 10.

Reported per (release, model, concurrency): requests/s, p50/p90/p99 latency (wrk's), non-2xx
answers, the server's peak RSS (VmHWM) and its cold start (process start -> first answered
request, median of 3 starts). Rows go to --out (JSON lines) and a markdown table to stdout.

    python benchmarks/bench_serve.py --release models/release --data data/processed --label default
    python benchmarks/bench_serve.py --release benchmarks/out/serve/office/models/release \
        --data benchmarks/out/serve/office/data/processed --label office

Needs `wrk` on PATH (Debian: apt-get install wrk) and at least 2 CPUs. `--profile` samples the
server with py-spy (pip install py-spy) during the student's highest-concurrency run of the first
backend and says where its CPU time goes (model forward, ranking, validation, JSON, HTTP, ...).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import polars as pl

REPO = Path(__file__).resolve().parents[1]
LUA = r"""
local bodies = {}
local i = 0
init = function(args)
  local f = assert(io.open(args[1], "r"))
  for line in f:lines() do bodies[#bodies + 1] = line end
  f:close()
end
request = function()
  i = i % #bodies + 1
  return wrk.format("POST", "/recommend", {["Content-Type"] = "application/json"}, bodies[i])
end
done = function(summary, latency, requests)
  io.write(string.format(
    '{"requests": %d, "duration_us": %d, "p50_us": %d, "p90_us": %d, "p99_us": %d, "mean_us": %.1f, ' ..
    '"non_2xx": %d, "socket_errors": %d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.mean, summary.errors.status,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout))
end
"""


def histories(data: Path, item_map: Path, count: int, seed: int = 0) -> list[list[str]]:
    """`count` test users' histories (every item before the test target), ids as in the raw data."""
    sequences = pl.read_parquet(data / "sequences.parquet")
    ids = dict(pl.read_parquet(item_map).select("item_idx", "item_id").iter_rows())
    rows = sequences["items"].to_list()
    rng = np.random.default_rng(seed)
    picked = rng.choice(len(rows), size=min(count, len(rows)), replace=False)
    return [[ids[i] for i in rows[r][:-1]] for r in picked if len(rows[r]) > 1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(folder: Path, backend: str, port: int, cpu: str, extra: list[str] = ()) -> tuple[subprocess.Popen, float]:
    """The server pinned to `cpu`; returns it and its cold start (s): spawn -> first answered request."""
    cmd = ["taskset", "-c", cpu, sys.executable, "-m", "distillrec", "serve", "--model", str(folder),
           "--backend", backend, "--port", str(port), "--no-teacher", "--threads", "1", *extra]
    body = {"histories": [[first_item(folder)]], "k": 10}
    began = time.perf_counter()
    server = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    while True:
        if server.poll() is not None:
            raise RuntimeError(f"the server exited: {server.stderr.read()[-2000:]}")
        try:
            if httpx.post(f"http://127.0.0.1:{port}/recommend", json=body, timeout=1).status_code == 200:
                return server, time.perf_counter() - began
        except httpx.TransportError:
            pass
        time.sleep(0.005)
        if time.perf_counter() - began > 60:
            server.kill()
            raise RuntimeError("the server did not answer within 60 s")


def first_item(folder: Path) -> str:
    return pl.read_parquet(folder / "item_map.parquet").sort("item_idx")["item_id"][0]


def peak_rss_mb(pid: int) -> float:
    """Peak resident memory (VmHWM) of the server and its worker processes, summed (MiB)."""
    total, todo = 0.0, [pid]
    while todo:
        current = todo.pop()
        proc = Path(f"/proc/{current}")
        for line in (proc / "status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                total += int(line.split()[1]) / 1024
        for task in (proc / "task").iterdir():
            todo += [int(child) for child in (task / "children").read_text().split()]
    return total


def stop(server: subprocess.Popen) -> None:
    server.terminate()
    try:
        server.wait(timeout=20)
    except subprocess.TimeoutExpired:
        server.kill()


# where a sampled stack's time goes: the first category that matches, from the innermost frame out;
# py-spy's frames read "function (path:line)": "name (" keys match a function, the others a path
CATEGORIES = [
    ("model forward (ONNX Runtime / torch)", ("scores (", "score (", "onnxruntime", "torch/")),
    ("ranking the catalogue (numpy top-k)", ("rank (",)),
    ("ids -> indices, padding", ("encode (", "pad (")),
    ("request validation (pydantic)", ("pydantic",)),
    ("JSON encode/decode", ("json/",)),
    ("FastAPI / Starlette routing", ("fastapi/", "starlette/")),
    ("HTTP parsing and transport (uvicorn, httptools)", ("uvicorn/", "httptools")),
    ("event loop (asyncio, uvloop)", ("asyncio/", "uvloop")),
]


def profile(pid: int, seconds: int, out: Path) -> dict[str, float]:
    """Shares of the server's sampled (busy) time per category, from py-spy's collapsed stacks."""
    subprocess.run(["py-spy", "record", "-p", str(pid), "-d", str(seconds), "-r", "250", "-f", "raw",
                    "-o", str(out), "--nonblocking"], check=True, capture_output=True)
    totals: dict[str, float] = {}
    for line in out.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")[::-1]
        name = next((label for frame in frames for label, keys in CATEGORIES
                     if any(frame.startswith(k) if k.endswith(" (") else k in frame for k in keys)), "other")
        totals[name] = totals.get(name, 0) + int(count)
    total = sum(totals.values()) or 1
    return {name: count / total for name, count in sorted(totals.items(), key=lambda kv: -kv[1])}


def run_wrk(port: int, concurrency: int, seconds: int, bodies: Path, script: Path) -> dict:
    out = subprocess.run(["taskset", "-c", "1", "wrk", "-t1", f"-c{concurrency}", f"-d{seconds}s", "--timeout", "5s",
                          "-s", str(script), f"http://127.0.0.1:{port}/recommend", "--", str(bodies)],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--release", type=Path, required=True, help="a release folder (the release stage's output)")
    parser.add_argument("--data", type=Path, required=True, help="the run's data/processed (real test histories)")
    parser.add_argument("--label", required=True)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 64])
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--backends", nargs="+", default=["onnx", "torch"])
    parser.add_argument("--cold-starts", type=int, default=3)
    parser.add_argument("--server-cpus", default="0", help="CPUs of the server (taskset list); wrk runs on CPU 1")
    parser.add_argument("--serve-flag", action="append", default=[], help="a flag for distillrec serve, e.g. "
                        "--serve-flag=--max-wait-ms=0 (default: the release's serve settings)")
    parser.add_argument("--models", nargs="+", default=["student", "teacher"])
    parser.add_argument("--profile", action="store_true", help="py-spy profile of the student's top-concurrency run")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "out" / "serve" / "results.jsonl")
    args = parser.parse_args()
    if shutil.which("wrk") is None or len(os.sched_getaffinity(0)) < 2:
        sys.exit("needs wrk on PATH (apt-get install wrk) and 2 CPUs")
    models = {"student": args.release} if "student" in args.models else {}
    if "teacher" in args.models and (args.release / "teacher" / "config.json").is_file():
        models["teacher"] = args.release / "teacher"
    work = Path(tempfile.mkdtemp())
    bodies, script = work / "bodies.jsonl", work / "bench.lua"
    script.write_text(LUA)
    sample = histories(args.data, args.release / "item_map.parquet", 512)
    bodies.write_text("".join(json.dumps({"histories": [h], "k": 10}) + "\n" for h in sample))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    rows = []
    for name, folder in models.items():
        config = json.loads((folder / "config.json").read_text())
        for backend in args.backends:
            colds = []
            for _ in range(args.cold_starts):
                server, cold = start(folder, backend, free_port(), args.server_cpus, args.serve_flag)
                colds.append(cold)
                stop(server)
            port = free_port()
            server, _ = start(folder, backend, port, args.server_cpus, args.serve_flag)
            try:
                for concurrency in args.concurrency:
                    run_wrk(port, concurrency, 2, bodies, script)         # warm-up
                    sampled = (args.profile and name == "student" and backend == args.backends[0]
                               and concurrency == max(args.concurrency))
                    profiler = (ThreadPoolExecutor(1).submit(profile, server.pid, args.seconds - 1, work / "stacks.txt")
                                if sampled else None)
                    result = run_wrk(port, concurrency, args.seconds, bodies, script)
                    if profiler is not None:
                        shares = profiler.result()
                        print(f"where the server's busy time goes ({args.label}, {backend}, c={concurrency}):")
                        for label, share in shares.items():
                            print(f"  {100 * share:5.1f} %  {label}")
                        with open(args.out.with_suffix(".profile.jsonl"), "a") as handle:
                            handle.write(json.dumps({"label": args.label, "backend": backend,
                                                     "concurrency": concurrency, "shares": shares}) + "\n")
                    row = {"label": args.label, "model": name, "server_cpus": args.server_cpus, "serve_flags": args.serve_flag, "row": config.get("row"), "backend": backend,
                           "concurrency": concurrency, "rps": result["requests"] / result["duration_us"] * 1e6,
                           "p50_ms": result["p50_us"] / 1000, "p90_ms": result["p90_us"] / 1000,
                           "p99_ms": result["p99_us"] / 1000, "non_2xx": result["non_2xx"],
                           "socket_errors": result["socket_errors"], "peak_rss_mb": peak_rss_mb(server.pid),
                           "cold_start_s": float(np.median(colds)), "n_items": config["n_items"],
                           "seconds": args.seconds, "date": time.strftime("%Y-%m-%d")}
                    rows.append(row)
                    with open(args.out, "a") as handle:
                        handle.write(json.dumps(row) + "\n")
                    print(f"{args.label} {name} {backend} c={concurrency}: {row['rps']:.0f} req/s, p50 "
                          f"{row['p50_ms']:.2f} ms, p99 {row['p99_ms']:.2f} ms, non-2xx {row['non_2xx']}, "
                          f"RSS {row['peak_rss_mb']:.0f} MB, cold {row['cold_start_s']:.2f} s", flush=True)
            finally:
                stop(server)
    shutil.rmtree(work)
    print("\n| data | model | backend | concurrency | requests/s | p50 ms | p99 ms | non-2xx | peak RSS MB | cold start s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['label']} | {r['model']} ({r['row']}) | {r['backend']} | {r['concurrency']} | {r['rps']:,.0f} | "
              f"{r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['non_2xx']} | {r['peak_rss_mb']:.0f} | {r['cold_start_s']:.2f} |")


if __name__ == "__main__":
    main()
