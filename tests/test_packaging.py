"""pyproject.toml and requirements.txt pin the same versions (they cannot drift), and the
`distillrec` command starts, as `python -m distillrec` and as the console script that
`pip install -e .` (the last line of requirements.txt) puts on PATH."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys

import pytest

from tests.conftest import REPO

TEST_ONLY = {"pytest", "hypothesis"}   # pyproject's optional `test` extra


def _name(requirement: str) -> str:
    """PEP 503 normalised project name of a requirement line."""
    return re.sub(r"[-_.]+", "-", re.split(r"[=<>!~;\[ ]", requirement, maxsplit=1)[0]).lower()


def requirements() -> list[str]:
    """requirements.txt's requirements, comments and options (`-e .`) left out."""
    lines = [line.split("#", 1)[0].strip() for line in (REPO / "requirements.txt").read_text().splitlines()]
    return [line for line in lines if line and not line.startswith("-")]


def pyproject() -> dict:
    tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from Python 3.11")
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def test_requirements_are_exact_pins_and_install_the_package():
    lines = (REPO / "requirements.txt").read_text().splitlines()
    assert "-e ." in [line.split("#", 1)[0].strip() for line in lines], "requirements.txt must install the package"
    loose = [r for r in requirements() if not re.fullmatch(r"[A-Za-z0-9._-]+==[A-Za-z0-9.+!-]+", r)]
    assert not loose, f"requirements.txt: pin every requirement with == (reproducible installs): {loose}"
    names = [_name(r) for r in requirements()]
    assert len(names) == len(set(names)), "requirements.txt names a project twice"


def test_pyproject_pins_what_requirements_pin():
    project = pyproject()
    pins = requirements()
    runtime = sorted((r for r in pins if _name(r) not in TEST_ONLY), key=_name)
    test = sorted((r for r in pins if _name(r) in TEST_ONLY), key=_name)
    declared = sorted(project.get("dependencies", []), key=_name)
    missing, extra = sorted(set(runtime) - set(declared)), sorted(set(declared) - set(runtime))
    assert not missing and not extra, (
        "pyproject.toml [project] dependencies and requirements.txt differ: copy the pins across "
        f"(only in requirements.txt: {missing}; only in pyproject.toml: {extra})")
    assert declared == runtime  # and no pin twice
    assert sorted(project.get("optional-dependencies", {}).get("test", []), key=_name) == test
    assert {_name(r) for r in test} == TEST_ONLY
    assert project["scripts"] == {"distillrec": "distillrec.cli:main"}


def test_python_m_distillrec_help():
    result = subprocess.run([sys.executable, "-m", "distillrec", "--help"], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert all(command in result.stdout for command in ("recommend", "serve", "plots", "tune"))


def test_the_console_script_on_path_runs():
    script = shutil.which("distillrec")
    if script is None:
        pytest.skip("no `distillrec` on PATH: `pip install -e .` (requirements.txt's last line) installs it")
    result = subprocess.run([script, "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "recommend" in result.stdout and result.stdout.startswith("usage: distillrec")
