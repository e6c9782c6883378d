"""Train one student end to end and save it as a self-contained, servable folder.

A saved student folder holds `model.pt` (weights), `student.json` (architecture params, catalogue
size, fit summary) and `item_map.parquet` (ids and titles), so serving needs nothing else.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

import torch

from distillrec.data.splitdata import SplitData
from distillrec.errors import DataError
from distillrec.io import atomic_dir, sha256_file
from distillrec.params import Params, StudentParams
from distillrec.students import Student, build_student
from distillrec.train.objectives import Objective, cross_entropy, sampled_bce
from distillrec.train.trainer import Trainer

log = logging.getLogger(__name__)


def base_objective(params: Params) -> Objective:
    return cross_entropy if params.train.objective == "ce" else sampled_bce(params.train.negatives)


def train_student(params: Params, processed: Path | str, out_dir: Path | str, checkpoint_dir: Path | str,
                  live_dir: Path | str, objective: Objective | None = None) -> dict[str, Any]:
    """Fit `params.student` on the split (validation selects the epoch) and save it."""
    processed = Path(processed)
    if params.train.threads:
        torch.set_num_threads(params.train.threads)
    torch.manual_seed(params.train.seed)
    data = SplitData.load(processed)
    model = build_student(params.student, data.n_items)
    trainer = Trainer(model, data, params.student, params.train, objective or base_objective(params),
                      Path(checkpoint_dir), Path(live_dir), sha256_file(processed / "sequences.parquet"))
    state = trainer.fit()
    summary = {"student": params.student.model_dump(mode="json"), "n_items": data.n_items,
               "parameters": sum(p.numel() for p in model.parameters()),
               "train": params.train.model_dump(mode="json"), "fit": state.summary(),
               "threads": torch.get_num_threads()}
    with atomic_dir(out_dir) as tmp:
        torch.save({k: v.cpu() for k, v in model.state_dict().items()}, tmp / "model.pt")
        (tmp / "student.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
        shutil.copy2(processed / "item_map.parquet", tmp / "item_map.parquet")
    log.info("saved %s: best epoch %d of %d, valid %s %.4f", out_dir, state.best_epoch, state.epoch,
             params.train.select_metric, state.best_metric)
    return summary


def load_student(model_dir: Path | str, device: torch.device | str = "cpu") -> tuple[Student, dict[str, Any]]:
    """Rebuild a saved student in eval mode."""
    model_dir = Path(model_dir)
    for name in ("model.pt", "student.json", "item_map.parquet"):
        if not (model_dir / name).is_file():
            raise DataError(f"{model_dir} is not a saved student: {name} is missing "
                            "(train one with `dvc repro` first)")
    meta = json.loads((model_dir / "student.json").read_text())
    model = build_student(StudentParams.model_validate(meta["student"]), meta["n_items"])
    model.load_state_dict(torch.load(model_dir / "model.pt", map_location=device, weights_only=True))
    return model.to(device).eval(), meta
