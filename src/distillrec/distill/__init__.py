"""Distillation losses by name: each wraps the base objective and adds terms found by batch key.

`build_distill_objective` is the only constructor the pipeline calls. It wraps a base loss
(model, batch, step) -> (loss, logs) of `train.objectives` and returns the trainer's Objective
(model, batch) -> (loss, logs); every method except "none" returns an nn.Module whose
own parameters (projectors, heads) the optimiser must include, and DLLM2Rec's embedding
distillation attaches an `item_adapter` to the student itself (so build the objective before
the optimiser; see `trainable_parameters`).
"""

from __future__ import annotations

import inspect
import logging
from typing import Any

from torch import nn

from distillrec.data.splitdata import SplitData
from distillrec.distill.dllm2rec import DLLM2Rec, ItemAdapter, attach_item_adapter
from distillrec.distill.feature import FeatureDistill
from distillrec.distill.logit_kd import LogitKD
from distillrec.distill.lookup import TeacherLookup
from distillrec.distill.objective import DistillObjective
from distillrec.distill.prmkd import PRMKD
from distillrec.errors import ParamsError
from distillrec.students.base import Student
from distillrec.teachers.export import TeacherExport
from distillrec.train.objectives import BaseLoss, Objective, objective_of

log = logging.getLogger(__name__)

# method -> (class, how many teachers it takes: 1 or None = one or more)
METHODS: dict[str, tuple[type[DistillObjective] | None, int | None]] = {
    "none": (None, None),
    "dllm2rec": (DLLM2Rec, 1),
    "prmkd": (PRMKD, None),
    "feature": (FeatureDistill, 1),
    "logit_kd": (LogitKD, 1),
}

__all__ = ["METHODS", "DLLM2Rec", "DistillObjective", "FeatureDistill", "ItemAdapter", "LogitKD", "PRMKD",
           "TeacherLookup", "attach_item_adapter", "build_distill_objective", "trainable_parameters"]


def build_distill_objective(method: str, base: BaseLoss, teachers: list[TeacherExport], data: SplitData,
                            student: Student, **method_params: Any) -> Objective:
    """The objective of `method` around the base loss; teachers are checked against `data` here."""
    if method not in METHODS:
        raise ParamsError(f"unknown distillation method {method!r}; expected one of {', '.join(METHODS)}")
    cls, n_teachers = METHODS[method]
    if cls is None:
        if method_params:
            raise ParamsError(f"distillation method 'none' takes no parameters, got {sorted(method_params)}")
        return objective_of(base)
    if not teachers or (n_teachers is not None and len(teachers) != n_teachers):
        raise ParamsError(f"distillation method {method!r} takes "
                          f"{'one teacher' if n_teachers == 1 else 'one or more teachers'}, got {len(teachers)}")
    accepted = [name for name, p in inspect.signature(cls).parameters.items() if p.kind is p.KEYWORD_ONLY]
    unknown = sorted(set(method_params) - set(accepted))
    if unknown:
        raise ParamsError(f"distillation method {method!r}: unknown parameter(s) {unknown}; "
                          f"accepted: {', '.join(accepted)}")
    lookups = [TeacherLookup(teacher, data) for teacher in teachers]
    positional: dict[str, Any] = {"lookups": lookups} if n_teachers is None else {"lookup": lookups[0]}
    if "student" in inspect.signature(cls).parameters:
        positional["student"] = student
    try:
        objective = cls(base, **positional, **method_params)
    except ValueError as exc:
        raise ParamsError(f"distillation method {method!r}: {exc}") from None
    log.info("distillation %s from %s: %d trainable parameters in the loss", method,
             ", ".join(str(t.folder) for t in teachers), sum(p.numel() for p in objective.parameters()))
    return objective


def trainable_parameters(student: Student, objective: Objective) -> list[nn.Parameter]:
    """Everything the optimiser updates: the student's (CED adapter included) and the loss's own."""
    own = list(objective.parameters()) if isinstance(objective, nn.Module) else []
    return list(student.parameters()) + own
