"""Each DVC stage declares exactly the code it runs, so editing a module re-runs every stage that
imports it (and only those), and the params its settings come from.

The code a stage runs is computed from its script's imports, followed transitively through
`distillrec` (function-level imports included: they run when the stage needs them; imports under
`if TYPE_CHECKING:` never run). A declared `src/` or `stages/` path that no imported module lies
under is unused; an imported module that no declared path covers is missing.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

from distillrec.data.sources import SOURCES, Source
from distillrec.params import STUDENT_TRAINING, TEACHER_FAMILIES, TEACHER_SECTIONS, TrainParams
from distillrec.teachers.registry import FAMILIES
from tests.conftest import REPO

SRC = REPO / "src"
# modules loaded by name at run time (importlib), by the module that loads them
DYNAMIC = {"distillrec.data.sources": set(SOURCES.values()),
           "distillrec.teachers.registry": {module for module, _ in FAMILIES.values()}}


def module_file(name: str) -> Path | None:
    base = SRC / Path(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.exists():
            return candidate
    return None


def _type_checking_block(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def imported_names(path: Path, package: str) -> set[str]:
    """distillrec modules `path` imports (absolute or relative, at any depth except TYPE_CHECKING)."""
    tree = ast.parse(path.read_text())
    skipped = {id(n) for block in ast.walk(tree) if _type_checking_block(block) for n in ast.walk(block)
               if n is not block}
    names: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            names.add(base)
            names |= {f"{base}.{alias.name}" for alias in node.names}  # `from pkg import module`
    me = ".".join(path.relative_to(SRC).with_suffix("").parts).removesuffix(".__init__") if SRC in path.parents else ""
    names |= DYNAMIC.get(me, set())
    return {n for n in names if n == "distillrec" or n.startswith("distillrec.")}


def stage_modules(script: Path) -> set[Path]:
    """Every distillrec source file `script` runs, with the packages' __init__ files on the way."""
    seen: set[Path] = set()
    todo = [(script, "")]
    while todo:
        path, package = todo.pop()
        for name in imported_names(path, package):
            parts = name.split(".")
            for depth in range(1, len(parts) + 1):  # importing a.b.c runs a/__init__ and a/b/__init__
                file = module_file(".".join(parts[:depth]))
                if file is not None and file not in seen:
                    seen.add(file)
                    own = ".".join(parts[:depth]) if file.name == "__init__.py" else ".".join(parts[:depth - 1])
                    todo.append((file, own))
    return seen


def runs_code(path: Path) -> bool:
    """False for a package __init__ of only a docstring and constants (its edits cannot change a run)."""
    def inert(node: ast.stmt) -> bool:
        return (isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)) or (
            isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant))
    return path.name != "__init__.py" or not all(inert(n) for n in ast.parse(path.read_text()).body)


def stages() -> dict[str, dict]:
    return yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]


def body(stage: dict) -> dict:
    return stage.get("do", stage)


def code_deps(stage: dict) -> list[str]:
    return [d for d in body(stage)["deps"] if d.startswith(("src/", "stages/"))]


def coverage(stage: dict) -> tuple[list[str], list[str]]:
    """(imported files no declared path covers, declared paths no imported file lies under)."""
    script = REPO / body(stage)["cmd"].split()[1]
    needed = {script} | stage_modules(script)
    needed = {f for f in needed if runs_code(f)}
    declared = [REPO / d for d in code_deps(stage)]
    missing = sorted(str(f.relative_to(REPO)) for f in needed
                     if not any(f == d or d in f.parents for d in declared))
    unused = sorted(str(d.relative_to(REPO)) for d in declared
                    if not any(f == d or d in f.parents for f in needed))
    return missing, unused


@pytest.mark.parametrize("name", list(stages()))
def test_each_stage_declares_exactly_the_code_it_imports(name):
    missing, unused = coverage(stages()[name])
    deps = body(stages()[name])["deps"]
    assert len(set(deps)) == len(deps), f"{name}: a dep is listed twice"
    assert missing == [], f"{name}: add these deps to dvc.yaml"
    assert unused == [], f"{name}: these deps are never imported by the stage"


def test_a_removed_dep_is_found_missing_and_an_extra_one_unused():
    stage = stages()["distill"]
    deps = body(stage)["deps"]
    without = dict(stage, deps=[d for d in deps if d != "src/distillrec/distill"])
    assert "src/distillrec/distill/dllm2rec.py" in coverage(without)[0]
    extra = dict(stage, deps=deps + ["src/distillrec/teachers/pod.py"])
    assert coverage(extra)[1] == ["src/distillrec/teachers/pod.py"]


def declared_params(stage: dict) -> list[str]:
    return [p for p in body(stage)["params"] if isinstance(p, str)]


