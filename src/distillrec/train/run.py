"""Train one student end to end and save it as a servable folder (DVC stage `train_student`: the
baseline; `distill/run.py` supplies the objective of a distilled one)."""

from __future__ import annotations

import logging
from pathlib import Path
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from distillrec.data.splitdata import SplitData
from distillrec.io import sha256_file
from distillrec.params import Params
from distillrec.students import Student, build_student
from distillrec.students.saved import save_student
from distillrec.train.loop import fingerprint
from distillrec.train.objectives import Objective, build_objective
from distillrec.train.trainer import Trainer

log = logging.getLogger(__name__)

@dataclass
class Plan:
    """What a run trains with: its objective, what identifies it (checkpoint fingerprints,
    student.json) and what runs after each validation (a distillation gate)."""

    objective: Objective
    identity: dict[str, Any] = field(default_factory=dict)
    after_validation: Callable[[dict[str, float]], None] | None = None


PlanFactory = Callable[[Student, SplitData], Plan]  # builds a run's Plan for its model and split


def served_parameters(model: Student) -> int:
    """Parameters of the saved student: an embedding-distillation adapter is served as [N+1, d] offsets."""
    own = sum(p.numel() for name, p in model.named_parameters() if not name.startswith("item_adapter."))
    return own + ((model.n_items + 1) * model.hidden if model.item_adapter is not None else 0)


def train_student(params: Params, processed: Path | str, out_dir: Path | str, checkpoint_dir: Path | str,
                  live_dir: Path | str, seed: int | None = None, plan: PlanFactory | None = None
                  ) -> dict[str, Any]:
    """Fit `params.student` with `seed` (default: the first of train.seeds) and what `plan` builds
    (default: `train.objective`, no teacher) and save it; validation selects the epoch."""
    seed = params.train.seeds[0] if seed is None else seed
    processed = Path(processed)
    if params.train.threads:
        torch.set_num_threads(params.train.threads)
    torch.manual_seed(seed)
    data = SplitData.load(processed)
    model = build_student(params.student, data.n_items)
    run = (plan or (lambda _, split: Plan(build_objective(params.train, split))))(model, data)
    run_id = fingerprint(params.student, params.train, seed, sha256_file(processed / "sequences.parquet"),
                         run.identity)
    trainer = Trainer(model, data, params.student, params.train, run.objective, Path(checkpoint_dir), Path(live_dir),
                      run_id, seed, after_validation=run.after_validation)
    state = trainer.fit()
    summary = {"student": params.student.model_dump(mode="json"), "n_items": data.n_items,
               "parameters": served_parameters(model),
               "train": params.train.model_dump(mode="json"), "fit": state.summary(),
               "seed": seed, "threads": torch.get_num_threads(), "distill": run.identity,
               "processes": trainer.parallel.world}
    if not trainer.parallel.is_main:  # data-parallel workers hold the main process's weights
        return summary
    save_student(out_dir, model, summary, processed / "item_map.parquet")
    log.info("saved %s: best epoch %d of %d, valid %s %.4f", out_dir, state.best_epoch, state.epoch,
             params.train.select_metric, state.best_metric)
    return summary
