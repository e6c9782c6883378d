"""Data parallelism for the students' trainer: `torchrun --nproc_per_node N stages/train_student.py <seed>`
(or `accelerate launch`) on GPUs or CPU processes (gloo).

Every process holds the same weights: each trains on an equal share of the epoch's batches (equal
counts keep the processes in step, so none waits in a collective another never reaches), gradients
are averaged across processes before every optimiser step, and the main process's validation
metrics are the ones every process acts on, so all stop at the same epoch. Only the main process
writes checkpoints, curves and the saved model. The objectives call the student's methods directly
(encode, item table), not one forward(), so gradients are averaged explicitly rather than by
DistributedDataParallel's forward hooks.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def even_shard(batches: list, world: int, rank: int) -> list:
    """Process `rank`'s batches: the same number on every process (the remainder is dropped), so
    no process waits in a collective that another never reaches."""
    return batches[:len(batches) // world * world][rank::world] if world > 1 else batches


class DataParallel:
    """This process's rank among `world` (1 when not launched by torchrun/accelerate)."""

    def __init__(self, device: torch.device):
        self.world, self.rank, self.is_main = 1, 0, True
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # set by torchrun and accelerate launch
            from accelerate import PartialState  # a quarter second to import: only when launched so

            state = PartialState(cpu=device.type == "cpu")
            self.world, self.rank, self.is_main = state.num_processes, state.process_index, state.is_main_process

    def shard(self, batches: list[torch.Tensor]) -> list[torch.Tensor]:
        return even_shard(batches, self.world, self.rank)

    def average_gradients(self, parameters: list[torch.nn.Parameter]) -> None:
        """Mean gradient over processes, in one all-reduce; a parameter without a gradient counts as 0."""
        if self.world == 1:
            return
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in parameters]
        flat = torch.cat([g.flatten() for g in grads])
        dist.all_reduce(flat)
        flat /= self.world
        for p, piece in zip(parameters, flat.split([p.numel() for p in parameters])):
            p.grad = piece.view_as(p)

    def from_main(self, value: dict[str, float] | None) -> dict[str, float]:
        """The main process's `value` on every process."""
        if self.world == 1:
            assert value is not None
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def check_in_step(self, parameters: list[torch.nn.Parameter]) -> None:
        """Fails if the processes' weights differ (a gradient that was not averaged, a skipped step)."""
        if self.world == 1:
            return
        flat = torch.cat([p.detach().double().flatten() for p in parameters])
        mine = torch.stack([flat.sum(), flat.abs().sum()])
        every = [torch.zeros_like(mine) for _ in range(self.world)]
        dist.all_gather(every, mine)
        if not all(torch.allclose(other, every[0], rtol=1e-9, atol=0) for other in every):
            raise RuntimeError(f"data-parallel processes ended with different weights: {every}")
