"""The epoch loop shared by students and teachers: validation-only selection, resumable.

A task supplies one training epoch and a validation; this loop owns early stopping, the
per-epoch checkpoint, dvclive curves and the progress bar. Checkpoints hold only the trainable
tensors (all of a student; the adapter and new modules of a LoRA teacher), so a 7B teacher
checkpoints megabytes, not gigabytes. Each epoch's randomness comes from a generator seeded by
(seed, epoch) and the global RNG is saved, so a resumed run ends with the weights of an
uninterrupted one. On CPU the loop trains with torch's deterministic algorithms, so two runs with
the same params and thread count end with bit-identical weights.

Only an interrupted run is resumed. The last epoch's checkpoint is marked finished, and a finished
checkpoint never stands in for training: a later run with the same params (`dvc repro -f`, or a
rerun DVC starts because an upstream output's bytes changed) trains again from epoch 1, overwriting
it. The file itself stays (the folder is a `persist` DVC output, and it holds the run's curve); a
run killed after its last epoch but before its output was written trains again too.
"""

from __future__ import annotations

import hashlib
import json
import logging
import contextlib
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from dvclive import Live
from tqdm import tqdm

from distillrec.errors import DataError, TrainingDiverged
from distillrec.io import atomic_file, code_digest, folder_lock

log = logging.getLogger(__name__)
CHECKPOINT = "checkpoint.pt"


