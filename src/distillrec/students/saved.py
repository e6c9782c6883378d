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
    state = {k: v.cpu() for k, v in model.state_dict().items() if not k.startswith("item_adapter.")}
    if model.item_adapter is not None:
        with torch.no_grad():
            state["item_adapter.table"] = model.item_adapter.offsets().detach().cpu()
        meta = {**meta, "item_adapter": list(state["item_adapter.table"].shape)}
    with atomic_dir(folder) as tmp:
        torch.save(state, tmp / "model.pt")
        (tmp / "student.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        shutil.copy2(item_map, tmp / "item_map.parquet")


def load_student(folder: Path | str, device: torch.device | str = "cpu") -> tuple[Student, dict[str, Any]]:
    """Rebuild a saved student in eval mode."""
    folder = Path(folder)
    for name in FILES:
        if not (folder / name).is_file():
            raise DataError(f"{folder} is not a saved student: {name} is missing "
                            "(train one with `dvc repro` first)")
    meta = json.loads((folder / "student.json").read_text())
    model = build_student(StudentParams.model_validate(meta["student"]), meta["n_items"])
    if meta.get("item_adapter"):
        model.item_adapter = ItemOffsets(torch.zeros(meta["item_adapter"]))
    model.load_state_dict(torch.load(folder / "model.pt", map_location=device, weights_only=True))
    return model.to(device).eval(), meta
