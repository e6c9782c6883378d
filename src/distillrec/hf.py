"""Torch and Hugging Face plumbing shared by the stages: device and precision, loading with clear errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from distillrec.errors import DataError


def resolve_device(name: str) -> torch.device:
    """`auto`: CUDA when torch sees it, else CPU; `cuda` without a CUDA device is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise DataError("device: cuda, but torch sees no CUDA device (install the CUDA build of torch, "
                        "or set device: auto)")
    return torch.device(name)


def resolve_precision(precision: str, device: torch.device) -> torch.dtype:
    """`auto`: bf16 on CUDA, fp32 elsewhere; `bf16`/`fp32` as asked."""
    if precision == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return torch.bfloat16 if precision == "bf16" else torch.float32


def looks_local(name: str) -> bool:
    """A path rather than a hub id: starts like a path, exists, or has more than one '/'."""
    return name.startswith((".", "/", "~")) or Path(name).exists() or name.count("/") > 1


def from_pretrained(auto_cls: Any, name: str, *, what: str = "teacher base_model", **kwargs: Any) -> Any:
    """`auto_cls.from_pretrained` with an error that says what was looked for and where."""
    if looks_local(name) and not Path(name).expanduser().is_dir():
        raise DataError(f"{what} {name!r}: no such folder")
    try:
        return auto_cls.from_pretrained(str(Path(name).expanduser()) if looks_local(name) else name, **kwargs)
    except (OSError, ValueError) as exc:
        raise DataError(f"{what} {name!r} could not be loaded with {auto_cls.__name__} "
                        f"(a Hugging Face id needs network access or the local cache; a folder needs "
                        f"config.json and weights): {exc}") from None
