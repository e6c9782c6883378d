"""Two clean runs of a tiny pipeline write the same bytes, and a run whose stages are SIGKILLed in
the middle of their work and run again ends exactly where an uninterrupted run does.

The tiny pipeline is the default's story (tests/pipelinerun.py: fusion teacher, export, baseline,
DLLM2Rec, evaluate) on 120 users for two epochs, training on 2 threads so that a sum in thread order
would show. One clean run (`reference`) serves both tests. Files that carry wall times are compared
without those fields; README (Reliability) lists them.

The killed run SIGKILLs teacher training, the export, distillation and evaluate each at a fixed
operation (`pipelinerun.Kill`), checks what is on disk, then runs the stage script again, as
`dvc repro` would after a crash (the checkpoint folders persist, the outputs are rewritten).
"""

from __future__ import annotations

import json
import re
import shutil
import signal
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.conftest import small_params
from tests.pipelinerun import STAGES, Kill, default_params, run_pipeline, run_stage, write_params

pytestmark = pytest.mark.slow

OUTPUTS = ("data", "models", "metrics", "dvclive")
# the wall-clock fields and the files that hold them: all that two runs may disagree on
WALL_TIME = {"created", "exported_at", "seconds", "seconds_per_epoch", "seconds_to_best", "train_seconds",
             "load_seconds", "items_per_second", "ms_per_example", "ms_per_user", "latency_ms", "users_per_second"}
TIMED = re.compile(r"data/item_text/[^/]+/card\.json|data/teacher/[^/]+/teacher\.json"
                   r"|models/teachers/[^/]+/trained\.json|models/students/.+/student\.json"
                   r"|models/checkpoints/.+/checkpoint\.pt|metrics/details\.json")
UNCOMPARED = {"metrics/report.md"}   # its cost columns are wall times; its metrics are details.json's
TEMPORARY = re.compile(r"(^|/)\.[^/]+\.(tmp|old)-\d+(/|$)|(^|/)\.lock$")


def files(root: Path, under: str = "") -> dict[str, Path]:
    """The pipeline's files under `root` (optionally only those of the output `under`), by relative name."""
    found = {p.relative_to(root).as_posix(): p for top in OUTPUTS for p in (root / top).rglob("*") if p.is_file()}
    return {name: p for name, p in found.items() if not under or name == under or name.startswith(under + "/")}


def _same(a: Any, b: Any) -> bool:
    """Equal contents, wall-time fields aside; tensors bit for bit."""
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(k in WALL_TIME or _same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(map(_same, a, b))
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    return a == b or (isinstance(a, float) and isinstance(b, float) and a != a and b != b)   # NaN: NaN


def _load(path: Path) -> Any:
    return torch.load(path, weights_only=True) if path.suffix == ".pt" else json.loads(path.read_text())


def differences(run: Path, reference: Path, under: str = "") -> list[str]:
    """Files (of the output `under`) that differ between two runs or that only one of them has."""
    mine, theirs = files(run, under), files(reference, under)
    differ = sorted(set(mine) ^ set(theirs))
    for name in sorted(set(mine) & set(theirs) - UNCOMPARED):
        if TIMED.fullmatch(name):
            same = _same(_load(mine[name]), _load(theirs[name]))
        else:
            same = mine[name].read_bytes() == theirs[name].read_bytes()
        differ += [] if same else [name]
    return differ


@pytest.fixture(scope="module")
def tiny() -> dict[str, Any]:
    params = default_params(**small_params().dataset.synthetic.model_dump())
    params["train"] |= {"epochs": 2, "threads": 2}
    params["teachers"]["fusion"]["train"] |= {"epochs": 2, "threads": 2}
    params["evaluate"]["latency_repeats"] = 1
    return params


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny) -> Path:
    """One clean, uninterrupted run."""
    return run_pipeline(tmp_path_factory.mktemp("reference"), tiny)


