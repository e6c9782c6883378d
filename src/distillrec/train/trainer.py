"""The student's epoch: all-position training on windows, full-ranking validation.

The loop around it (selection, checkpoints, curves) is `train.loop`, shared with the teachers.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tqdm import tqdm

from distillrec.data.splitdata import SplitData
from distillrec.params import StudentParams, TrainParams
from distillrec.students.base import Student
from distillrec.train.loop import FitState, Loop, LoopConfig, epoch_generator, fingerprint, resolve_device
from distillrec.train.metrics import metrics_from_ranks
from distillrec.train.objectives import Batch, Objective
from distillrec.train.ranking import rank_split, student_scorer


class Trainer:
    """Fits one student on a split with one objective; the objective owns the loss."""

    def __init__(self, model: Student, data: SplitData, student: StudentParams, train: TrainParams,
                 objective: Objective, out_dir: Path, live_dir: Path, data_id: str):
        self.module, self.data, self.cfg, self.objective = model, data, train, objective
        self.max_length = student.max_length
        self.device = resolve_device(train.device)
        model.to(self.device)
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=train.lr, weight_decay=train.weight_decay)
        self.windows, self.users, self.ends, self.first = (
            torch.as_tensor(a) for a in data.training_windows(self.max_length, train.window_stride))
        loop_cfg = LoopConfig(train.epochs, train.patience, train.select_metric, train.seed)
        self.loop = Loop(self, loop_cfg, out_dir, live_dir, fingerprint(student, train, data_id))

    def train_epoch(self, epoch: int) -> float:
        model = self.module
        generator = epoch_generator(self.cfg.seed, epoch)
        order = torch.randperm(len(self.windows), generator=generator)
        steps = range(0, len(order), self.cfg.batch_size)
        total = 0.0
        for start in tqdm(steps, desc=f"epoch {epoch}", leave=False, disable=None):
            idx = order[start:start + self.cfg.batch_size]
            inputs, targets = model.training_pair(self.windows[idx], generator)
            column = torch.arange(targets.shape[1])
            if model.causal:  # targets already supervised by a later window
                targets = targets.masked_fill(column < self.first[idx, None], 0)
            offset = column - targets.shape[1]
            batch = Batch(inputs.to(self.device), targets.to(self.device), self.users[idx].to(self.device),
                          (self.ends[idx, None] + offset).to(self.device), generator)
            loss, _ = self.objective(model, batch)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            total += loss.item() * len(idx)
        return total / len(order)

    def validate(self) -> dict[str, float]:
        _, ranks = rank_split(student_scorer(self.module), self.data, "valid", self.max_length,
                              self.cfg.eval_batch_size, self.device)
        k = int(self.cfg.select_metric.split("@")[1])
        return metrics_from_ranks(ranks, sorted({5, 10, 20, k}))

    def fit(self) -> FitState:
        return self.loop.run()
