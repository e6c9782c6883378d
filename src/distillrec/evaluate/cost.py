"""Inference cost of full-catalogue scoring: latency per user and throughput."""

from __future__ import annotations

import time

import numpy as np
import torch

from distillrec.data.splitdata import SplitData
from distillrec.train.ranking import Scorer


@torch.no_grad()
def inference_cost(scorer: Scorer, data: SplitData, max_length: int, latency_batch: int,
                   repeats: int, throughput_batch: int, device: torch.device, k: int = 10) -> dict[str, float]:
    """ms per call of `latency_batch` users (scores + top-k) and users/second at `throughput_batch`.

    Histories are real test histories; two untimed warm-up calls absorb first-touch costs. Throughput
    is timed over every test user, or over `repeats` batches if that is fewer: at 560k users a full
    pass took as long as ranking the test split again.
    """
    users, positions, _ = data.targets("test")

    def call(n: int, start: int) -> None:
        rows = np.arange(start, start + n) % len(users)
        history = torch.as_tensor(data.histories(users[rows], positions[rows], max_length), device=device)
        scores = scorer(history)
        scores.topk(min(k, scores.shape[1] - 1), dim=1)
        if device.type == "cuda":
            torch.cuda.synchronize()

    for _ in range(2):
        call(latency_batch, 0)
    started = time.perf_counter()
    for i in range(repeats):
        call(latency_batch, i * latency_batch)
    per_call = (time.perf_counter() - started) / repeats
    call(throughput_batch, 0)
    started = time.perf_counter()
    n_batches = min(repeats, max(1, -(-len(users) // throughput_batch)))
    for i in range(n_batches):
        call(throughput_batch, i * throughput_batch)
    throughput = n_batches * throughput_batch / (time.perf_counter() - started)
    return {"latency_ms": 1000 * per_call / latency_batch, "users_per_second": throughput}
