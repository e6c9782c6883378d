"""The `release` stage's work: one row's student (chosen on validation by default) as a folder a
team can deploy without the pipeline.

models/release/: model.safetensors + config.json, model.onnx (parity with torch checked here),
item_map.parquet, README.md (model card, card.py), and teacher/ (the validation-best teacher of
the id, text or fusion family, folded into a plain SASRec, for the page and the load benchmark).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from distillrec.data.splitdata import SplitData
from distillrec.errors import DataError
from distillrec.io import atomic_dir
from distillrec.params import Params, StudentParams, TeacherParams
from distillrec.serving.artifact import export_onnx, onnx_parity, write_model
from distillrec.serving.card import model_card
from distillrec.serving.files import ITEMS, ONNX
from distillrec.serving.recommender import load
from distillrec.students import Student, build_student
from distillrec.students.saved import folded_state, load_student

log = logging.getLogger(__name__)
FOLDABLE = ("id", "text", "fusion")   # teachers that are a SASRec over an item table


def chosen_row(params: Params, details: dict[str, Any]) -> tuple[str, int]:
    """(row, seed) that release.row/seed name; `best` = evaluate's validation choices."""
    row = params.release.row
    if row == "best":
        row = details["auto"]["selection"]["chosen"]
    if row not in details or "runs" not in details[row]:
        raise DataError(f"metrics/details.json has no trained row {row!r}: re-run evaluate")
    runs = details[row]["runs"]
    if params.release.seed != "best":
        seed = int(params.release.seed)
    else:
        metric = params.evaluate.compare_metric
        seed = int(max(runs, key=lambda name: (runs[name]["valid"][metric], name))[len("seed"):])
    if f"seed{seed}" not in runs:
        raise DataError(f"metrics/details.json: row {row} has no seed {seed}: re-run evaluate")
    return row, seed


def parity_histories(split: SplitData, count: int, max_length: int) -> np.ndarray:
    """`count` left-padded histories spread over every (user, position) of the split, short ones included."""
    examples = split.examples.sort("user_idx", "position")
    pick = np.unique(np.linspace(0, examples.height - 1, min(count, examples.height)).round().astype(np.int64))
    rows = examples[pick]
    histories = split.histories(rows["user_idx"].to_numpy().astype(np.int64),
                                rows["position"].to_numpy().astype(np.int64), max_length)
    return histories[(histories != 0).any(1)]


def latency_ms(folder: Path, history: list[str], repeats: int) -> dict[str, dict[str, float]]:
    """p50/p99 of one `recommend([history], k=10)` call per backend, one thread, after a warm-up."""
    out = {}
    for backend in ("torch", "onnx"):
        model = load(folder, backend=backend, threads=1)
        model.recommend([history])
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            model.recommend([history])
            times.append((time.perf_counter() - start) * 1000)
        out[backend] = {"p50": round(float(np.percentile(times, 50)), 3),
                        "p99": round(float(np.percentile(times, 99)), 3)}
    return out


def fold_teacher(cfg: TeacherParams, folder: Path) -> tuple[Student, dict[str, Any]]:
    """The saved teacher in `folder` as a plain SASRec whose item table is its computed one (ID
    embedding + adaptor(text vector) for fusion): the same scores at inference, served by the
    students' code."""
    from distillrec.teachers.registry import teacher_class

    teacher = teacher_class(cfg.family).load(folder, cfg)
    module = teacher.module.eval().cpu()
    if cfg.family == "id":   # already a plain student
        return module, StudentParams.model_validate(cfg.model.model_dump()).model_dump()
    architecture = StudentParams(model="sasrec", **{f: getattr(cfg.model, f) for f in
                                                     ("hidden", "layers", "heads", "dropout", "max_length")})
    plain = build_student(architecture, module.n_items)
    state = {k: v for k, v in module.state_dict().items() if not k.startswith("items.")}
    state["items.weight"] = module.item_embeddings().detach().clone()
    plain.load_state_dict(state)
    return plain.eval(), architecture.model_dump()


