"""The Hugging Face backbone of the LLM and text teachers: fine-tuning (LoRA via peft, full,
frozen), precision, and saving/loading it so that a LoRA teacher of a 7B model saves megabytes."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from distillrec.errors import DataError
from distillrec.hf import from_pretrained, resolve_precision
from distillrec.params import TeacherParams

if TYPE_CHECKING:  # transformers takes seconds to import; the fusion and id teachers never need it
    from transformers import PreTrainedModel


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
