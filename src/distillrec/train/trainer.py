"""The student training loop: all-position training, validation-only selection, resumable.

Each epoch's shuffling and sampling come from a generator seeded by (seed, epoch), and the
global RNG (dropout) is saved in every checkpoint, so a run resumed after an interruption ends
with exactly the weights of an uninterrupted run.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from dvclive import Live
from tqdm import tqdm

from distillrec.data.splitdata import SplitData
from distillrec.io import atomic_file
from distillrec.params import StudentParams, TrainParams
from distillrec.students.base import Student
from distillrec.train.metrics import metrics_from_ranks
from distillrec.train.objectives import Batch, Objective
from distillrec.train.ranking import rank_split, student_scorer

log = logging.getLogger(__name__)
CHECKPOINT = "checkpoint.pt"


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


@dataclass
class FitState:
    """Everything a resumed run needs; saved atomically after every epoch."""

    fingerprint: str
    epoch: int = 0
    best_metric: float = -1.0
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


def fingerprint(*parts: Any) -> str:
    """Identity of a run's configuration: a checkpoint is resumed only by the same config."""
    text = json.dumps([p if isinstance(p, (str, int, float, list, dict)) else p.model_dump(mode="json")
                       for p in parts], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


class Trainer:
    """Fits one student on a split with one objective; the objective owns the loss."""

    def __init__(self, model: Student, data: SplitData, student: StudentParams, train: TrainParams,
                 objective: Objective, out_dir: Path, live_dir: Path, data_id: str):
        self.model, self.data, self.cfg, self.objective = model, data, train, objective
        self.max_length = student.max_length
        self.out_dir, self.live_dir = Path(out_dir), Path(live_dir)
        self.device = resolve_device(train.device)
        self.model.to(self.device)
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=train.lr, weight_decay=train.weight_decay)
        self.windows, self.users, self.ends, self.first = (
            torch.as_tensor(a) for a in data.training_windows(self.max_length, train.window_stride))
        self.state = FitState(fingerprint(student, train, data_id))
        self.best_weights = {k: v.detach().clone() for k, v in model.state_dict().items()}

    # -- checkpointing -------------------------------------------------------------------
    def _save(self) -> None:
        with atomic_file(self.out_dir / CHECKPOINT) as tmp:
            torch.save({"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                        "best_weights": self.best_weights, "rng": torch.get_rng_state(),
                        "state": self.state.__dict__}, tmp)

    def _try_resume(self) -> bool:
        path = self.out_dir / CHECKPOINT
        if not path.exists():
            return False
        saved = torch.load(path, map_location=self.device, weights_only=True)
        if saved["state"]["fingerprint"] != self.state.fingerprint:
            log.info("ignoring %s: it was written with other params or data", path)
            return False
        self.model.load_state_dict(saved["model"])
        self.optimizer.load_state_dict(saved["optimizer"])
        self.best_weights = saved["best_weights"]
        torch.set_rng_state(saved["rng"])
        self.state = FitState(**saved["state"])
        log.info("resuming from %s after epoch %d", path, self.state.epoch)
        return True

    # -- one epoch -----------------------------------------------------------------------
    def _train_epoch(self, epoch: int) -> float:
        self.model.train()
        generator = torch.Generator().manual_seed(self.cfg.seed * 100_003 + epoch)
        order = torch.randperm(len(self.windows), generator=generator)
        steps = range(0, len(order), self.cfg.batch_size)
        total = 0.0
        for start in tqdm(steps, desc=f"epoch {epoch}", leave=False, disable=None):
            idx = order[start:start + self.cfg.batch_size]
            inputs, targets = self.model.training_pair(self.windows[idx], generator)
            column = torch.arange(targets.shape[1])
            if self.model.causal:  # targets already supervised by a later window
                targets = targets.masked_fill(column < self.first[idx, None], 0)
            offset = column - targets.shape[1]
            batch = Batch(inputs.to(self.device), targets.to(self.device), self.users[idx].to(self.device),
                          (self.ends[idx, None] + offset).to(self.device), generator)
            loss, _ = self.objective(self.model, batch)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            total += loss.item() * len(idx)
        return total / len(order)

    def validate(self) -> dict[str, float]:
        self.model.eval()
        _, ranks = rank_split(student_scorer(self.model), self.data, "valid", self.max_length,
                              self.cfg.eval_batch_size, self.device)
        k = int(self.cfg.select_metric.split("@")[1])
        return metrics_from_ranks(ranks, sorted({5, 10, 20, k}))

    # -- the loop ------------------------------------------------------------------------
    def fit(self) -> FitState:
        """Train until patience runs out or `epochs`; leaves the best weights in the model."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(self.cfg.seed)
        resumed = self._try_resume()
        with Live(str(self.live_dir), resume=resumed, dvcyaml=None, save_dvc_exp=False, report=None) as live:
            bar = tqdm(total=self.cfg.epochs, initial=self.state.epoch, desc="training", disable=None)
            while not self.state.finished:
                self._epoch(live)
                bar.update(1)
                bar.set_postfix({self.cfg.select_metric: f"{self.state.history[-1][self.cfg.select_metric]:.4f}"})
            bar.close()
        self.model.load_state_dict(self.best_weights)
        self.model.eval()
        return self.state

    def _epoch(self, live: Live) -> None:
        state, cfg = self.state, self.cfg
        started = time.perf_counter()
        epoch = state.epoch + 1
        loss = self._train_epoch(epoch)
        valid = self.validate()
        state.seconds += time.perf_counter() - started
        state.epoch = epoch
        state.history.append({"loss": loss, **valid})
        if valid[cfg.select_metric] > state.best_metric:
            state.best_metric, state.best_epoch, state.bad_epochs = valid[cfg.select_metric], epoch, 0
            state.seconds_to_best = state.seconds
            self.best_weights = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        else:
            state.bad_epochs += 1
        state.finished = state.bad_epochs >= cfg.patience or epoch >= cfg.epochs
        live.log_metric("train/loss", loss)
        for name, value in valid.items():
            live.log_metric(f"valid/{name}", value)
        live.next_step()
        log.info("epoch %d: loss %.4f, valid %s %.4f (best %.4f @ %d)", epoch, loss, cfg.select_metric,
                 valid[cfg.select_metric], state.best_metric, state.best_epoch)
        self._save()

