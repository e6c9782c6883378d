"""The student's epoch: all-position training on windows, full-ranking validation.

The loop around it (selection, checkpoints, curves) is `train.loop`, shared with the teachers.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from distillrec.data.splitdata import SplitData
from distillrec.params import StudentParams, TrainParams
from distillrec.students.base import Student, trim_padding
from distillrec.hf import resolve_device
from distillrec.train.loop import FitState, Loop, LoopConfig, epoch_generator, finite_loss
from distillrec.train.metrics import metrics_from_ranks
from distillrec.train.objectives import Batch, Objective
from distillrec.train.parallel import DataParallel
from distillrec.train.ranking import rank_split, student_scorer


BUCKET_GROWTH = 1.25  # bucketed batching: each window length bucket is 25 % wider than the one before


def bucket_widths(longest: int) -> torch.Tensor:
    """Upper window lengths of the buckets, 1, 2, 3, 4, 5, 7, 9, 12, ... up to `longest`: a window
    is padded to at most ~25 % more than its length, and there are only ~15 buckets for 50."""
    widths = [1]
    while widths[-1] < longest:
        widths.append(min(longest, max(widths[-1] + 1, math.ceil(widths[-1] * BUCKET_GROWTH))))
    return torch.as_tensor(widths)


def batch_order(lengths: torch.Tensor, batch_size: int, mode: str, generator: torch.Generator
                ) -> list[torch.Tensor]:
    """Window indices of each step of one epoch. shuffle: random batches of `batch_size` windows.
    bucketed: windows are put in length buckets (`bucket_widths`); each bucket, in random order, is
    cut into batches of a fixed number of windows that hold about `batch_size` x (mean window length)
    items, and all batches are shuffled, so `trim_padding` drops most of a batch's padding (on a
    catalogue of short histories most of a max_length window is padding). The budget is in items,
    not windows: each step's loss is a mean over its positions, and equal-window batches gave the
    few positions of short windows several times the weight of long windows' (docs/methods.md §5).
    The number of windows is fixed per bucket, so batches take few distinct shapes: with a new
    shape at every step the heap that the stages keep (`stage.reuse_freed_blocks`) fragmented and
    grew with every step (21 GiB in one epoch of the 5M-review teacher). Both use only `generator`."""
    order = torch.randperm(len(lengths), generator=generator)
    if mode == "shuffle":
        return list(order.split(batch_size))
    budget = batch_size * max(float(lengths.float().mean()), 1.0)
    bucket = torch.searchsorted(bucket_widths(int(lengths.max())), lengths[order])
    batches = []
    for index in torch.unique(bucket).tolist():
        members = order[bucket == index]
        rows = max(1, round(budget / max(float(lengths[members].float().mean()), 1.0)))
        batches += list(members.split(rows))
    return [batches[i] for i in torch.randperm(len(batches), generator=generator)]


def adamw(params: Iterable, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW with its single-pass (fused) update. The default updates each parameter in about eight
    passes with temporaries of its size: at 200k items (a 51 MB item table) that was half of a
    student's CPU training step."""
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=True)
    optimizer.register_step_post_hook(_mark_written)
    return optimizer


def cosine_factor(done: float, epochs: int) -> float:
    """lr multiplier after `done` epochs of a cosine decay from 1 to 0 over `epochs`: a high lr early,
    annealed late, reaches a good model in a fixed, small number of epochs (docs/methods.md §5)."""
    return 0.5 * (1.0 + math.cos(math.pi * min(done / epochs, 1.0)))


def schedule_lr(optimizer: torch.optim.Optimizer, factor: float) -> None:
    """Each group's lr = factor x its configured lr, kept in the group under torch's schedulers' key
    `initial_lr` (so a resumed checkpoint keeps it). The factor depends only on the step, never on
    state, so resuming continues the same schedule (a stateful `LRScheduler` would need its own
    checkpoint entry)."""
    for group in optimizer.param_groups:
        group["lr"] = group.setdefault("initial_lr", group["lr"]) * factor


