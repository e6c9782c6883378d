"""The `id` teacher: a large ID-based sequential model (a student architecture, several times bigger).

It is the cheap, strong teacher practitioners use, and the control that shows whether an LLM
teacher adds anything beyond capacity. It trains with the students' trainer (full-catalogue CE,
validation NDCG selection) and exports the common schema: top-K with log-softmax scores over the
whole catalogue, its output item table, and the state that scores each history.
"""

from __future__ import annotations

import logging
from pathlib import Path

import polars as pl
import torch

from distillrec.params import IdTeacherParams, StudentParams, TeacherExportParams
from distillrec.students import build_student
from distillrec.students.saved import load_student, save_student
from distillrec.teachers.base import Teacher, device_of
from distillrec.teachers.data import TeacherData
from distillrec.teachers.export import ExportTables
from distillrec.teachers.studentbacked import export_student, train_params
from distillrec.train.loop import FitState
from distillrec.train.objectives import build_objective
from distillrec.train.trainer import Trainer

log = logging.getLogger(__name__)


class IdTeacher(Teacher):
    """A SASRec/BERT4Rec/GRU4Rec/Caser of `cfg.model` size as a teacher."""

    family = "id"

    def __init__(self, cfg: IdTeacherParams, model: torch.nn.Module, meta: dict | None = None):
        super().__init__(cfg, device_of(cfg))
        self.module = model.to(self.device)
        self.meta = meta or {}

    @classmethod
    def create(cls, cfg: IdTeacherParams, data: TeacherData) -> IdTeacher:
        torch.manual_seed(cfg.train.seed)
        return cls(cfg, build_student(cfg.model, data.n_items))

    def fit(self, data: TeacherData, checkpoint_dir: Path, live_dir: Path, run_id: str) -> FitState:
        train = train_params(self.cfg)
        trainer = Trainer(self.module, data.split, self.cfg.model, train, build_objective(train, data.split),
                          checkpoint_dir, live_dir, run_id, self.cfg.train.seed)
        state = trainer.fit()
        student = StudentParams.model_validate(self.cfg.model.model_dump())
        self.meta = {"student": student.model_dump(mode="json"), "n_items": data.n_items,
                     "parameters": sum(p.numel() for p in self.module.parameters()), "fit": state.summary()}
        self._item_map = data.split.item_map
        return state

    def save(self, folder: Path) -> None:
        item_map = folder / "item_map.parquet"
        self._item_map.write_parquet(item_map)
        save_student(folder / "model", self.module, self.meta, item_map)

    @classmethod
    def load(cls, folder: Path, cfg: IdTeacherParams) -> IdTeacher:
        model, meta = load_student(folder / "model", device_of(cfg))
        return cls(cfg, model, meta)

    def export(self, data: TeacherData, examples: pl.DataFrame, cfg: TeacherExportParams) -> ExportTables:
        info = {"family": "id", "model": self.cfg.model.model, "hidden": self.cfg.model.hidden,
                "item_embeddings": "the model's output item table"}
        return export_student(self.module, data, examples, cfg, self.cfg.model.max_length, info)
