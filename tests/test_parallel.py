"""Data-parallel training of a student in 2 CPU processes (torchrun, gloo) against one process."""

import json
import os
import subprocess
import sys

import pytest
import torch
import yaml

from distillrec.evaluate.evaluation import Evaluator
from distillrec.params import EvaluateParams
from tests.conftest import REPO

pytestmark = pytest.mark.slow

PARAMS = {"student": {"hidden": 32, "layers": 1, "heads": 1, "max_length": 20},
          "train": {"epochs": 6, "patience": 6, "batch_size": 16, "seeds": [5], "threads": 1,
                    "objective": "sampled_softmax", "negatives": 32, "batching": "bucketed"}}


def run_stage(workdir, processes: int) -> str:
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes)] if processes > 1 \
        else [sys.executable]
    result = subprocess.run([*launcher, str(REPO / "stages" / "train_student.py"), "5"], cwd=workdir,
                            capture_output=True, text=True, timeout=600, env=os.environ | {"OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout + result.stderr


@pytest.fixture
def workdirs(tmp_path, small_split):
    dirs = []
    for name in ("one", "two"):
        (tmp_path / name / "data").mkdir(parents=True)
        (tmp_path / name / "data" / "processed").symlink_to(small_split)
        (tmp_path / name / "params.yaml").write_text(yaml.safe_dump(PARAMS))
        dirs.append(tmp_path / name)
    return dirs


def test_two_processes_train_in_step_and_match_one_process(workdirs, small_split):
    one, two = workdirs
    run_stage(one, 1)
    run_stage(two, 2)
    folder = "models/students/sasrec-none/seed5"
    meta = {name: json.loads((d / folder / "student.json").read_text()) for name, d in (("one", one), ("two", two))}
    assert meta["one"]["processes"] == 1 and meta["two"]["processes"] == 2
    assert meta["two"]["fit"]["epochs"] == 6  # and the processes ended with equal weights (Trainer.fit checks)
    # each process took half of every epoch's batches: the checkpoint's curve holds one entry per epoch
    history = torch.load(two / f"models/checkpoints/sasrec-none/seed5/checkpoint.pt", weights_only=True)["state"]["history"]
    assert len(history) == 6 and history[-1]["loss"] < history[0]["loss"]
    evaluator = Evaluator(small_split, EvaluateParams(latency_repeats=2))
    evaluator.add_popularity()
    for name, d in (("one", one), ("two", two)):
        evaluator.add_student(name, d / folder)
    test = {name: evaluator.table[name]["test"]["ndcg@10"] for name in ("popularity", "one", "two")}
    # half the optimiser steps of twice the batch: not the same trajectory, the same quality (README)
    assert test["two"] > 1.2 * test["popularity"]
    assert abs(test["two"] - test["one"]) < 0.1 * test["one"], test


def test_a_stage_destroys_its_process_group_when_it_ends_even_on_error(tmp_path, monkeypatch):
    import torch.distributed as dist

    from distillrec.errors import DistillrecError
    from distillrec.stage import stage

    def body(params):
        dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
        assert dist.is_initialized()
        raise DistillrecError("bad input")

    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text("{}\n")
    monkeypatch.setattr(sys, "argv", ["stage.py"])
    with pytest.raises(SystemExit) as exited:
        stage(body)()
    assert exited.value.code == 1 and not dist.is_initialized()