def _mark_written(optimizer: torch.optim.Optimizer, *_: object) -> None:
    """The fused kernel writes the parameters it steps (those with a gradient) without bumping their
    version counters; caches keyed on those (the text and fusion teachers' item tables,
    `itemtext.weights_key`) must see the step, and caches of frozen weights must not."""
    for group in optimizer.param_groups:
        for param in group["params"]:
            if param.grad is not None:
                torch.autograd.graph.increment_version(param)


class Trainer:
    """Fits one student on a split with one objective; the objective owns the loss."""

    def __init__(self, model: Student, data: SplitData, student: StudentParams, train: TrainParams,
                 objective: Objective, out_dir: Path, live_dir: Path, run_id: str, seed: int,
                 after_validation: Callable[[dict[str, float]], None] | None = None):
        self.model, self.data, self.cfg, self.objective, self.seed = model, data, train, objective, seed
        self.after_validation = after_validation  # e.g. a distillation gate, fed each epoch's metrics
        self.max_length = student.max_length
        self.device = resolve_device(train.device)
        # a distillation loss with its own parameters (projectors) is trained and checkpointed too
        self.module = nn.ModuleDict({"student": model, "objective": objective}) if isinstance(
            objective, nn.Module) else model
        self.module.to(self.device)
        self.optimizer = adamw(self.module.parameters(), train.lr, train.weight_decay)
        self.parallel = DataParallel(self.device)
        self.trained = [p for p in self.module.parameters() if p.requires_grad]
        self.windows, self.users, self.ends, self.first = (
            torch.as_tensor(a) for a in data.training_windows(self.max_length, train.window_stride))
        self.lengths = (self.windows != 0).sum(1)
        loop_cfg = LoopConfig(train.epochs, train.patience, train.select_metric, seed)
        self.loop = Loop(self, loop_cfg, out_dir, live_dir, run_id, is_main=self.parallel.is_main)

    def train_epoch(self, epoch: int) -> dict[str, float]:
        model = self.model
        generator = epoch_generator(self.seed, epoch)
        batches = self.parallel.shard(batch_order(self.lengths, self.cfg.batch_size, self.cfg.batching, generator))
        totals: dict[str, float] = {}
        seen = 0
        for step, idx in enumerate(tqdm(batches, desc=f"epoch {epoch}/{self.cfg.epochs}", leave=False, disable=None)):
            if self.cfg.lr_schedule == "cosine":
                schedule_lr(self.optimizer, cosine_factor(epoch - 1 + step / len(batches), self.cfg.epochs))
            inputs, targets = model.training_pair(self.windows[idx], generator)
            column = torch.arange(targets.shape[1])
            if model.causal:  # targets already supervised by a later window
                targets = targets.masked_fill(column < self.first[idx, None], 0)
            positions = self.ends[idx, None] + (column - targets.shape[1])
            inputs, targets, positions = trim_padding(inputs, targets, torch.where(targets > 0, positions, 0))
            batch = Batch(inputs.to(self.device), targets.to(self.device), self.users[idx].to(self.device),
                          positions.to(self.device), generator)
            loss, logs = self.objective(model, batch)
            value = finite_loss(loss.item(), f"epoch {epoch}, step {step + 1} of {len(batches)}")
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.parallel.average_gradients(self.trained)
            self.optimizer.step()
            seen += len(idx)
            for name, term in {"loss": value, **logs}.items():
                totals[name] = totals.get(name, 0.0) + term * len(idx)
        return {name: value / max(seen, 1) for name, value in totals.items()}

    def validate(self) -> dict[str, float]:
        metrics = None
        if self.parallel.is_main:
            _, ranks = rank_split(student_scorer(self.model), self.data, "valid", self.max_length,
                                  self.cfg.eval_batch_size, self.device)
            k = int(self.cfg.select_metric.split("@")[1])
            metrics = metrics_from_ranks(ranks, sorted({5, 10, 20, k}))
        metrics = self.parallel.from_main(metrics)
        if self.after_validation is not None:
            self.after_validation(metrics)
        return metrics

    def fit(self) -> FitState:
        state = self.loop.run()
        self.parallel.check_in_step(self.trained)
        return state
