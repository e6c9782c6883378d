"""Training-step cost at the size of a large Amazon category: full CE vs batch-shared negatives,
shuffled vs length-bucketed batches.

SASRec d=64, 2 layers, max length 50, batch 64 windows, over 180,959 items (the generated 5M-review
category after 5-core, BENCHMARKS.md "Ingest + split") with Amazon-like short histories (5 + a
geometric tail, mean ~8.4 items). Each configuration runs in a fresh process with 1 torch thread:
`steps` timed training steps after 2 warm-up steps, peak RSS of the process (ru_maxrss), and the
projected epoch time for one window per user (558,933 users). `--as-before` runs the step as the
code did before 2026-12-05: glibc's default handling of large blocks (mapped and unmapped on each
use) and the eight-pass AdamW, against the stages' `reuse_freed_blocks` and the fused `adamw`.

    python benchmarks/bench_scale.py --steps 20
    python benchmarks/bench_scale.py --steps 20 --configs sampled_softmax-256-bucketed --as-before
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import subprocess
import sys
import time
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "benchmarks" / "out" / "scale"
CONFIGS = {
    "ce": {"objective": "ce"},
    "ce-bucketed": {"objective": "ce", "batching": "bucketed"},
    "sampled_softmax-256": {"objective": "sampled_softmax", "negatives": 256},
    "sampled_softmax-256-popularity": {"objective": "sampled_softmax", "negatives": 256, "sampler": "popularity"},
    "gbce-256": {"objective": "gbce", "negatives": 256},
    "sampled_softmax-256-bucketed": {"objective": "sampled_softmax", "negatives": 256, "batching": "bucketed"},
    "sampled_softmax-1024": {"objective": "sampled_softmax", "negatives": 1024},
    "sampled_softmax-1024-bucketed": {"objective": "sampled_softmax", "negatives": 1024, "batching": "bucketed"},
    # the floor of any cheaper output layer: 2 negatives, so a step is almost only the encoder
    "sampled_softmax-2-bucketed": {"objective": "sampled_softmax", "negatives": 2, "batching": "bucketed"},
}


def run_one(config: dict) -> dict:
    """Child: time `steps` training steps of one configuration."""
    import numpy as np
    import torch

    from distillrec.params import StudentParams, TrainParams
    from distillrec.students.base import trim_padding
    from distillrec.students.sasrec import SASRec
    from distillrec.train.objectives import Batch, SharedNegatives, cross_entropy, gbce, objective_of, sampled_softmax
    from distillrec.stage import reuse_freed_blocks
    from distillrec.train.trainer import adamw, batch_order

    if not config["as_before"]:
        reuse_freed_blocks()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    n_items, users, max_length, batch_size = config["items"], config["users"], 50, 64
    train = TrainParams(**config["train"])
    rng = np.random.default_rng(0)
    pool = config["steps_total"] * batch_size  # windows sampled from the population of users
    lengths = np.minimum(5 + rng.geometric(1 / 4.4, pool) - 1, max_length + 1)
    counts = np.bincount(np.minimum(rng.zipf(1.2, 4_000_000), n_items), minlength=n_items + 1)
    counts[0] = 0
    windows = torch.zeros((pool, max_length + 1), dtype=torch.long)
    for row, n in enumerate(lengths):
        windows[row, -n:] = torch.as_tensor(rng.integers(1, n_items + 1, n))
    model = SASRec(n_items, StudentParams(hidden=64, layers=2, heads=2, max_length=max_length)).train()
    optimizer = (torch.optim.AdamW(model.parameters(), lr=1e-3) if config["as_before"]
                 else adamw(model.parameters(), 1e-3, 0.01))
    if train.objective == "ce":
        objective = objective_of(cross_entropy)
    else:
        sampler = SharedNegatives(n_items, train.negatives, train.sampler, counts)
        objective = objective_of(sampled_softmax(sampler) if train.objective == "sampled_softmax"
                                 else gbce(sampler, train.gbce_t))
    generator = torch.Generator().manual_seed(0)
    batches = batch_order(torch.as_tensor(lengths), batch_size, train.batching, generator)
    times, columns = [], []
    for step, idx in enumerate(batches[:config["steps"] + 2]):
        started = time.perf_counter()
        inputs, targets = model.training_pair(windows[idx], generator)
        inputs, targets = trim_padding(inputs, targets)
        batch = Batch(inputs, targets, torch.zeros(len(idx), dtype=torch.long), torch.zeros_like(targets), generator)
        loss, _ = objective(model, batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step >= 2:
            times.append(time.perf_counter() - started)
            columns.append(inputs.shape[1])
    per_step = float(np.mean(times))
    return {"config": config["name"] + (" (as before)" if config["as_before"] else ""), "items": n_items, "step_s": per_step, "steps": len(times),
            "mean_columns": float(np.mean(columns)), "epoch_s_projected": per_step * -(-users // batch_size),
            "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--items", type=int, default=180_959)
    parser.add_argument("--users", type=int, default=558_933)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS))
    parser.add_argument("--as-before", action="store_true", help="glibc's default large blocks, eight-pass AdamW")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_one(json.loads(args.child))))
        return
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    OUT.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in args.configs:
        job = {"name": name, "items": args.items, "users": args.users, "steps": args.steps,
               "steps_total": max(args.steps + 2, 200), "train": CONFIGS[name],
               "as_before": args.as_before}
        out = subprocess.run([sys.executable, __file__, "--child", json.dumps(job)], capture_output=True, text=True,
                             check=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
        logging.info("%s", rows[-1])
    with open(OUT / "steps.jsonl", "a") as handle:
        for row in rows:
            handle.write(json.dumps(row) + "\n")
    base = next((r for r in rows if r["config"] == "ce"), None)
    lines = ["| objective, batching | s/step | columns/batch | projected s/epoch | speed-up vs ce | peak RSS GiB |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        speed = f"{base['step_s'] / r['step_s']:.1f}×" if base else "-"
        lines.append(f"| {r['config']} | {r['step_s']:.3f} | {r['mean_columns']:.1f} | {r['epoch_s_projected']:,.0f} "
                     f"| {speed} | {r['peak_rss_gib']:.2f} |")
    logging.info("\n%s", "\n".join(lines))


if __name__ == "__main__":
    main()