@pytest.mark.parametrize("name", ["train_student", "distill", "distill_llm_init"])
def test_student_stages_declare_every_training_setting(name):
    # every train.* field changes the trained student, except seeds: the stage's own seed is its argument
    expected = {f"train.{field}" for field in TrainParams.model_fields} - {"train.seeds"}
    declared = set(declared_params(stages()[name]))
    assert expected - declared == set(), name
    assert {p for p in declared if p.startswith("train.")} - expected == set(), name


def test_teacher_stages_declare_every_setting_that_changes_the_teacher():
    # every family has the same keys, so one fixed list declares any family's training settings and
    # nothing else: `export` re-runs only the export
    for family, cls in TEACHER_FAMILIES.items():
        assert tuple(cls.model_fields) == TEACHER_SECTIONS, family
    training = declared_params(stages()["train_teacher"])
    assert training == [f"teachers.${{key}}.{part}" for part in TEACHER_SECTIONS if part != "export"]
    assert declared_params(stages()["export_teacher"]) == ["teachers.${key}"]
    assert set(STUDENT_TRAINING) <= set(TrainParams.model_fields)  # the teachers' objective fields are students'


def test_import_stage_declares_its_params_and_the_imported_folder():
    stage = stages()["import_teacher"]
    assert stage["foreach"] == "${imports}"
    assert declared_params(stage) == ["imports.${key}"]
    deps = body(stage)["deps"]
    assert "${item.path}" in deps and "data/processed" in deps  # the files, checked against the split
    assert body(stage)["outs"] == ["data/teacher/${key}"]  # where distill and evaluate read every teacher


def import_graph() -> dict[str, set[str]]:
    """module -> the distillrec modules it imports (function-level included, TYPE_CHECKING not)."""
    graph = {}
    for file in sorted((SRC / "distillrec").rglob("*.py")):
        name = ".".join(file.relative_to(SRC).with_suffix("").parts).removesuffix(".__init__")
        package = name if file.name == "__init__.py" else name.rpartition(".")[0]
        targets = {module_file(n) for n in imported_names(file, package)} - {None, file}
        graph[name] = {".".join(t.relative_to(SRC).with_suffix("").parts).removesuffix(".__init__") for t in targets}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycle_in_distillrec():
    assert cycles(import_graph()) == []


def test_a_cycle_is_found():
    graph = import_graph()
    graph["distillrec.teachers.base"] = graph["distillrec.teachers.base"] | {"distillrec.teachers.registry"}
    found = cycles(graph)
    assert len(found) == 1 and {"distillrec.teachers.base", "distillrec.teachers.registry"} <= set(found[0])


@pytest.mark.parametrize("name", list(SOURCES))
def test_every_source_name_has_a_module_with_the_source_interface(name):
    import importlib
    import inspect

    module = importlib.import_module(SOURCES[name])
    assert list(inspect.signature(module.load).parameters) == list(inspect.signature(Source.load).parameters)[1:]


# README "Architecture": lowest first; a package may import its own layer or lower ones
LAYERS = [{"errors", "params", "io", "hf", "tokenizer", "stage"}, {"data"}, {"students", "embed"}, {"train"},
          {"teachers"}, {"evaluate"}, {"distill"}, {"serving"}]
SERVING = {"cli": {"errors", "io", "students", "serving", "data", "plots", "tune", "__main__"},
           # tools over the pipeline's outputs, which no stage imports
           "tune": {"errors", "io", "params", "data", "evaluate"}, "plots": {"errors", "io"}}


def layer_violations(graph: dict[str, set[str]]) -> list[str]:
    def package(module: str) -> str:
        parts = module.split(".")
        return parts[1] if len(parts) > 1 else "errors"  # `distillrec` itself: a docstring and a version

    level = {name: i for i, layer in enumerate(LAYERS) for name in layer}
    bad = []
    for module, imports in graph.items():
        for target in imports:
            a, b = package(module), package(target)
            if a in SERVING or a == "__main__":
                allowed = b in SERVING.get(a, set()) | {"cli", a}
            else:
                allowed = b in level and level[b] <= level[a]
            if not allowed:
                bad.append(f"{module} -> {target}")
    return sorted(bad)


def test_every_package_imports_only_its_layer_or_lower():
    graph = import_graph()
    assert {m.split(".")[1] for m in graph if "." in m} <= set().union(*LAYERS, SERVING, {"__main__"})
    assert layer_violations(graph) == []


def test_a_layer_violation_is_found():
    graph = import_graph()
    graph["distillrec.students.sasrec"] = graph["distillrec.students.sasrec"] | {"distillrec.train.loop"}
    assert layer_violations(graph) == ["distillrec.students.sasrec -> distillrec.train.loop"]
