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
M_MMAP_THRESHOLD = -3        # glibc's mallopt parameter
LARGE_BLOCK = 4 << 20        # bytes: blocks at least this large get their own mapping


def keep_large_blocks_mapped() -> bool:
    """Fixes glibc's mmap threshold (which otherwise rises to 32 MiB after the first large free).

    With the rising threshold, the [batch, N] score tensors of ranking and export come from the
    heap, and the small long-lived blocks allocated between them keep the freed space from being
    returned: a stage's memory then grows with its run (a 67k-row teacher export at 8k items: 1.1 GB
    peak without this, 0.7 GB with it). Mapped blocks go back to the OS when freed. Returns whether it was
    set (False without glibc).
    """
    name = ctypes.util.find_library("c")
    if not (sys.platform.startswith("linux") and name):
        return False
    libc = ctypes.CDLL(name)
    return hasattr(libc, "mallopt") and libc.mallopt(M_MMAP_THRESHOLD, LARGE_BLOCK) == 1


def stage(body: Callable[..., object]) -> Callable[[], None]:
    """Wrap `body(params, *argv)`: a DistillrecError exits 1 with its message, not a traceback.

    Command-line arguments (e.g. a teacher's name in a `foreach` stage) follow the params.
    """

    @functools.wraps(body)
    def main() -> None:
        setup_logging()
        keep_large_blocks_mapped()
        try:
            body(load_params(), *sys.argv[1:])
        except DistillrecError as exc:
            log.error("%s failed: %s", body.__module__, exc)
            sys.exit(1)

    return main
