"""The Teacher interface, its saved folder's extra modules and summary (Hugging Face backbones: `backbone.py`).

A teacher folder (`models/teachers/<name>/`) is self-contained: `backbone/` (the full model when it
was built from a config or fully fine-tuned), `adapter/` (peft LoRA weights), `tokenizer/`,
`extras.pt` (the family's own trainable modules) and `trained.json` (params and training summary; the
export's own card is `data/teacher/<name>/teacher.json`).
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar

import polars as pl
import torch

from distillrec.errors import DataError
from distillrec.hf import resolve_device
from distillrec.params import TeacherExportParams, TeacherParams
from distillrec.teachers.data import TeacherData
from distillrec.teachers.export import ExportTables
from distillrec.train.loop import FitState



def read_extras(folder: Path) -> dict[str, Any]:
    """The tensors of `extras.pt`, or a DataError that says to re-train."""
    path = folder / "extras.pt"
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated or foreign file
        raise DataError(f"{path} is unreadable ({type(exc).__name__}: {exc}); re-run train_teacher") from None


def load_extras(folder: Path, modules: dict[str, torch.nn.Module]) -> None:
    path, state = folder / "extras.pt", read_extras(folder)
    for name, module in modules.items():
        try:
            module.load_state_dict(state[name])
        except (KeyError, RuntimeError) as exc:  # another teacher's file, or other params
            raise DataError(f"{path} does not fit this teacher's modules ({name}: {str(exc)[:300]}); "
                            f"it was written with other params: re-run train_teacher") from None


class Teacher(ABC):
    """One family of LLM teacher: build, fit on the split, save/load, export the common schema."""

    family: ClassVar[str]
    module: torch.nn.Module  # every trainable part (HF model and the family's extra modules)

    def __init__(self, cfg: TeacherParams, device: torch.device):
        self.cfg, self.device = cfg, device

    @classmethod
    @abstractmethod
    def create(cls, cfg: TeacherParams, data: TeacherData) -> Teacher:
        """Build from `cfg.model.base_model` (or from `cfg.model.config` with a tokenizer trained on `data`)."""

    @abstractmethod
    def fit(self, data: TeacherData, checkpoint_dir: Path, live_dir: Path, run_id: str) -> FitState:
        """Train with `train.loop.Loop` (validation-only selection, checkpoint/resume)."""

    @abstractmethod
    def save(self, folder: Path) -> None:
        """Write backbone/adapter, tokenizer and extras into `folder` (already created)."""

    @classmethod
    @abstractmethod
    def load(cls, folder: Path, cfg: TeacherParams) -> Teacher:
        """Inverse of `save`."""

    @abstractmethod
    def export(self, data: TeacherData, examples: pl.DataFrame, cfg: TeacherExportParams) -> ExportTables:
        """Top-K (and embeddings, states, explanations where the family has them) for `examples`."""


def read_summary(folder: Path | str) -> dict[str, Any]:
    path = Path(folder) / "trained.json"
    if not path.is_file():
        raise DataError(f"{folder} is not a trained teacher (no trained.json): run train_teacher")
    return json.loads(path.read_text())


def device_of(cfg: TeacherParams) -> torch.device:
    return resolve_device(cfg.train.device)