def test_two_clean_runs_write_identical_outputs(reference, tiny, tmp_path):
    again = run_pipeline(tmp_path, tiny)
    assert json.loads((reference / "models/teachers/fusion/trained.json").read_text())["threads"] == 2
    assert json.loads((reference / "models/students/sasrec-dllm2rec/seed42/student.json").read_text())["threads"] == 2
    assert differences(again, reference) == []
    # every stage's Parquet tables and the DVC metrics were compared byte for byte, no field excepted
    strict = [n for n in files(reference) if n.endswith(".parquet") or re.fullmatch(r"metrics/(eval|rows/.+)\.json", n)]
    assert {"data/interim/interactions.parquet", "data/processed/examples.parquet", "metrics/eval.json",
            "data/item_text/minilm/item_embeddings.parquet", "data/teacher/fusion/topk.parquet",
            "models/students/sasrec-dllm2rec/seed42/item_map.parquet", "metrics/ranks.parquet",
            "metrics/rows/dllm2rec.json"} <= set(strict)
    assert not [n for n in strict if TIMED.fullmatch(n) or n in UNCOMPARED]
    assert not [n for n in files(reference) if TEMPORARY.search(n)]


# stage -> where it is killed, its outputs (present at the kill: complete; else absent), and the
# temporary file that shows the kill came in the middle of writing
CRASHES = {
    ("train_teacher", "fusion"):        # epoch 2 trained, its checkpoint written but not in place
        (Kill("os.rename", r"(^|/)checkpoint\.pt$", 2), {"models/teachers/fusion": False},
         r"models/checkpoints/teacher-fusion/\.checkpoint\.pt\.tmp-\d+"),
    ("export_teacher", "fusion"):       # its rows recorded in parts and joined, teacher.json not yet
        (Kill("open", r"/\.fusion\.tmp-\d+/\.teacher\.json\.tmp-\d+$"), {"data/teacher/fusion": False},
         r"data/teacher/\.fusion\.tmp-\d+/sequence_states\.parquet"),
    ("distill", "dllm2rec", "42"):        # epoch 2 of distillation trained, its checkpoint not in place
        (Kill("os.rename", r"(^|/)checkpoint\.pt$", 2), {"models/students/sasrec-dllm2rec/seed42": False},
         r"models/checkpoints/sasrec-dllm2rec/seed42/\.checkpoint\.pt\.tmp-\d+"),
    ("evaluate",):                      # the DVC metrics written, the figures about to be put in place
        (Kill("os.rename", r"(^|/)\.figures\.tmp-\d+$"),
         {"metrics/eval.json": True, "metrics/rows": True, "metrics/details.json": True, "metrics/buckets.csv": True,
          "metrics/figures": False, "metrics/report.md": False, "metrics/plots/ndcg_at_k": False,
          "metrics/ranks.parquet": False},
         r"metrics/\.figures\.tmp-\d+/gain\.png"),
}
FIRST_KILLED = STAGES.index(next(iter(CRASHES)))
# what the stages before the first killed one write: taken from the reference, which the test above
# shows a clean run reproduces byte for byte
UPSTREAM = ["data/interim", "data/processed", "data/item_text", "models/checkpoints/embed-minilm",
            "metrics/data.json"]


def test_stages_killed_mid_work_rerun_to_the_uninterrupted_result(reference, tiny, tmp_path):
    write_params(tmp_path, tiny)
    for name in UPSTREAM:
        copy = shutil.copytree if (reference / name).is_dir() else shutil.copy2
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        copy(reference / name, tmp_path / name)
    for stage in STAGES[FIRST_KILLED:]:
        if stage in CRASHES:
            kill, outputs, left = CRASHES[stage]
            killed = run_stage(tmp_path, *stage, kill=kill)
            assert killed.returncode == -signal.SIGKILL, f"{stage} was not killed:\n{killed.stderr[-3000:]}"
            assert [n for n in files(tmp_path) if re.fullmatch(left, n)], f"{stage}: no {left} at the kill"
            for out, present in outputs.items():   # complete or absent: never half-written
                assert (tmp_path / out).exists() == present, out
                assert not present or differences(tmp_path, reference, out) == [], out
        result = run_stage(tmp_path, *stage)   # what `dvc repro` runs again (the checkpoints persist)
        assert result.returncode == 0, f"{stage} failed on the rerun:\n{result.stderr[-3000:]}"
        if stage[0] == "export_teacher":   # its scored rows were recorded in parts: not scored again
            assert "resuming the export after" in result.stderr, result.stderr[-3000:]
    assert not [n for n in files(tmp_path) if TEMPORARY.search(n)]   # no temporary file or lock left
    assert differences(tmp_path, reference) == []
