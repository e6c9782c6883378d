"""The pipeline through its stage scripts (the commands of dvc.yaml, without DVC) in a folder that holds
only params.yaml: shared by the tests that run it end to end.

`run_stage(..., kill=Kill(...))` SIGKILLs the stage process at an exact point of its work: an audit
hook (`sys.addaudithook`, installed by the launcher below, not by distillrec) watches the process's
own file operations and kills it when the n-th matching one is about to happen (e.g. the rename that
would put epoch 2's checkpoint in place). Polling for files from outside would miss the few
milliseconds in which an export or a report is being written.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tests.conftest import REPO

# the default's story with one teacher: the knowledge teacher, the baseline and DLLM2Rec
STAGES = [("ingest",), ("split",), ("embed_items", "minilm"), ("train_teacher", "fusion"),
          ("export_teacher", "fusion"), ("train_student", "42"), ("distill", "dllm2rec", "42"),
          ("evaluate",)]

# runs a stage script under an audit hook that SIGKILLs the process at the n-th matching event
_KILLER = """
import os, re, runpy, signal, sys
event, pattern, nth = sys.argv[1], re.compile(sys.argv[2]), int(sys.argv[3])
seen = 0
def hook(name, args):
    global seen
    if name == event and any(isinstance(a, (str, os.PathLike)) and pattern.search(os.fspath(a)) for a in args):
        seen += 1
        if seen == nth:
            os.kill(os.getpid(), signal.SIGKILL)
sys.argv = sys.argv[4:]
sys.addaudithook(hook)
runpy.run_path(sys.argv[0], run_name="__main__")
"""


@dataclass(frozen=True)
class Kill:
    """SIGKILL the stage when it is about to do its `nth` audit `event` (`open`, `os.rename`, which
    os.replace raises too) on a path matching `pattern`."""

    event: str
    pattern: str
    nth: int = 1


def default_params(**synthetic: Any) -> dict[str, Any]:
    """The repository's params.yaml with the synthetic dataset resized and the rows cut to STAGES'."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["dataset"]["synthetic"] |= synthetic
    params["teachers"] = {"fusion": params["teachers"]["fusion"]}
    params["distill"] |= {"methods": ["dllm2rec"], "teachers": ["fusion"]}
    return params


def run_stage(root: Path, stage: str, *args: str, kill: Kill | None = None) -> subprocess.CompletedProcess:
    """`python stages/<stage>.py <args>` in `root` (as `dvc repro` runs it), optionally killed."""
    script = [str(REPO / "stages" / f"{stage}.py"), *args]
    launcher = ["-c", _KILLER, kill.event, kill.pattern, str(kill.nth)] if kill else []
    # idle OpenMP threads sleep instead of spinning: on a busy machine a spinning thread takes the core
    # its sibling needs to reach the barrier (the tiny pipeline on 2 threads: 48 s -> 26 s, same bytes)
    env = os.environ | {"TQDM_DISABLE": "1", "OMP_WAIT_POLICY": "PASSIVE"}
    return subprocess.run([sys.executable, *launcher, *script], cwd=root, capture_output=True, text=True,
                          env=env, timeout=600)


def write_params(root: Path, params: dict[str, Any]) -> None:
    root.mkdir(parents=True, exist_ok=True)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def run_pipeline(root: Path, params: dict[str, Any]) -> Path:
    """Every stage of STAGES in `root` with `params`; fails on the first stage that fails."""
    write_params(root, params)
    for stage in STAGES:
        result = run_stage(root, *stage)
        assert result.returncode == 0, f"{stage} failed:\n{result.stderr[-3000:]}"
    return root
