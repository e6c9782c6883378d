"""The saved-student folder: the one format that training writes and serving/evaluation read.

`model.pt` (weights), `student.json` (architecture params, catalogue size, fit summary) and
`item_map.parquet` (ids and titles): a folder is self-contained, so serving needs nothing else.
Kept free of training imports so that `recommend` starts fast.

A student with an input `item_adapter` (embedding distillation) is saved with the adapter folded
into its fixed per-item offsets (`item_adapter.table`, sized in student.json), so the served
student computes exactly what the trained one did without the teacher's item table.
"""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path
from typing import Any

import torch

from distillrec.errors import DataError
from distillrec.io import atomic_dir
from distillrec.params import StudentParams
from distillrec.students import Student, build_student
from distillrec.students.base import ItemOffsets

FILES = ("model.pt", "student.json", "item_map.parquet")


def save_student(folder: Path | str, model: Student, meta: dict[str, Any], item_map: Path) -> None:
    """Write the folder atomically; `meta` must hold the `student` params and `n_items`."""
    state = folded_state(model)
    if "item_adapter.table" in state:
        meta = {**meta, "item_adapter": list(state["item_adapter.table"].shape)}
    with atomic_dir(folder) as tmp:
        torch.save(state, tmp / "model.pt")
        (tmp / "student.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        shutil.copy2(item_map, tmp / "item_map.parquet")


def folded_state(model: Student) -> dict[str, torch.Tensor]:
    """The weights to save (CPU): an input adapter becomes its fixed offsets `item_adapter.table`."""
    state = {k: v.cpu() for k, v in model.state_dict().items() if not k.startswith("item_adapter.")}
    if model.item_adapter is not None:
        with torch.no_grad():
            state["item_adapter.table"] = model.item_adapter.offsets().detach().cpu()
    return state


def refuse_non_finite(state: dict[str, Any], path: Path) -> None:
    """A DataError naming `path` and the tensors that hold NaN or inf (a diverged run is never served)."""
    broken = sorted(name for name, value in state.items() if isinstance(value, torch.Tensor)
                    and value.is_floating_point() and not torch.isfinite(value).all())
    if broken:
        raise DataError(f"{path}: refused: non-finite weights (NaN or inf) in {', '.join(broken[:5])}; "
                        "the run diverged: retrain it")


def load_student(folder: Path | str, device: torch.device | str = "cpu") -> tuple[Student, dict[str, Any]]:
    """Rebuild a saved student in eval mode; a missing, truncated or foreign file is a DataError naming it.

    `model.pt` is read with `weights_only=True`: a pickle that would run code is refused, never executed.
    """
    folder = Path(folder)
    for name in FILES:
        if not (folder / name).is_file():
            raise DataError(f"{folder} is not a saved student: {name} is missing (no file {folder / name}; "
                            "train one with `dvc repro` first)")
    meta_path, weights_path = folder / "student.json", folder / "model.pt"
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        if not isinstance(meta, dict):
            raise TypeError(f"expected a JSON object, found {type(meta).__name__}")
        n_items = meta["n_items"]
        if isinstance(n_items, bool) or not isinstance(n_items, int) or n_items < 1:
            raise ValueError(f"n_items must be a positive integer, found {n_items!r}")
        model = build_student(StudentParams.model_validate(meta["student"]), n_items)
        if meta.get("item_adapter"):
            model.item_adapter = ItemOffsets(torch.zeros(meta["item_adapter"]))
    except KeyError as exc:
        raise DataError(f"{meta_path}: not a saved student's metadata: the key {exc} is missing") from None
    except (ValueError, TypeError, RuntimeError, OSError) as exc:  # JSON, pydantic, bad sizes
        raise DataError(f"{meta_path}: not a saved student's metadata ({_brief(exc)})") from None
    try:
        state = torch.load(weights_path, map_location=device, weights_only=True)
    except pickle.UnpicklingError as exc:  # weights_only refuses any pickle that is not plain tensors
        raise DataError(f"{weights_path}: refused: not plain saved weights, and a pickle is never executed "
                        f"({_brief(exc)})") from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:  # torch's zip reader on a truncated file
        raise DataError(f"{weights_path}: cannot be read, the file is truncated or corrupt ({_brief(exc)})") from None
    if isinstance(state, dict):
        refuse_non_finite(state, weights_path)
    try:
        if not isinstance(state, dict):
            raise TypeError(f"expected a dict of tensors, found {type(state).__name__}")
        model.load_state_dict(state)
    except (RuntimeError, TypeError, ValueError, AttributeError) as exc:  # missing keys, wrong shapes
        raise DataError(f"{weights_path}: does not match {meta_path} ({_brief(exc)})") from None
    return model.to(device).eval(), meta


def _brief(exc: BaseException) -> str:
    """The exception's message on one line, cut to 300 characters."""
    text = " ".join(line.strip() for line in str(exc).splitlines() if line.strip()) or type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."
