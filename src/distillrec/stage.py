"""The shared shell of every stage script: logging, params validation, clean user errors."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
import sys
from collections.abc import Callable

from distillrec.errors import DistillrecError
from distillrec.io import setup_logging
from distillrec.params import load_params

log = logging.getLogger("distillrec.stage")
M_TRIM_THRESHOLD = -1        # glibc's mallopt parameters
M_MMAP_THRESHOLD = -3
KEPT_BLOCK = 1 << 30         # bytes: freed blocks below this stay in the process for reuse


def reuse_freed_blocks() -> bool:
    """Keeps freed memory blocks below 1 GiB in the process (glibc's mmap and trim thresholds).

    By default glibc maps every block above 32 MiB straight from the OS and unmaps it when freed:
    the item table's gradient and AdamW's temporaries at 200k items (51 MB each), or a 256 MiB
    ranking slice, were then page-faulted and zeroed by the kernel again on every step, which was
    ~45 % of a training step's CPU time and ~44 % of ranking a user (0.77 -> 0.43 ms at 200k items).
    Held in the heap, the next step reuses them. The price: a stage's RSS does not fall back from
    its peak until it exits.
    Returns whether both were set (False without glibc)."""
    name = ctypes.util.find_library("c")
    if not (sys.platform.startswith("linux") and name):
        return False
    libc = ctypes.CDLL(name)
    return hasattr(libc, "mallopt") and all(libc.mallopt(option, KEPT_BLOCK) == 1
                                            for option in (M_MMAP_THRESHOLD, M_TRIM_THRESHOLD))


def release_process_group() -> None:
    """Destroys the process group of a torchrun/accelerate launch, if this stage made one: a process
    that exits with its gloo group alive can abort in the group's threads ("terminate called without
    an active exception", now and then in the 2-process teacher test) and fail the whole launch."""
    dist = sys.modules.get("torch.distributed")  # imported only by stages that use torch
    if dist is not None and dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def stage(body: Callable[..., object]) -> Callable[[], None]:
    """Wrap `body(params, *argv)`: a DistillrecError exits 1 with its message, not a traceback.

    Command-line arguments (e.g. a teacher's name in a `foreach` stage) follow the params.
    """

    @functools.wraps(body)
    def main() -> None:
        setup_logging()
        reuse_freed_blocks()
        try:
            body(load_params(), *sys.argv[1:])
        except DistillrecError as exc:
            log.error("%s failed: %s", body.__module__, exc)
            sys.exit(1)
        finally:
            release_process_group()

    return main
