"""The teacher stage scripts as DVC runs them, including data-parallel training in 2 processes."""

import json
import subprocess
import sys

import pytest
import yaml

from tests.conftest import REPO

pytestmark = pytest.mark.slow

TINY = {"family": "seq2seq", "finetune": "lora",
        "config": {"d_model": 32, "layers": 1, "heads": 2, "d_ff": 64, "vocab_size": 300},
        "train": {"epochs": 1, "batch_size": 16, "sample": 64, "valid_examples": 16, "threads": 1},
        "export": {"top_k": 5, "train_positions": 1, "batch_size": 32, "explanation_beams": 2},
        "seq2seq": {"max_history": 6, "explanation_tokens": 8}}


@pytest.fixture
def workdir(tmp_path, small_split):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "processed").symlink_to(small_split)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"teachers": {"tiny": TINY}}))
    return tmp_path


def _run(cmd, cwd):
    result = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=600)
    return result.returncode, result.stdout + result.stderr


def test_two_process_training_then_export(workdir):
    code, out = _run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                      str(REPO / "stages" / "train_teacher.py"), "tiny"], workdir)
    assert code == 0, out
    summary = json.loads((workdir / "models" / "teachers" / "tiny" / "teacher.json").read_text())
    assert summary["fit"]["epochs"] == 1 and summary["trainable_parameters"] < summary["parameters"]
    assert (workdir / "models" / "teachers" / "tiny" / "adapter").is_dir()
    code, out = _run([sys.executable, str(REPO / "stages" / "export_teacher.py"), "tiny"], workdir)
    assert code == 0, out
    info = json.loads((workdir / "data" / "teacher" / "tiny" / "teacher.json").read_text())
    assert info["top_k"] == 5 and info["counts"]["topk_examples"]["test"] > 0


def test_unknown_teacher_and_bad_base_model_fail_cleanly(workdir):
    code, out = _run([sys.executable, str(REPO / "stages" / "train_teacher.py"), "nope"], workdir)
    assert code == 1 and "no teacher named 'nope'" in out and "Traceback" not in out
    params = {"teachers": {"tiny": TINY | {"base_model": "./no/such/model"}}}
    (workdir / "params.yaml").write_text(yaml.safe_dump(params))
    code, out = _run([sys.executable, str(REPO / "stages" / "train_teacher.py"), "tiny"], workdir)
    assert code == 1 and "no such folder" in out and "Traceback" not in out
    assert not (workdir / "models" / "teachers" / "tiny").exists()
