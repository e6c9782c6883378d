"""The release's model files: `model.safetensors` + `config.json` (rebuild the module with no
pickle and no pipeline), and `model.onnx` (the same function for ONNX Runtime), checked for parity.

The exported function is `history [B, L] int64 (left-padded, L <= max_length) -> scores
[B, n_items + 1] float32`: the student's `score(user_states(history))`, with batch and history
length dynamic. Ranking, exclusion of seen items and ids stay in numpy (recommender.py), shared by
both backends.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from distillrec.errors import DataError
from distillrec.params import StudentParams
from distillrec.serving.files import CONFIG, ONNX, WEIGHTS
from distillrec.students import Student, build_student
from distillrec.students.base import ItemOffsets
from distillrec.students.saved import folded_state, refuse_non_finite

log = logging.getLogger(__name__)


def write_model(folder: Path, model: Student, architecture: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
    """model.safetensors and config.json into `folder`; returns the config written. `architecture`
    is the student's params (StudentParams fields); an input adapter is folded into fixed offsets."""
    state = folded_state(model)
    offsets = list(state["item_adapter.table"].shape) if "item_adapter.table" in state else None
    save_file({k: v.contiguous() for k, v in state.items()}, str(folder / WEIGHTS))
    (folder / WEIGHTS).chmod(0o644)   # safetensors writes 0600; the folder is meant to be copied and shared
    config = {"format": "distillrec-release/1", "n_items": model.n_items, "architecture": architecture,
              "item_offsets": offsets, **config}
    (folder / CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return config


def load_module(folder: Path, config: dict[str, Any]) -> Student:
    """The student of a release folder in eval mode; weights holding NaN or inf are refused."""
    path = folder / WEIGHTS
    try:
        model = build_student(StudentParams.model_validate(config["architecture"]), config["n_items"])
        if config.get("item_offsets"):
            model.item_adapter = ItemOffsets(torch.zeros(config["item_offsets"]))
    except (ValueError, TypeError, KeyError) as exc:
        raise DataError(f"{folder / CONFIG}: the architecture cannot be rebuilt ({str(exc)[:300]})") from None
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise DataError(f"{path}: cannot be read, the file is truncated or corrupt ({exc})") from None
    refuse_non_finite(state, path)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:  # missing keys, wrong shapes
        raise DataError(f"{path}: does not match {folder / CONFIG} ({str(exc)[:300]})") from None
    return model.eval()


class _Scores(torch.nn.Module):
    """history -> scores over the whole catalogue: what both backends compute."""

    def __init__(self, student: Student):
        super().__init__()
        self.student = student

    def forward(self, history: torch.Tensor) -> torch.Tensor:
        return self.student.score(self.student.user_states(history))


def export_onnx(model: Student, max_length: int, path: Path) -> None:
    """model.onnx with dynamic batch and history length (torch.export -> ONNX, opset 18)."""
    example = torch.ones(2, max_length, dtype=torch.long)
    batch, length = torch.export.Dim("batch"), torch.export.Dim("length", max=max_length)
    for name in ("onnx_ir", "onnxscript"):                       # one INFO line per rewritten constant
        logging.getLogger(name).setLevel(logging.WARNING)
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)     # "torchvision is not installed" x4
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")                          # torch.export's internal deprecations
        program = torch.onnx.export(_Scores(model.eval()), (example,), input_names=["history"],
                                    output_names=["scores"], dynamic_shapes=({0: batch, 1: length},),
                                    dynamo=True, opset_version=18, verbose=False)
    program.save(str(path))


def onnx_parity(model: Student, path: Path, histories: np.ndarray, tolerance: float) -> dict[str, Any]:
    """Torch vs ONNX Runtime on `histories` [N, max_length] (left-padded), and on the same histories
    cut to their last 5 columns (the dynamic length): the same top-10 everywhere and max |score
    difference| <= tolerance, or a DataError. Returns the measured figures for the model card."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    worst, same, total = 0.0, 0, 0
    for batch in (histories, histories[:, -5:]):
        for start in range(0, len(batch), 256):
            part = np.ascontiguousarray(batch[start:start + 256])
            with torch.inference_mode():
                expected = _Scores(model)(torch.from_numpy(part)).numpy()[:, 1:]
            got = session.run(None, {"history": part})[0][:, 1:]
            worst = max(worst, float(np.abs(expected - got).max()))
            top_t = np.argsort(-expected, axis=1, kind="stable")[:, :10]
            top_o = np.argsort(-got, axis=1, kind="stable")[:, :10]
            same += int((top_t == top_o).all(axis=1).sum())
            total += len(part)
    result = {"histories": total, "same_top10": same, "max_abs_diff": worst, "tolerance": tolerance}
    if worst > tolerance or same != total:
        raise DataError(f"{path}: ONNX Runtime disagrees with torch ({same} of {total} top-10 lists equal, "
                        f"max |score difference| {worst:.2e} > {tolerance:g}): the export is not faithful")
    return result
