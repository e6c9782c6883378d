"""The shared shell of every stage script: logging, params validation, clean user errors."""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable

from distillrec.errors import DistillrecError
from distillrec.io import setup_logging
from distillrec.params import load_params

log = logging.getLogger("distillrec.stage")


def stage(body: Callable[..., object]) -> Callable[[], None]:
    """Wrap `body(params, *argv)`: a DistillrecError exits 1 with its message, not a traceback.

    Command-line arguments (e.g. a teacher's name in a `foreach` stage) follow the params.
    """

    @functools.wraps(body)
    def main() -> None:
        setup_logging()
        try:
            body(load_params(), *sys.argv[1:])
        except DistillrecError as exc:
            log.error("%s failed: %s", body.__module__, exc)
            sys.exit(1)

    return main
