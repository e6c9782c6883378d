"""`distillrec recommend` on release and saved-student folders: both backends, the text and JSON
outputs, every way to give a history, and errors as one `error:` line with rc 2.

Also the helpers that pull the `distillrec recommend` lines out of README.md and docs/*.md
(`doc_commands`, `doc_argv`); tests/test_pipeline.py runs them as printed in a reproduced copy.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
import torch

from distillrec.cli import build_parser, main as cli_main
from distillrec.params import StudentParams
from distillrec.students import build_student
from distillrec.students.saved import save_student
from tests.conftest import REPO
from tests.test_bad_inputs import N_ITEMS, write_student

LABELS = ["rank", "item_id", "score", "title"]


# ------------------------------------------------------------------------- helpers (also test_pipeline)

COMMAND = re.compile(r"^(distillrec|python3? -m distillrec) recommend(\s|$)")
SHELL_FENCES = {"bash", "sh", "shell", "console"}


def doc_commands(root: Path) -> list[tuple[str, str]]:
    """(file:line, command) for every `distillrec recommend` or `python -m distillrec recommend` line
    inside a ```bash fence of root/README.md and root/docs/*.md (a `$ ` prompt dropped, lines
    continued with a backslash joined)."""
    found = []
    for path in [root / "README.md", *sorted((root / "docs").glob("*.md"))]:
        fence, pending, start = None, "", 0
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            stripped = line.strip()
            if stripped.startswith("```"):
                fence = stripped[3:].strip().split(" ")[0].lower() if fence is None else None
                pending = ""
                continue
            if fence not in SHELL_FENCES:
                continue
            if not pending:
                start, stripped = number, stripped.removeprefix("$ ")
            if stripped.endswith("\\"):
                pending += stripped[:-1].rstrip() + " "
                continue
            command, pending = pending + stripped, ""
            if COMMAND.match(command):
                found.append((f"{path.relative_to(root)}:{start}", command))
    return found


def doc_argv(command: str) -> list[str]:
    """The command exactly as printed, run by this interpreter: a leading `distillrec` becomes
    `python -m distillrec`, a leading `python` this test's Python."""
    argv = shlex.split(command, comments=True)
    if argv[0] == "distillrec":
        return [sys.executable, "-m", "distillrec", *argv[1:]]
    if argv[0] in ("python", "python3"):
        return [sys.executable, *argv[1:]]
    return argv


def listed(stdout: str) -> list[str]:
    """The recommended item ids of `recommend`'s output, text or --json."""
    if stdout.lstrip().startswith("{"):
        return [r["item_id"] for r in json.loads(stdout)["recommendations"]]
    lines = stdout.splitlines()
    assert lines[0].startswith("# model ") and lines[1].split() == LABELS, stdout
    return [line.split()[1] for line in lines[2:]]


def run(capsys, *args: str) -> str:
    cli_main(["recommend", *map(str, args)])
    return capsys.readouterr().out


def fails(capsys, *args: str) -> str:
    """The stderr of a `recommend` that must exit with rc 2 and one `error:` line."""
    with pytest.raises(SystemExit) as info:
        cli_main(["recommend", *map(str, args)])
    captured = capsys.readouterr()
    assert info.value.code == 2 and captured.out == ""
    assert captured.err.startswith("error: ") and captured.err.count("\n") == 1, captured.err
    return captured.err


# ----------------------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def student(tmp_path_factory) -> Path:
    """A saved student (ids i01..i12) where training puts one: <model>-<method>/seed<seed>."""
    folder = tmp_path_factory.mktemp("students") / "sasrec-none" / "seed3"
    write_student(folder)
    return folder


@pytest.fixture(scope="module")
def comma_release(release_dir, tmp_path_factory) -> Path:
    """release_dir with ids that hold commas and spaces: 'crime, vol. 1' and 'a,b' for items 1 and 2."""
    folder = tmp_path_factory.mktemp("comma") / "release"
    shutil.copytree(release_dir, folder, ignore=shutil.ignore_patterns("teacher"))
    item_map = pl.read_parquet(folder / "item_map.parquet")
    ids = ["crime, vol. 1", "a,b", *item_map["item_id"][2:]]
    item_map.with_columns(pl.Series("item_id", ids)).write_parquet(folder / "item_map.parquet")
    return folder


