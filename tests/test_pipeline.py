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
    _set(repo, "dataset.synthetic.n_items", 400)
    _set(repo, "train.epochs", 2)
    _set(repo, "evaluate.latency_repeats", 10)
    _set(repo, "release.latency_repeats", 10)
    _set(repo, "release.parity_histories", 256)
    _set(repo, "release.teacher", None)      # one ONNX export per release run (tests/test_release.py folds teachers)
    _set(repo, "teachers.fusion.train.epochs", 2)
    _set(repo, "teachers.llm.train.epochs", 1)
    _set(repo, "teachers.llm.train.sample", 200)
    return repo


TEACHERS = ("fusion", "llm")
METHODS = ("dllm2rec", "prmkd", "feature", "logit_kd", "llm_init")
ROW_KEYS = {"hr@10", "ndcg@10", "valid_ndcg@10", "gain", "p", "p_holm", "neg_log10_p", "params"}


def _keys(node) -> int:
    return sum(_keys(v) for v in node.values()) if isinstance(node, dict) else 1


def test_repro_runs_then_is_up_to_date_and_reruns_only_what_changed(repo):
    first = _run(["dvc", "repro"], repo)
    students = {"train_student@42", *(f"distill@{m}-42" for m in METHODS)}
    teachers = {f"{stage}@{t}" for t in TEACHERS for stage in ("train_teacher", "export_teacher")}
    assert _ran(first) == {"check_params", "ingest", "split", "embed_items@minilm", *teachers, *students, "evaluate",
                           "release"}
    metrics = json.loads((repo / "metrics" / "data.json").read_text())
    assert metrics["raw"]["users"] == 300 and metrics["filtered"]["interactions"] > 2_000
    # the headline: a one-line story and one small file per row, all with the same keys
    story = json.loads((repo / "metrics" / "eval.json").read_text())
    assert set(story) == {"best", "ndcg@10", "gain", "p", "p_holm", "neg_log10_p", "tail_gain", "teacher"}
    assert story["best"] in METHODS and story["teacher"] in {f"teacher-{t}" for t in TEACHERS}
    rows = {p.stem: json.loads(p.read_text()) for p in (repo / "metrics" / "rows").glob("*.json")}
    assert set(rows) == {"popularity", *(f"teacher-{t}" for t in TEACHERS), "baseline", *METHODS, "auto"}
    assert all(set(row) == ROW_KEYS for row in rows.values())
    assert _keys(story) + _keys(rows) < 100  # 10 rows x 8 keys + the story's 8
    assert 0 < rows["baseline"]["ndcg@10"] <= 1 and rows["baseline"]["gain"] is None
    details = json.loads((repo / "metrics" / "details.json").read_text())
    ci = details["dllm2rec"]["vs_baseline"]
    assert ci["ci_low"] <= rows["dllm2rec"]["gain"] <= ci["ci_high"]
    assert set(details["buckets"]["users"]) == {"tail", "head", "short", "long"}
    assert set(details["dllm2rec"]["buckets"]["tail"]) == {"ndcg@10", "gain", "p", "p_holm"}
    assert (repo / "metrics" / "buckets.csv").is_file()
    report = (repo / "metrics" / "report.md").read_text()
    assert "| baseline |" in report and "## By item popularity and history length" in report
    assert "| dllm2rec | tail |" in report and "| dllm2rec | head |" in report
    assert all((repo / "metrics" / "figures" / f).is_file() for f in ("gain.png", "buckets.png", "curves.png"))
    # DVC sees the headline as metrics and nothing else (the curves' summaries are plain outs)
    shown = json.loads(_run(["dvc", "metrics", "show", "--json"], repo))
    files = set(next(iter(shown.values()))["data"])
    assert files == {"metrics/eval.json", *(f"metrics/rows/{r}.json" for r in rows)}
    table = _run(["dvc", "metrics", "show"], repo)
    assert max(len(line) for line in table.splitlines()) <= 160, table
    assert (repo / "models" / "students" / "sasrec-none" / "seed42" / "model.pt").is_file()
    assert _ran(_run(["dvc", "repro"], repo)) == set()
    _set(repo, "distill.logit_kd.temperature", 3.0)
    assert _ran(_run(["dvc", "repro"], repo)) == {"check_params", "distill@logit_kd-42", "evaluate", "release"}
    _set(repo, "distill.llm_init.scale", 0.05)
    assert _ran(_run(["dvc", "repro"], repo)) == {"check_params", "distill@llm_init-42", "evaluate", "release"}
    _set(repo, "teachers.llm.export.top_k", 20)
    assert _ran(_run(["dvc", "repro"], repo)) == {"check_params", "export_teacher@llm", *students - {"train_student@42"},
                                                  "evaluate", "release"}
    _set(repo, "distill.llm_init.combine", ["logit_kd"])
    assert _ran(_run(["dvc", "repro"], repo)) == {"check_params", "distill@llm_init-42", "distill_llm_init@logit_kd-42",
                                                  "evaluate", "release"}
    assert (repo / "metrics" / "rows" / "llm_init+logit_kd.json").is_file()
    _set(repo, "split.item_core", 3)
    assert _ran(_run(["dvc", "repro"], repo)) == {"check_params", "split", "embed_items@minilm", *teachers, *students,
                                                  "distill_llm_init@logit_kd-42", "evaluate", "release"}
    _set(repo, "evaluate.ks", [1, 10])
    assert _ran(_run(["dvc", "repro"], repo)) == {"check_params", "evaluate", "release"}


