"""Distilled students end to end (DVC stages `distill` and `distill_llm_init`): the objective of a
method (`dllm2rec`, `llm_init`, `llm_init+dllm2rec`, ...) built from the teacher exports and item
vectors, then the students' training (`train.run.train_student`)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from distillrec.data.splitdata import SplitData
from distillrec.distill.llm_init import init_item_table
from distillrec.io import sha256_file
from distillrec.params import Params, method_parts
from distillrec.students import Student
from distillrec.train.objectives import build_base, build_objective
from distillrec.train.run import Plan, train_student

log = logging.getLogger(__name__)


def method_plan(params: Params, method: str, data: SplitData, model: Student, teachers_root: Path,
                item_text_root: Path) -> Plan:
    """The objective of `method` (e.g. `dllm2rec`, `llm_init`, `llm_init+dllm2rec`), what identifies it
    (params, teacher exports, item vectors) and its gate, fed every validation. `llm_init` initialises
    the student's item table here."""
    parts = [] if method == "none" else method_parts(method)
    identity: dict[str, Any] = {}
    if parts[:1] == ["llm_init"]:
        cfg = params.distill.llm_init
        init_item_table(model, item_vectors(item_text_root, cfg.embedding, data.n_items), cfg.scale)
        identity["llm_init"] = {"params": cfg.model_dump(mode="json"),
                                "vectors": vectors_id(item_text_root, cfg.embedding)}
        parts = parts[1:]
    if not parts:
        return Plan(build_objective(params.train, data), identity)
    method = parts[0]
    from distillrec.distill import build_distill_objective
    from distillrec.evaluate.listed import listed_metrics
    from distillrec.teachers.export import TeacherExport  # import here: llm_init alone needs no teacher code

    names = params.distill.teachers if method == "prmkd" else params.distill.teachers[:1]
    exports = [TeacherExport(teachers_root / name) for name in names]
    kwargs = getattr(params.distill, method).model_dump()
    extra: dict[str, Any] = {}
    if method == "dllm2rec":  # CED from the teacher's item table or straight from an LM's item vectors
        table = kwargs.pop("ed_table")
        if table != "teacher" and kwargs["ed_weight"] > 0:
            extra["ed_vectors"] = torch.as_tensor(item_vectors(item_text_root, table, data.n_items))
            identity["ed_vectors"] = vectors_id(item_text_root, table)
    gate_k = int(params.train.select_metric.split("@")[1])
    weigh = method == "prmkd" and kwargs["teacher_weights"] is None
    valid = ([listed_metrics(e, data, "valid", sorted({10, gate_k}), False)[1] for e in exports]  # ranked once
             if weigh or params.distill.gate else [])
    if weigh:  # each teacher's validation strength
        strength = [v["ndcg@10"] for v in valid]
        known = [s for s in strength if s is not None]  # an imported teacher may have no validation rows
        kwargs["teacher_weights"] = [s if s is not None else (sum(known) / len(known) if known else 1.0)
                                     for s in strength]
        log.info("PRM-KD teacher weights (validation NDCG@10): %s", dict(zip(names, kwargs["teacher_weights"])))
    objective = build_distill_objective(method, build_base(params.train, data), exports, data, model, **kwargs, **extra)
    gate = teacher_gate(params, objective, valid) if params.distill.gate else None
    identity |= {"method": method, "params": getattr(params.distill, method).model_dump(mode="json"),
                 "teachers": {e.name: e.content_id() for e in exports}, "gate": gate}
    return Plan(objective, identity, objective.observe if gate is not None else None)


def item_vectors(root: Path, name: str | None, n_items: int) -> np.ndarray:
    """The `embed` entry `name`'s item vectors [N + 1, D] (row 0 padding)."""
    from distillrec.embed.store import read_item_embeddings

    return read_item_embeddings(root / str(name), n_items)


def vectors_id(root: Path, name: str | None) -> str:
    """What identifies an embed output for checkpoint fingerprints: its file's content hash."""
    return sha256_file(root / str(name) / "item_embeddings.parquet")


def teacher_gate(params: Params, objective: Any, valid: list[dict[str, float | None]]) -> float | None:
    """Enable the objective's gate at the best teacher's validation value of the selection metric
    (`valid`: each teacher's validation metrics from its exported top-K)."""
    metric = params.train.select_metric
    known = [v[metric] for v in valid if v.get(metric) is not None]
    if not known:  # imported teachers without validation rows, or K below the metric's cut-off
        log.warning("distill.gate: no teacher has a validation %s; the teacher terms stay on", metric)
        return None
    objective.enable_gate(metric, max(known))
    log.info("distill.gate: teacher terms stop while the student's validation %s exceeds %.4f", metric, max(known))
    return max(known)


def distill_student(params: Params, processed: Path | str, out_dir: Path | str, checkpoint_dir: Path | str,
                    live_dir: Path | str, method: str, seed: int | None = None,
                    teachers_root: Path | str = "data/teacher", item_text_root: Path | str = "data/item_text"
                    ) -> dict[str, Any]:
    """`train_student` with the objective of `method` (the teachers' exports under `teachers_root`,
    the item vectors under `item_text_root`)."""
    def plan(model: Student, data: SplitData) -> Plan:
        return method_plan(params, method, data, model, Path(teachers_root), Path(item_text_root))

    return train_student(params, processed, out_dir, checkpoint_dir, live_dir, seed, plan)