def _write(folder: Path, model: Student, architecture: dict, config: dict, item_map: pl.DataFrame,
           histories: np.ndarray, tolerance: float) -> dict[str, Any]:
    config = write_model(folder, model, architecture, config)
    item_map.write_parquet(folder / ITEMS)
    export_onnx(model, architecture["max_length"], folder / ONNX)
    return {"config": config, "params": sum(t.numel() for t in folded_state(model).values()),
            "parity": onnx_parity(model, folder / ONNX, histories, tolerance)}


def build_release(params: Params, out: Path) -> None:
    """models/release/ for the row release.row names (see the module docstring)."""
    details = json.loads(Path("metrics/details.json").read_text())
    row, seed = chosen_row(params, details)
    method = "none" if row == "baseline" else row
    student_dir = Path("models/students") / f"{params.student.model}-{method}" / f"seed{seed}"
    model, meta = load_student(student_dir)
    split = SplitData.load("data/processed")
    item_map = pl.read_parquet(student_dir / ITEMS).select("item_idx", "item_id", "title").sort("item_idx")
    histories = parity_histories(split, params.release.parity_histories, params.student.max_length)
    teacher = _teacher_name(params, details)
    provenance = {"row": row, "method": method, "seed": seed, "source": str(student_dir),
                  "distill": meta.get("distill"), "fit": meta.get("fit"), "teacher_served": teacher,
                  "serve": params.serve.model_dump()}
    with atomic_dir(out) as tmp:
        written = _write(tmp, model, meta["student"], provenance, item_map, histories, params.release.parity_tolerance)
        if teacher is not None:
            (tmp / "teacher").mkdir()
            folded, architecture = fold_teacher(params.teachers[teacher], Path("models/teachers") / teacher)
            teacher_info = {"row": f"teacher-{teacher}", "teacher": teacher, "family": params.teachers[teacher].family,
                            "serve": params.serve.model_dump()}
            written["teacher"] = _write(tmp / "teacher", folded, architecture, teacher_info, item_map, histories,
                                        params.release.parity_tolerance)
        example = _example_history(split, item_map, params.student.max_length)
        latency = latency_ms(tmp, example, params.release.latency_repeats)
        card = model_card(row=row, seed=seed, details=details, data={"users": split.n_users, "items": split.n_items,
                                                                     "interactions": len(split.items)},
                          params=params, written=written, latency=latency, example=example, folder=tmp)
        (tmp / "README.md").write_text(card)
    log.info("release: %s (seed %d) -> %s; ONNX parity on %d histories, max |diff| %.1e%s", row, seed, out,
             written["parity"]["histories"], written["parity"]["max_abs_diff"],
             f"; teacher {teacher} beside it" if teacher else "")


def _teacher_name(params: Params, details: dict[str, Any]) -> str | None:
    """release.teacher, `best` resolved to evaluate's validation choice; None if it cannot be folded."""
    wanted = params.release.teacher
    if wanted == "best":
        teachers = {name[len("teacher-"):]: info["valid"][params.evaluate.compare_metric]
                    for name, info in details.items() if name.startswith("teacher-") and "valid" in info}
        foldable = {n: v for n, v in teachers.items() if n in params.teachers and params.teachers[n].family in FOLDABLE}
        best = max(teachers, key=teachers.get) if teachers else None
        if best not in foldable:
            log.info("release: the best teacher on validation (%s) is not of the id, text or fusion family; "
                     "no teacher is served beside the student", best)
            return None
        return best
    if wanted is not None and params.teachers[wanted].family not in FOLDABLE:
        raise DataError(f"release.teacher {wanted}: family {params.teachers[wanted].family} cannot be served "
                        f"as a SASRec (only {', '.join(FOLDABLE)}); set it to null")
    return wanted


def _example_history(split: SplitData, item_map: pl.DataFrame, max_length: int) -> list[str]:
    """The first test user's history (ids as in the raw data): the card's example and latency input."""
    test = split.examples.filter(pl.col("split") == "test").sort("user_idx").row(0, named=True)
    items = split.histories(np.array([test["user_idx"]]), np.array([test["position"]]), max_length)[0]
    ids = dict(zip(item_map["item_idx"].to_list(), item_map["item_id"].to_list()))
    return [ids[int(i)] for i in items if i]

