"""benchmarks/gpu_check.py: the --tiny rehearsal runs every part on CPU; failures are recorded, not raised."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"


@pytest.fixture(scope="module")
def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module   # dataclasses look their module up there
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]


def test_tiny_rehearsal_runs_every_part(gpu_check, tmp_path):
    gpu_check.main(["--tiny", "--out", str(tmp_path)])
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    parts = report["parts"]
    assert report["mode"] == "tiny" and report["device"] == "cpu"
    assert list(parts) == list(gpu_check.PARTS)
    assert {name: part["status"] for name, part in parts.items()} == {name: "ok" for name in gpu_check.PARTS}, \
        {name: part.get("error") for name, part in parts.items()}

    checks = parts["cuda_vs_cpu"]["checks"]
    assert len(checks) == 9 and parts["cuda_vs_cpu"]["passed"]
    for name, check in checks.items():   # CPU against CPU: the same numbers, bit for bit
        assert check["within"] and check["max_abs_diff"] == 0.0 and check["ran_on"] == ["cpu", "cpu"], name
        assert check.get("top_items_equal", 1.0) == 1.0
    assert {"valid_loss", "train_step_loss", "gradients", "scoring_top_scores"} <= set(
        checks["teacher causal (LLaMA + LoRA)"])
    assert checks["student bert4rec (ce)"]["gradients"]["size"] > 1000

    causal = parts["causal_7b"]
    assert causal["model"]["trainable_parameters"] < causal["model"]["parameters"]   # LoRA
    assert causal["training"]["step_seconds"] > 0 and causal["training"]["tokens_per_example_mean"] > 20
    scoring = causal["scoring_export"]
    assert scoring["prefixes"] > 100 and scoring["prefixes_per_second"] > 0
    assert 0 < scoring["forward_passes"] < scoring["prefixes"]   # one pass scores several prefixes
    assert causal["projection"]["seconds"] == pytest.approx(120_000 / scoring["prefixes_per_second"], rel=0.01)

    pod = parts["pod_t5_small"]
    assert pod["training"]["examples_per_second"] > 0 and pod["training"]["tasks"] == ["sequential", "explanation"]
    assert pod["export"]["examples"] == 32 and pod["export"]["examples_per_second"] > 0
    assert pod["model"]["config"]["vocab_size"] >= 300

    embed = parts["embed_7b"]
    assert embed["items"] == report["dataset"]["items"] and embed["items_per_second"] > 0
    assert embed["vectors_finite"] and embed["dim"] == 32

    sasrec = parts["sasrec_180k"]
    assert sasrec["items"] == 2000 and sasrec["windows"] == 256
    for objective in ("ce", "sampled_softmax"):
        result = sasrec["objectives"][objective]
        assert result["windows_per_second"] > 0 and np.isfinite(result["loss"]), objective

    summary = (tmp_path / "gpu_check.md").read_text()
    assert "| causal_7b | ok |" in summary and "**cpu vs cpu**" in summary
    assert "| student caser (ce) | True |" in summary


def test_a_failing_part_is_recorded_and_the_run_goes_on(gpu_check, tmp_path):
    ctx = gpu_check.Context(torch.device("cpu"), gpu_check.TINY, None, None, tmp_path)

    def broken(_):
        raise RuntimeError("out of memory (simulated)")

    result = gpu_check.run_part("broken", broken, ctx)
    assert result["status"] == "error" and result["error"] == "RuntimeError: out of memory (simulated)"
    assert "broken" in result["traceback"] and result["seconds"] >= 0
    assert gpu_check.run_part("fine", lambda _: {"x": 1}, ctx)["status"] == "ok"
    assert gpu_check.run_part("mismatch", lambda _: {"passed": False}, ctx)["status"] == "failed"


def test_compare_flags_differences_and_runs_on_the_wrong_device(gpu_check):
    reference = {"loss": 2.0, "scores": np.array([1.0, 2.0]), "top_items": np.array([3, 4]), "ran_on": "cpu"}
    close = {"loss": 2.0 + 1e-5, "scores": np.array([1.0, 2.0]), "top_items": np.array([4, 3]), "ran_on": "cpu"}
    result = gpu_check.compare(reference, close, torch.device("cpu"))
    assert result["within"] and result["max_abs_diff"] == pytest.approx(1e-5) and result["top_items_equal"] == 0.0
    far = dict(close, scores=np.array([1.0, 2.01]))
    result = gpu_check.compare(reference, far, torch.device("cpu"))
    assert not result["within"] and not result["scores"]["within"] and result["loss"]["within"]
    # a "CUDA" run whose model stayed on the CPU proves nothing
    assert not gpu_check.compare(reference, close, torch.device("cuda"))["within"]
