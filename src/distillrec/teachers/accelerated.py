"""What the LLM families' training shares (seq2seq, causal): one accelerate-prepared task.

`fit_accelerated` creates the Accelerator (CPU or the GPUs of a torchrun/accelerate launch), builds
the family's task on it and runs the shared epoch loop, selecting on `valid_loss`. An
`AcceleratedTask` holds the unwrapped module (what the loop checkpoints, so checkpoint keys do
not depend on the number of processes), the prepared one (`wrapped`, what training calls, so
gradients are averaged across processes), AdamW over the trainable parameters, and an equal share
of each epoch's batches per process. A family supplies only its batches and its loss.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from distillrec.params import LLMTrainParams
from distillrec.train.loop import FitState, Loop, LoopConfig, finite_loss
from distillrec.train.parallel import even_shard


class AcceleratedTask:
    """The family-independent half of an LLM teacher's EpochTask."""

    def __init__(self, module: nn.Module, train: LLMTrainParams, accelerator: Any):
        self.module, self.accelerator = module, accelerator
        trainable = [p for p in module.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(trainable, lr=train.lr, weight_decay=train.weight_decay)
        self.wrapped, self.optimizer = accelerator.prepare(module, optimizer)
        self.steps = 0   # optimizer steps so far, to name where a loss went non-finite

    def shard(self, batches: list) -> list:
        """This process's batches: as many on every process, so none waits in a collective alone."""
        return even_shard(batches, self.accelerator.num_processes, self.accelerator.process_index)

    def step(self, loss: torch.Tensor) -> None:
        self.steps += 1
        finite_loss(loss.item(), f"optimizer step {self.steps} of this run")
        self.optimizer.zero_grad(set_to_none=True)
        self.accelerator.backward(loss)
        self.optimizer.step()


def fit_accelerated(task_on: Callable[[Any], AcceleratedTask], device: torch.device, train: LLMTrainParams,
                    checkpoint_dir: Path, live_dir: Path, run_id: str) -> FitState:
    """Builds the family's task on a new Accelerator and trains it to the best validation loss."""
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=device.type == "cpu")
    task = task_on(accelerator)
    config = LoopConfig(train.epochs, train.patience, "valid_loss", train.seed, higher_is_better=False)
    return Loop(task, config, checkpoint_dir, live_dir, run_id, is_main=accelerator.is_main_process).run()