@pytest.fixture(scope="module")
def split_student(small_split, tmp_path_factory) -> Path:
    """An untrained student whose catalogue is small_split's (what --user needs)."""
    n_items = pl.read_parquet(small_split / "item_map.parquet").height
    params = StudentParams(hidden=8, layers=1, heads=1, max_length=6, dropout=0.0)
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("split-student") / "sasrec-dllm2rec" / "seed1"
    save_student(folder, build_student(params, n_items), {"student": params.model_dump(mode="json"),
                                                          "n_items": n_items}, small_split / "item_map.parquet")
    return folder


# --------------------------------------------------------------------------------------------- tests

@pytest.mark.parametrize("backend", ["onnx", "torch"])
def test_release_lists_with_a_header_and_labelled_columns(release_dir, capsys, backend):
    out = run(capsys, "--model", release_dir, "--backend", backend, "--history", "i001,i002", "--k", 5)
    header, labels, *rows = out.splitlines()
    assert header == f"# model {release_dir}: row dllm2rec, seed 0; backend {backend}; history 2 items"
    assert labels.split() == LABELS and len(rows) == 5
    assert [row.split()[0] for row in rows] == ["1", "2", "3", "4", "5"]
    ids = listed(out)
    assert len(set(ids)) == 5 and not {"i001", "i002"} & set(ids)
    titles = [row.split(maxsplit=3)[3] for row in rows]
    assert all(title.endswith(f"item number {int(item[1:])}") for item, title in zip(ids, titles))
    scores = [float(row.split()[2]) for row in rows]
    assert scores == sorted(scores, reverse=True)


def test_json_is_one_object_and_both_backends_agree(release_dir, capsys):
    answers = {}
    for backend in ("onnx", "torch", "auto"):
        answers[backend] = json.loads(run(capsys, "--model", release_dir, "--backend", backend, "--history",
                                          "i003,i004,i005", "--k", 7, "--json"))
    onnx = answers["onnx"]
    assert list(onnx) == ["model", "row", "backend", "history", "recommendations"]
    assert onnx["model"] == str(release_dir) and onnx["row"] == "dllm2rec" and onnx["backend"] == "onnx"
    assert onnx["history"] == ["i003", "i004", "i005"] and answers["auto"] == onnx  # auto: onnx for a release
    recs = onnx["recommendations"]
    assert [r["rank"] for r in recs] == list(range(1, 8)) and all(set(r) == {"rank", "item_id", "title", "score"}
                                                                  for r in recs)
    torch_recs = answers["torch"]["recommendations"]
    assert [r["item_id"] for r in torch_recs] == [r["item_id"] for r in recs]
    assert all(abs(a["score"] - b["score"]) < 1e-4 for a, b in zip(recs, torch_recs))


def test_the_lists_are_those_of_the_python_api(release_dir, capsys):
    import distillrec

    expected = distillrec.load(release_dir).recommend([["i010", "i011"]], k=4, exclude_seen=False)[0]
    answer = json.loads(run(capsys, "--model", release_dir, "--history", "i010,i011", "--k", 4, "--keep-seen",
                            "--json"))
    assert [r["item_id"] for r in answer["recommendations"]] == expected.item_ids
    assert [r["score"] for r in answer["recommendations"]] == expected.scores


def test_a_saved_student_serves_with_torch(student, capsys):
    out = run(capsys, "--model", student, "--history", "i01,i02", "--k", 3)
    assert out.splitlines()[0] == f"# model {student}: row baseline (method none), seed 3; backend torch; history 2 items"
    assert len(listed(out)) == 3 and not {"i01", "i02"} & set(listed(out))
    answer = json.loads(run(capsys, "--model", student, "--backend", "torch", "--history", "i01", "--json"))
    assert answer["row"] == "baseline" and answer["backend"] == "torch" and len(answer["recommendations"]) == 10
    err = fails(capsys, "--model", student, "--backend", "onnx", "--history", "i01")
    assert "the onnx backend needs a release folder" in err


def test_repeated_history_values_are_concatenated(release_dir, capsys):
    once = json.loads(run(capsys, "--model", release_dir, "--history", "i001,i002,i003", "--json"))
    repeated = json.loads(run(capsys, "--model", release_dir, "--history", "i001", "--history", " i002 , ",
                              "--history", "i003", "--json"))
    assert repeated == once and repeated["history"] == ["i001", "i002", "i003"]
    other_order = json.loads(run(capsys, "--model", release_dir, "--history", "i003", "--history", "i001,i002",
                                 "--json"))
    assert other_order["history"] == ["i003", "i001", "i002"]


