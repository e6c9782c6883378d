"""Micro-batching: the histories of concurrent requests are scored in one forward pass.

A request's padded histories wait in a bounded queue (`queue_size` histories; one that does not
fit raises `QueueFull`, which the server answers with 503 and Retry-After). One worker task takes
the oldest waiting request, lets the batch fill for at most `max_wait_ms` after that request
arrived (or until `max_batch` histories wait), and scores the batch on one dedicated thread, so
the event loop keeps accepting and parsing requests meanwhile. The rows go back to each request
in order; a scoring error goes to every request of the batch. A request with more than
`max_batch` histories is scored alone, `max_batch` rows per forward pass.

`flush()` ends the waiting (a server that is shutting down scores what is queued at once) and
`stop()` drains the queue, then ends the worker.
"""

from __future__ import annotations

import asyncio
import collections
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from distillrec.serving.recommender import Recommender


class QueueFull(Exception):
    """No room for a request's histories (or the batcher is stopping): answer 503, retry later."""


@dataclass(slots=True)
class _Waiting:
    padded: np.ndarray          # [n, width] int64 (Recommender.pad)
    future: asyncio.Future
    arrived: float              # loop.time()


class MicroBatcher:
    """Scores padded histories of concurrent requests together; see the module docstring."""

    def __init__(self, recommender: Recommender, *, max_batch: int = 64, max_wait_ms: float = 1.0,
                 queue_size: int = 1024, name: str = "model"):
        if max_batch < 1 or queue_size < 1 or max_wait_ms < 0:
            raise ValueError("max_batch and queue_size must be >= 1 and max_wait_ms >= 0")
        self.recommender, self.name = recommender, name
        self.max_batch, self.max_wait, self.queue_size = max_batch, max_wait_ms / 1000, queue_size
        self._waiting: collections.deque[_Waiting] = collections.deque()
        self._queued = 0                 # histories waiting (not yet taken into a batch)
        self._wake: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task | None = None
        self._thread: ThreadPoolExecutor | None = None
        self._flush = self._stopping = False
        self.batches = self.histories = 0    # forward passes' batches and histories scored, for tests/stats

    @property
    def depth(self) -> int:
        """Histories waiting for a batch."""
        return self._queued

    def start(self) -> None:
        """Start the worker on the running event loop (the server's lifespan)."""
        if self._task is not None:
            raise RuntimeError(f"the {self.name} batcher is already running")
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"distillrec-{self.name}")
        self._flush = self._stopping = False
        self._task = self._loop.create_task(self._run(), name=f"distillrec-{self.name}-batcher")

    def flush(self) -> None:
        """Stop waiting for fuller batches: what is queued (and what comes) is scored at once."""
        self._flush = True
        if self._wake is not None:
            self._wake.set()

    async def stop(self) -> None:
        """Score everything still queued, then end the worker and its thread."""
        if self._task is None:
            return
        self._stopping = True
        self.flush()
        try:
            await self._task
        finally:
            self._task = None
            self._thread.shutdown(wait=True)

    async def submit(self, padded: np.ndarray) -> np.ndarray:
        """The [n, n_items + 1] scores of `padded` ([n, width] int64, Recommender.pad), n >= 1.
        Raises QueueFull when its n histories do not fit in the queue, or the batcher is not running."""
        n = len(padded)
        if self._task is None or self._stopping:
            raise QueueFull(f"the {self.name} model is not accepting requests (the server is stopping)")
        if self._queued + n > self.queue_size:
            raise QueueFull(f"the {self.name} queue is full ({self._queued} of {self.queue_size} histories "
                            f"waiting; this request has {n})")
        future = self._loop.create_future()
        self._waiting.append(_Waiting(padded, future, self._loop.time()))
        self._queued += n
        if len(self._waiting) == 1 or self._queued >= self.max_batch:  # the worker may sleep on it
            self._wake.set()
        return await future

    async def _run(self) -> None:
        loop, wake = self._loop, self._wake
        while True:
            if not self._waiting:
                if self._stopping:
                    return
                wake.clear()
                await wake.wait()
                continue
            # let the batch fill: at most max_wait after its oldest request arrived
            deadline = self._waiting[0].arrived + self.max_wait
            while not self._flush and self._queued < self.max_batch:
                delay = deadline - loop.time()
                if delay <= 0:
                    break
                wake.clear()
                timer = loop.call_later(delay, wake.set)
                await wake.wait()
                timer.cancel()
            batch = self._take()
            if not batch:
                continue
            try:
                scores = await loop.run_in_executor(self._thread, self._score, [w.padded for w in batch])
            except Exception as exc:  # a server fault: every request of the batch gets it
                for w in batch:
                    if not w.future.done():
                        w.future.set_exception(exc)
                continue
            self.batches += 1
            self.histories += len(scores)
            start = 0
            for w in batch:
                stop = start + len(w.padded)
                if not w.future.done():  # not cancelled meanwhile
                    w.future.set_result(scores[start:stop])
                start = stop

    def _take(self) -> list[_Waiting]:
        """The oldest waiting requests up to max_batch histories (at least one request)."""
        batch, rows = [], 0
        while self._waiting:
            first = self._waiting[0]
            n = len(first.padded)
            if first.future.done():          # its caller went away
                self._waiting.popleft()
                self._queued -= n
                continue
            if batch and rows + n > self.max_batch:
                break
            self._waiting.popleft()
            self._queued -= n
            batch.append(first)
            rows += n
        return batch

    def _score(self, arrays: list[np.ndarray]) -> np.ndarray:
        """Scores of every array's rows, in order: one forward pass per padded width (a request's
        histories share one width, `Recommender.pad`), at most max_batch rows each."""
        scored: list[np.ndarray | None] = [None] * len(arrays)
        for width in sorted({a.shape[1] for a in arrays}):
            members = [i for i, a in enumerate(arrays) if a.shape[1] == width]
            padded = np.concatenate([arrays[i] for i in members]) if len(members) > 1 else arrays[members[0]]
            scores = np.concatenate([self.recommender.scores(padded[i:i + self.max_batch])
                                     for i in range(0, len(padded), self.max_batch)])
            start = 0
            for i in members:
                scored[i] = scores[start:start + len(arrays[i])]
                start += len(arrays[i])
        return scored[0] if len(scored) == 1 else np.concatenate(scored)