@pytest.mark.parametrize(("key", "value", "message", "kept"), [
    ("split.usr_core", 3, "unknown key 'split.usr_core'", "data/processed"),
    ("train.lr", -1.0, "'train.lr': Input should be greater than 0", "models/students/sasrec-none/seed42/model.pt"),
])
def test_bad_param_fails_first_and_leaves_every_output(repo, key, value, message, kept):
    """check_params runs before the stage that reads the key: DVC has deleted none of its outputs."""
    assert (repo / kept).exists()
    before = (repo / "params.yaml").read_text()
    _set(repo, key, value)
    result = subprocess.run(["dvc", "repro"], cwd=repo, capture_output=True, text=True, timeout=600)
    assert result.returncode != 0
    assert message in result.stdout + result.stderr
    assert _ran(result.stdout + result.stderr) == {"check_params"}
    assert (repo / kept).exists()
    (repo / "params.yaml").write_text(before)
    assert _ran(_run(["dvc", "repro"], repo)) == {"check_params"}  # the same stamp: nothing else re-runs


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


def test_the_docs_recommend_commands_run_as_printed(repo):
    """Every `distillrec recommend` line of README.md and docs/*.md (tests/test_cli.py's
    doc_commands), run exactly as printed in the copy the tests above reproduced (release stage
    included): rc 0 and a non-empty list. The docs' ids and users exist in both the default data
    and this smaller one."""
    from tests.test_cli import doc_argv, doc_commands, listed

    # test_real_movielens_100k pointed the copy's split at ml-100k: back to the synthetic data the
    # DAG ran on (DVC's run cache restores the split; nothing downstream re-runs)
    committed = subprocess.run(["git", "show", "HEAD:params.yaml"], cwd=repo, capture_output=True, text=True,
                               check=True).stdout
    for key, value in yaml.safe_load(committed)["dataset"].items():
        if key in ("source", "name", "path"):
            _set(repo, f"dataset.{key}", value)
    _run(["dvc", "repro"], repo)
    assert (repo / "models" / "release" / "model.onnx").is_file()
    commands = doc_commands(repo)
    assert commands, "README.md and docs/*.md show no `distillrec recommend` line in a ```bash block"
    for where, command in commands:
        result = subprocess.run(doc_argv(command), cwd=repo, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, f"{where}: `{command}` exited {result.returncode}:\n{result.stderr}"
        assert listed(result.stdout), f"{where}: `{command}` listed nothing:\n{result.stdout}"
