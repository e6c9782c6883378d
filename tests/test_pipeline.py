"""Smoke test of the DVC DAG: `dvc repro` in a throw-away copy of the repository."""

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO, SHARED

pytestmark = pytest.mark.slow


def _run(cmd, cwd):
    result = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, f"{cmd} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout + result.stderr


def _copy_repo(dest: Path) -> Path:
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
                           cwd=REPO, capture_output=True, text=True, check=True).stdout.split("\0")
    for name in filter(None, files):
        source = REPO / name
        if source.is_file() and not name.startswith(("data/", "models/", "metrics/", "dvc.lock")):
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)
    _run(["git", "init", "-q"], dest)
    _run(["git", "-c", "user.email=t@t", "-c", "user.name=t", "add", "-A"], dest)
    _run(["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "copy"], dest)
    return dest


def _set(repo: Path, dotted: str, value) -> None:
    params = yaml.safe_load((repo / "params.yaml").read_text())
    node = params
    *parents, leaf = dotted.split(".")
    for key in parents:
        node = node[key]
    node[leaf] = value
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def _ran(output: str) -> set[str]:
    return {line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage")}


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    repo = _copy_repo(tmp_path_factory.mktemp("repo"))
    # a smaller default keeps the smoke test fast; the DAG and code paths are the same
    _set(repo, "dataset.synthetic.n_users", 300)
    _set(repo, "train.epochs", 2)
    _set(repo, "evaluate.latency_repeats", 10)
    _set(repo, "teachers.pod.train.epochs", 1)
    _set(repo, "teachers.pod.export.train_positions", 2)
    return repo


def test_repro_runs_then_is_up_to_date_and_reruns_only_what_changed(repo):
    first = _run(["dvc", "repro"], repo)
    methods = ("dllm2rec", "prmkd", "feature", "logit_kd", "llm_init")
    students = {"train_student@42", *(f"distill@{m}-42" for m in methods)}
    assert _ran(first) == {"ingest", "split", "embed_items@words", "train_teacher@pod", "export_teacher@pod",
                           *students, "evaluate"}
    metrics = json.loads((repo / "metrics" / "data.json").read_text())
    assert metrics["raw"]["users"] == 300 and metrics["filtered"]["interactions"] > 3_000
    evaluation = json.loads((repo / "metrics" / "eval.json").read_text())
    assert set(evaluation) == {"popularity", "teacher-pod", "baseline", *methods, "buckets"}
    assert evaluation["dllm2rec"]["vs_baseline"]["metric"] == "ndcg@10"
    assert set(evaluation["buckets"]["users"]) == {"tail", "head", "short", "long"}
    assert set(evaluation["dllm2rec"]["buckets"]["tail"]) == {"ndcg@10", "gain", "p"}
    assert (repo / "metrics" / "buckets.csv").is_file()
    assert 0 < evaluation["baseline"]["test"]["ndcg@10"] <= 1
    assert 0 <= evaluation["teacher-pod"]["test"]["ndcg@10"] <= 1
    assert 0 <= evaluation["teacher-pod"]["explanation"]["bleu1"] <= 100
    assert (repo / "models" / "students" / "sasrec-none" / "seed42" / "model.pt").is_file()
    assert "| baseline |" in (repo / "metrics" / "report.md").read_text()
    assert _ran(_run(["dvc", "repro"], repo)) == set()
    _set(repo, "distill.logit_kd.temperature", 3.0)
    assert _ran(_run(["dvc", "repro"], repo)) == {"distill@logit_kd-42", "evaluate"}
    _set(repo, "distill.llm_init.scale", 0.05)
    assert _ran(_run(["dvc", "repro"], repo)) == {"distill@llm_init-42", "evaluate"}
    _set(repo, "teachers.pod.export.top_k", 10)
    assert _ran(_run(["dvc", "repro"], repo)) == {"export_teacher@pod", *students - {"train_student@42"}, "evaluate"}
    _set(repo, "distill.llm_init.combine", ["logit_kd"])
    assert _ran(_run(["dvc", "repro"], repo)) == {"distill@llm_init-42", "distill_llm_init@logit_kd-42", "evaluate"}
    assert "llm_init+logit_kd" in json.loads((repo / "metrics" / "eval.json").read_text())
    _set(repo, "split.item_core", 10)
    assert _ran(_run(["dvc", "repro"], repo)) == {"split", "embed_items@words", "train_teacher@pod",
                                                  "export_teacher@pod", *students, "distill_llm_init@logit_kd-42",
                                                  "evaluate"}
    _set(repo, "evaluate.ks", [1, 10])
    assert _ran(_run(["dvc", "repro"], repo)) == {"evaluate"}


def test_bad_param_fails_the_stage_with_the_key(repo):
    _set(repo, "split.usr_core", 3)
    result = subprocess.run(["dvc", "repro"], cwd=repo, capture_output=True, text=True, timeout=600)
    assert result.returncode != 0
    assert "unknown key 'split.usr_core'" in result.stdout + result.stderr
    params = yaml.safe_load((repo / "params.yaml").read_text())
    del params["split"]["usr_core"]
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def test_real_movielens_100k_through_the_dag(repo):
    if not (SHARED / "data" / "ml-100k").is_dir():
        pytest.skip(f"{SHARED}/data/ml-100k is absent: the real-data pipeline test needs it")
    _set(repo, "dataset.source", "recbole")
    _set(repo, "dataset.name", "ml-100k")
    _set(repo, "dataset.path", str(SHARED / "data" / "ml-100k"))
    _run(["dvc", "repro", "split"], repo)
    metrics = json.loads((repo / "metrics" / "data.json").read_text())
    assert metrics["raw"] == {"users": 943, "items": 1682, "interactions": 100000}
    assert metrics["filtered"]["users"] == 943
