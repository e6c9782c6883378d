"""The Teacher interface and the Hugging Face plumbing both families share.

A teacher folder (`models/teachers/<name>/`) is self-contained: `backbone/` (the full model when it
was built from a config or fully fine-tuned), `adapter/` (peft LoRA weights), `tokenizer/`,
`extras.pt` (the family's own trainable modules) and `trained.json` (params and training summary; the
export's own card is `data/teacher/<name>/teacher.json`).
"""

from __future__ import annotations

import json
import logging
from abc import ABC, abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import polars as pl
import torch

from distillrec.errors import DataError
from distillrec.hf import from_pretrained, resolve_device, resolve_precision
from distillrec.params import TeacherExportParams, TeacherParams
from distillrec.teachers.data import TeacherData
from distillrec.teachers.export import ExportTables
from distillrec.train.loop import FitState

if TYPE_CHECKING:  # transformers takes seconds to import; the fusion and id teachers never need it
    from transformers import PreTrainedModel

log = logging.getLogger(__name__)


def resolve_dtype(cfg: TeacherParams, device: torch.device) -> torch.dtype:
    """bf16 on CUDA unless fp32 is asked for; fp32 on CPU unless bf16 is asked for."""
    return resolve_precision(cfg.train.precision, device)


def apply_finetune(model: PreTrainedModel, cfg: TeacherParams, default_targets: list[str] | None,
                   task_type: str) -> torch.nn.Module:
    """LoRA via peft (only adapter weights train), the whole model for `full`, nothing for `frozen`.

    `default_targets` None lets peft pick the LoRA targets of the model's architecture.
    """
    if cfg.model.finetune != "lora":
        return model.requires_grad_(cfg.model.finetune == "full")
    from peft import LoraConfig, get_peft_model

    lora = cfg.model.lora
    config = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, task_type=task_type,
                        target_modules=lora.target_modules or default_targets)
    try:
        return get_peft_model(model, config)
    except ValueError as exc:
        raise DataError(f"LoRA target_modules {config.target_modules} do not match the model: {exc}") from None


def save_backbone(model: torch.nn.Module, cfg: TeacherParams, folder: Path) -> None:
    """The adapter (LoRA) and, unless the base is a named pretrained model, the full base too.

    A frozen base is the named pretrained model itself: nothing to save.
    """
    if cfg.model.finetune == "frozen":
        return
    if cfg.model.finetune == "lora":
        model.save_pretrained(folder / "adapter")
        if cfg.model.base_model is None:
            model.get_base_model().save_pretrained(folder / "backbone")
            _strip_adapter_keys(folder / "backbone")
    else:
        model.save_pretrained(folder / "backbone")


def _strip_adapter_keys(folder: Path) -> None:
    """A peft-wrapped base saves `base_layer`/`lora_` keys; keep only the original weights."""
    from safetensors.torch import load_file, save_file

    for path in folder.glob("*.safetensors"):
        tensors = load_file(path)
        clean = {k.replace(".base_layer.", "."): v for k, v in tensors.items() if "lora_" not in k}
        save_file(clean, path, metadata={"format": "pt"})


def load_backbone(auto_cls: Any, cfg: TeacherParams, folder: Path, dtype: torch.dtype) -> torch.nn.Module:
    """Inverse of `save_backbone`: base (saved or named) plus the saved adapter."""
    base_dir = folder / "backbone"
    base = from_pretrained(auto_cls, str(base_dir) if base_dir.is_dir() else cfg.model.base_model, dtype=dtype)
    if cfg.model.finetune != "lora":
        return base.requires_grad_(cfg.model.finetune == "full")
    from peft import PeftModel

    return PeftModel.from_pretrained(base, folder / "adapter")


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
