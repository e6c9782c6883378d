"""Train one student end to end and save it as a self-contained, servable folder."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from distillrec.data.splitdata import SplitData
from distillrec.io import sha256_file
from distillrec.params import Params
from distillrec.students import build_student
from distillrec.students.saved import save_student
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
    save_student(out_dir, model, summary, processed / "item_map.parquet")
    log.info("saved %s: best epoch %d of %d, valid %s %.4f", out_dir, state.best_epoch, state.epoch,
             params.train.select_metric, state.best_metric)
    return summary

