"""Hugging Face plumbing shared by the teachers and `embed`: loading with clear errors, precision."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from distillrec.errors import DataError


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