def test_history_file_takes_ids_that_hold_commas(comma_release, tmp_path, capsys):
    history = tmp_path / "history.txt"
    history.write_text("crime, vol. 1\n\n  a,b  \ni003\n", encoding="utf-8")
    answer = json.loads(run(capsys, "--model", comma_release, "--history-file", history, "--k", 40, "--json"))
    assert answer["history"] == ["crime, vol. 1", "a,b", "i003"]
    ids = [r["item_id"] for r in answer["recommendations"]]
    assert len(ids) == 37 and not set(answer["history"]) & set(ids)  # all the others, never a seen one
    kept = json.loads(run(capsys, "--model", comma_release, "--history-file", history, "--k", 40, "--keep-seen",
                          "--json"))
    assert {"crime, vol. 1", "a,b"} <= {r["item_id"] for r in kept["recommendations"]}
    assert "unknown item id(s) 'crime', 'vol. 1'" in fails(capsys, "--model", comma_release, "--history", "crime, vol. 1")
    history.write_text("\n \n")
    assert f"--history-file {history} is empty" in fails(capsys, "--model", comma_release, "--history-file", history)
    assert "cannot be read" in fails(capsys, "--model", comma_release, "--history-file", tmp_path / "absent.txt")


def test_user_recommends_what_comes_next_after_their_whole_sequence(split_student, small_split, capsys):
    longest = pl.read_parquet(small_split / "sequences.parquet").sort(pl.col("items").list.len(), "user_idx",
                                                                       descending=[True, False]).row(0, named=True)
    user_map = pl.read_parquet(small_split / "user_map.parquet")
    user, items = user_map.filter(pl.col("user_idx") == longest["user_idx"])["user_id"][0], longest["items"]
    item_ids = dict(pl.read_parquet(small_split / "item_map.parquet").select("item_idx", "item_id").iter_rows())
    sequence = [item_ids[i] for i in items]           # train, valid and test items, oldest first
    answer = json.loads(run(capsys, "--model", split_student, "--user", user, "--data", small_split, "--k", 5,
                            "--json"))
    assert answer["history"] == sequence and answer["row"] == "dllm2rec"
    ids = [r["item_id"] for r in answer["recommendations"]]
    assert len(ids) == 5 and not set(ids) & set(sequence)
    same = json.loads(run(capsys, "--model", split_student, "--history", ",".join(sequence), "--k", 5, "--json"))
    assert same["recommendations"] == answer["recommendations"]
    text = run(capsys, "--model", split_student, "--user", user, "--data", small_split, "--k", 5)
    assert f"history {len(sequence)} items of user {user} (the model reads the last 6)" in text.splitlines()[0]
    assert listed(text) == ids


def test_user_errors_name_the_user_and_the_split(split_student, student, small_split, tmp_path, capsys):
    err = fails(capsys, "--model", split_student, "--user", "nobody", "--data", small_split)
    first = pl.read_parquet(small_split / "user_map.parquet")["user_id"][0]
    assert "unknown user 'nobody'" in err and first in err and "user_map.parquet" in err
    err = fails(capsys, "--model", split_student, "--user", first, "--data", tmp_path / "nowhere")
    assert "lacks user_map.parquet" in err and "--data" in err
    (tmp_path / "broken").mkdir()
    for name in ("user_map", "sequences", "item_map"):
        (tmp_path / "broken" / f"{name}.parquet").write_bytes(b"PAR1 not really")
    assert "the split cannot be read" in fails(capsys, "--model", split_student, "--user", first, "--data",
                                               tmp_path / "broken")
    # a model of another catalogue: the split's ids are unknown to it
    err = fails(capsys, "--model", student, "--user", first, "--data", small_split)
    assert "unknown item id(s)" in err and "is that the split" in err


@pytest.mark.parametrize(("args", "message"), [
    (["--history", "nope,i001,alsonope"], "unknown item id(s) 'nope', 'alsonope': not in the model's catalogue (40 items, "
                                          "e.g. i001, i002, i003)"),
    (["--history", " , "], "--history is empty: give at least one item id"),
    (["--history", "i001", "--k", "0"], "--k must be >= 1, found 0"),
    (["--history", "i001", "--k", "-3"], "--k must be >= 1, found -3"),
    (["--history", ",".join(f"i{i:03d}" for i in range(1, 41))], "nothing to recommend"),
])
def test_bad_requests_are_one_error_line(release_dir, capsys, args, message):
    assert message in fails(capsys, "--model", release_dir, *args)