def fingerprint(*parts: Any) -> str:
    """Identity of a run's configuration: a checkpoint is resumed only by the same config and code."""
    text = json.dumps([code_digest()] + [p if isinstance(p, (str, int, float, list, dict)) else p.model_dump(mode="json")
                                         for p in parts], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def finite_loss(value: float, where: str) -> float:
    """`value`, or TrainingDiverged the first time a loss is NaN or infinite (`where`: epoch and step)."""
    if not math.isfinite(value):
        raise TrainingDiverged(f"training diverged: the loss is {value} at {where}; nothing is saved. Lower the "
                               "learning rate (train.lr, or the teacher's train.lr) or the distillation weights, "
                               "then run again")
    return value


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The CPU generator for one epoch's shuffling and sampling."""
    return torch.Generator().manual_seed(seed * 100_003 + epoch)


def trainable_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Copies of the tensors training changes: parameters with requires_grad, and buffers."""
    state = {name: p.detach().clone() for name, p in module.named_parameters() if p.requires_grad}
    state.update({name: b.detach().clone() for name, b in module.named_buffers()})
    return state


@contextlib.contextmanager
def deterministic_on_cpu(module: torch.nn.Module) -> Iterator[None]:
    """torch's deterministic algorithms while `module` trains on CPU; the previous setting after.

    Without them the backward of advanced indexing (`table[history]`, an index_put_ that
    accumulates) adds duplicate rows' gradients in thread-scheduling order when torch uses more
    than one thread: two runs of a tiny fusion teacher on 2 threads differed by up to 4e-6 in its
    weights after two epochs, and the difference grows. With them the sum runs in a fixed order.
    CUDA training is left as it is (deterministic CUDA kernels need CUBLAS_WORKSPACE_CONFIG and
    cost speed); `warn_only`: an op without a deterministic CPU kernel warns, never stops a run.
    """
    on_cpu = all(p.device.type == "cpu" for p in module.parameters())
    previous = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    if on_cpu:
        torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous[0], warn_only=previous[1])


class EpochTask(Protocol):
    """What the loop trains: a module, its optimiser, one epoch, one validation."""

    module: torch.nn.Module
    optimizer: torch.optim.Optimizer

    def train_epoch(self, epoch: int) -> float | dict[str, float]:
        """Train one epoch (seed its randomness with `epoch_generator`); the mean loss, or mean
        logs with a "loss" entry (every entry becomes a training curve)."""

    def validate(self) -> dict[str, float]:
        """Metrics on the validation split (never the test split)."""


@dataclass(frozen=True)
class LoopConfig:
    epochs: int
    patience: int
    select_metric: str
    seed: int
    higher_is_better: bool = True


@dataclass
class FitState:
    """Everything a resumed run needs; saved atomically after every epoch."""

    fingerprint: str
    epoch: int = 0
    best_metric: float | None = None
    best_epoch: int = 0
    bad_epochs: int = 0
    finished: bool = False
    seconds: float = 0.0
    seconds_to_best: float = 0.0
    history: list[dict[str, float]] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        return {"epochs": self.epoch, "best_epoch": self.best_epoch, "seconds": self.seconds,
                "seconds_to_best": self.seconds_to_best, "seconds_per_epoch": self.seconds / max(self.epoch, 1),
                "best_valid": self.history[self.best_epoch - 1] if self.best_epoch else {}}


def metric_label(metric: str) -> str:
    """How a log line names a validation metric after the word "valid": `valid_loss` → `loss`."""
    return metric.removeprefix("valid_") or metric


def _log(live: Live | _NoLive, entry: dict[str, float]) -> None:
    """One epoch's history entry as curves: train/loss, train/<term>, valid/<metric>."""
    for name, value in entry.items():
        key = "train/loss" if name == "loss" else name if name.startswith("train/") else f"valid/{name}"
        live.log_metric(key, value)
    live.next_step()


class _NoLive:
    """Curves are logged by the main process only."""

    def log_metric(self, name: str, value: float) -> None:
        pass

    def next_step(self) -> None:
        pass


class Loop:
    """Runs an EpochTask to convergence and leaves the best validation weights in its module."""

    def __init__(self, task: EpochTask, cfg: LoopConfig, checkpoint_dir: Path | str, live_dir: Path | str,
                 run_id: str, is_main: bool = True):
        self.task, self.cfg, self.is_main = task, cfg, is_main
        self.checkpoint_dir, self.live_dir = Path(checkpoint_dir), Path(live_dir)
        self.state = FitState(run_id)
        self.best_weights = trainable_state(task.module)

    def _save(self) -> None:
        if not self.is_main:  # data-parallel workers hold the same weights as the main process
            return
        with atomic_file(self.checkpoint_dir / CHECKPOINT) as tmp:
            torch.save({"model": trainable_state(self.task.module), "optimizer": self.task.optimizer.state_dict(),
                        "best_weights": self.best_weights, "rng": torch.get_rng_state(),
                        "state": self.state.__dict__}, tmp)

    def _try_resume(self) -> bool:
        path = self.checkpoint_dir / CHECKPOINT
        if not path.exists():
            return False
        try:
            saved = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises several types for truncated or foreign files
            raise DataError(f"checkpoint {path} is unreadable ({type(exc).__name__}: {exc}); "
                            f"delete it to train from scratch") from None
        if saved["state"]["fingerprint"] != self.state.fingerprint:
            log.info("ignoring %s: it was written with other params, data or code", path)
            return False
        if saved["state"].get("finished"):  # a finished run's weights never stand in for training
            log.info("ignoring %s: it holds a finished run (%d epochs), not an interrupted one; "
                     "training from epoch 1", path, saved["state"]["epoch"])
            return False
        self.task.module.load_state_dict(saved["model"], strict=False)
        self.task.optimizer.load_state_dict(saved["optimizer"])
        self.best_weights = saved["best_weights"]
        torch.set_rng_state(saved["rng"])
        self.state = FitState(**saved["state"])
        log.info("resuming from %s after epoch %d", path, self.state.epoch)
        return True

    def _improved(self, value: float) -> bool:
        best = self.state.best_metric
        if best is None or math.isnan(best):
            return not math.isnan(value)
        return value > best if self.cfg.higher_is_better else value < best

    def run(self) -> FitState:
        """Train until patience runs out or `epochs`; leaves the best weights in the module."""
        self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        # one writer per checkpoint: data-parallel workers read it but only the main process writes
        with (folder_lock(self.checkpoint_dir) if self.is_main else contextlib.nullcontext(),
              deterministic_on_cpu(self.task.module)):
            return self._run()

    def _run(self) -> FitState:
        torch.manual_seed(self.cfg.seed)
        resumed = self._try_resume()
        # the curves are rewritten from the checkpoint's history: DVC deletes a stage's outputs
        # (these curves) before re-running it, and a resumed run must still leave complete curves
        live = (Live(str(self.live_dir), resume=False, dvcyaml=None, save_dvc_exp=False, report=None)
                if self.is_main else contextlib.nullcontext(_NoLive()))
        with live as live:
            for entry in self.state.history if resumed else []:
                _log(live, entry)
            bar = tqdm(total=self.cfg.epochs, initial=self.state.epoch, desc="training", unit="epoch",
                       disable=None if self.is_main else True)
            if resumed:
                bar.set_postfix_str(self._window(), refresh=False)
            while not self.state.finished:
                self._epoch(live)
                bar.update(1)
                bar.set_postfix_str(self._window())
            if self.state.epoch < self.cfg.epochs:  # stopped early: the bar ends full at the epoch it stopped
                bar.total = self.state.epoch
                bar.set_description("stopped early", refresh=False)
                bar.set_postfix_str(f"best {self.state.best_epoch}")
            bar.close()
        if self.is_main:
            log.info("%s", self.outcome())
        self.task.module.load_state_dict(self.best_weights, strict=False)
        self.task.module.eval()
        return self.state

    # ---- what the progress bar and the log say ------------------------------------------------------

    def _valid(self, value: float | None) -> str:
        """`valid ndcg@10 0.1234`, `valid loss 3.2100`: the selection metric, named."""
        return f"valid {metric_label(self.cfg.select_metric)} {float('nan') if value is None else value:.4f}"

    def _window(self) -> str:
        """The bar's postfix: the last validation, the best epoch and the epochs left before early stopping."""
        state = self.state
        last = state.history[-1][self.cfg.select_metric] if state.history else float("nan")
        best = f"best {state.best_epoch}" if state.best_epoch else "no best yet"
        return (f"{metric_label(self.cfg.select_metric)} {last:.4f}, {best}, "
                f"stop in {self.cfg.patience - state.bad_epochs}")

    def epoch_line(self) -> str:
        """The log line of the last epoch, one shape for every trainer:
        `epoch 7/200: train loss 5.1230 | valid ndcg@10 0.1234 (best 0.1250 at epoch 5, patience 3/5 left)`."""
        state, cfg = self.state, self.cfg
        entry = state.history[-1]
        best = (f"best {state.best_metric:.4f} at epoch {state.best_epoch}" if state.best_epoch
                else "no best yet")
        return (f"epoch {state.epoch}/{cfg.epochs}: train loss {entry['loss']:.4f} | "
                f"{self._valid(entry[cfg.select_metric])} "
                f"({best}, patience {cfg.patience - state.bad_epochs}/{cfg.patience} left)")

    def outcome(self) -> str:
        """How training ended: early stopping (with its reason) or the last epoch, and the best epoch."""
        state, cfg = self.state, self.cfg
        best = (f"best epoch {state.best_epoch} ({self._valid(state.best_metric)})" if state.best_epoch
                else f"no epoch had a finite valid {metric_label(cfg.select_metric)}")
        if state.epoch < cfg.epochs:
            return (f"stopped early at epoch {state.epoch} of {cfg.epochs}: no improvement in valid "
                    f"{metric_label(cfg.select_metric)} for {state.bad_epochs} epochs; {best}")
        return f"trained all {cfg.epochs} epochs; {best}"

    def _epoch(self, live: Live | _NoLive) -> None:
        state, cfg = self.state, self.cfg
        started = time.perf_counter()
        epoch = state.epoch + 1
        self.task.module.train()
        logs = self.task.train_epoch(epoch)
        logs = logs if isinstance(logs, dict) else {"loss": logs}
        loss = logs["loss"]
        self.task.module.eval()
        with torch.no_grad():
            valid = self.task.validate()
        state.seconds += time.perf_counter() - started
        state.epoch = epoch
        state.history.append({"loss": loss, **{f"train/{k}": v for k, v in logs.items() if k != "loss"}, **valid})
        if self._improved(valid[cfg.select_metric]):
            state.best_metric, state.best_epoch, state.bad_epochs = valid[cfg.select_metric], epoch, 0
            state.seconds_to_best = state.seconds
            self.best_weights = trainable_state(self.task.module)
        else:
            state.bad_epochs += 1
        state.finished = state.bad_epochs >= cfg.patience or epoch >= cfg.epochs
        _log(live, state.history[-1])
        if self.is_main:  # data-parallel workers would repeat the main process's line
            log.info("%s", self.epoch_line())
        self._save()