def test_a_missing_or_foreign_folder_is_one_error_line(tmp_path, capsys):
    assert f"{tmp_path / 'absent'}: no such folder" in fails(capsys, "--model", tmp_path / "absent", "--history", "a")
    (tmp_path / "empty").mkdir()
    assert "model.pt" in fails(capsys, "--model", tmp_path / "empty", "--history", "a")


def test_k_beyond_the_catalogue_lists_all_with_a_warning(student, capsys):
    cli_main(["recommend", "--model", str(student), "--history", "i01,i02,i03,i02", "--k", "50"])
    captured = capsys.readouterr()
    assert len(listed(captured.out)) == N_ITEMS - 3
    assert "--k 50 is more than the 9 items that can be recommended (12 in the catalogue, 3 already in the " \
           "history); listing all 9" in captured.err


def test_exactly_one_history_source(release_dir, capsys):
    for args in ([], ["--history", "i001", "--user", "u1"], ["--user", "u1", "--history-file", "f"]):
        with pytest.raises(SystemExit) as info:
            cli_main(["recommend", "--model", str(release_dir), *args])
        assert info.value.code == 2
    assert "one of the arguments --history --history-file --user is required" in capsys.readouterr().err


def test_the_console_command_starts_without_torch_or_polars(release_dir):
    """One real process: `python -m distillrec recommend --json` on a release (onnx) prints only
    JSON; neither torch nor polars is imported on that path."""
    result = subprocess.run([sys.executable, "-m", "distillrec", "recommend", "--model", str(release_dir),
                             "--history", "i001,i002", "--k", "3", "--json"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert [r["rank"] for r in json.loads(result.stdout)["recommendations"]] == [1, 2, 3]
    probe = ("import sys; from distillrec.cli import main; main(sys.argv[1:]); "
             "print(sorted(m for m in ('torch', 'polars') if m in sys.modules), file=sys.stderr)")
    result = subprocess.run([sys.executable, "-c", probe, "recommend", "--model", str(release_dir), "--history", "i001"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stderr.strip().splitlines()[-1] == "[]", result.stderr
    result = subprocess.run([sys.executable, "-m", "distillrec", "recommend", "--model", str(release_dir),
                             "--history", "nope"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and result.stdout == "" and "Traceback" not in result.stderr
    assert result.stderr.startswith("error: unknown item id(s) 'nope'")


# ------------------------------------------------------------------------------- the docs' commands

def test_doc_commands_are_found_as_printed(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "README.md").write_text(
        "```bash\ndistillrec recommend --model models/release --user u00000\n"
        "distillrec serve --model models/release\n```\n"
        "```python\ndistillrec recommend --not-a-shell-line\n```\n"
        "    ```bash\n    $ python -m distillrec recommend --model m \\\n        --history 'a,b' --k 3  # three\n    ```\n")
    (tmp_path / "docs" / "serving.md").write_text("text\n```\ndistillrec recommend --untyped-fence\n```\n"
                                                  "```sh\ndistillrec recommend --model m --json\n```\n")
    assert doc_commands(tmp_path) == [
        ("README.md:2", "distillrec recommend --model models/release --user u00000"),
        ("README.md:9", "python -m distillrec recommend --model m --history 'a,b' --k 3  # three"),
        ("docs/serving.md:6", "distillrec recommend --model m --json")]
    assert doc_argv("python -m distillrec recommend --model m --history 'a,b' --k 3  # three") == [
        sys.executable, "-m", "distillrec", "recommend", "--model", "m", "--history", "a,b", "--k", "3"]
    assert doc_argv("distillrec recommend --json")[:4] == [sys.executable, "-m", "distillrec", "recommend"]


def test_the_docs_recommend_commands_parse():
    """README.md's and docs/serving.md's lines use options that exist (tests/test_pipeline.py runs them)."""
    commands = doc_commands(REPO)
    assert {where.split(":")[0] for where, _ in commands} >= {"README.md", "docs/serving.md"}
    parser = build_parser()
    for where, command in commands:
        args = parser.parse_args(doc_argv(command)[3:])
        assert args.command == "recommend", where
