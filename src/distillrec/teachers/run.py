"""Train and export one named teacher (`params.teachers.<name>`): what the two stages call.

Imported teachers (`params.imports.<name>`) have their own stage: `teachers.imported.import_teacher`.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from distillrec.errors import DataError, ParamsError
from distillrec.io import atomic_dir, sha256_file, write_json
from distillrec.params import Params, TeacherParams, validate_teacher
from distillrec.teachers.base import read_summary
from distillrec.teachers.registry import teacher_class
from distillrec.teachers.data import TeacherData
from distillrec.teachers.export import select_examples, write_export
from distillrec.train.loop import fingerprint

log = logging.getLogger(__name__)


def teacher_params(params: Params, name: str) -> TeacherParams:
    if name not in params.teachers:
        imported = f" ({name!r} is an import: stage import_teacher@{name})" if name in params.imports else ""
        raise ParamsError(f"no teacher named {name!r} in params.yaml{imported}; configured teachers: "
                          f"{', '.join(params.teachers) or 'none'}")
    return params.teachers[name]


def _is_main_process() -> bool:
    """False in the non-zero ranks of a torchrun/accelerate run: they train but do not write."""
    from accelerate import PartialState

    return PartialState().is_main_process


def _folder_mb(folder: Path) -> float:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) / 2**20


def train_teacher(params: Params, name: str, processed: Path | str, out_dir: Path | str,
                  checkpoint_dir: Path | str, live_dir: Path | str,
                  item_text: Path | str = "data/item_text") -> dict[str, Any] | None:
    """Fit teacher `name` on the split (validation selects the epoch) and save it to `out_dir`;
    `item_text` holds the embed_items outputs (item vectors the fusion family reads)."""
    cfg, processed = teacher_params(params, name), Path(processed)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    torch.manual_seed(cfg.train.seed)
    data = TeacherData.load(processed, item_text)
    teacher = teacher_class(cfg.family).create(cfg, data)
    run_id = fingerprint(cfg, sha256_file(processed / "sequences.parquet"))
    state = teacher.fit(data, Path(checkpoint_dir), Path(live_dir), run_id)
    if not _is_main_process():
        return None
    module = teacher.module
    summary = {"name": name, "family": cfg.family, "params": cfg.model_dump(mode="json"),
               "parameters": sum(p.numel() for p in module.parameters()),
               "trainable_parameters": sum(p.numel() for p in module.parameters() if p.requires_grad),
               "device": str(teacher.device), "threads": torch.get_num_threads(), "fit": state.summary()}
    with atomic_dir(out_dir) as tmp:
        teacher.save(tmp)
        summary["size_mb"] = _folder_mb(tmp)
        write_json(tmp / "trained.json", summary)
    log.info("saved teacher %s to %s: best epoch %d of %d (validation %.4f)", name, out_dir, state.best_epoch,
             state.epoch, state.best_metric)
    return summary


def export_fingerprint(model_dir: Path, processed: Path, export: dict[str, Any]) -> str:
    """What a teacher's exported rows depend on: its trained files, the split, the export params
    (a checkpointed export resumes only with the same)."""
    files = sorted(p for p in model_dir.rglob("*") if p.is_file())
    return fingerprint(export, sha256_file(processed / "sequences.parquet"),
                       [[str(p.relative_to(model_dir)), sha256_file(p)] for p in files])


def export_teacher(params: Params, name: str, processed: Path | str, model_dir: Path | str,
                   out_dir: Path | str, checkpoint_dir: Path | str | None = None) -> dict[str, Any]:
    """Score the examples with the trained teacher and write `data/teacher/<name>/`; a streamed export
    checkpoints its parts in `checkpoint_dir` and resumes there after an interruption."""
    cfg, model_dir = teacher_params(params, name), Path(model_dir)
    summary = read_summary(model_dir)
    try:
        trained = validate_teacher(summary["params"], name)
    except ParamsError as exc:  # written before the params layout changed, or by hand
        raise DataError(f"{model_dir / 'trained.json'} holds params this version cannot read ({exc}); "
                        f"re-run train_teacher") from None
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    data = TeacherData.load(processed)
    teacher = teacher_class(trained.family).load(model_dir, trained)
    examples = select_examples(data.split.examples, cfg.export.train_positions)
    started = time.perf_counter()
    with torch.no_grad():
        tables = teacher.export(data, examples, cfg.export)

    def info() -> dict:
        """Called by the writer once every row is on disk: a streamed export computes as it writes."""
        seconds = time.perf_counter() - started
        return {"name": name, "family": trained.family, "base_model": getattr(trained.model, "base_model", None),
                "finetune": getattr(trained.model, "finetune", None), "parameters": summary["parameters"],
                "trainable_parameters": summary["trainable_parameters"], "size_mb": summary["size_mb"],
                "train_seconds": summary["fit"]["seconds"], "fit": summary["fit"],
                "export": {**cfg.export.model_dump(mode="json"), "examples": examples.height, "seconds": seconds,
                           "ms_per_example": 1000 * seconds / max(examples.height, 1),
                           "ms_per_user": 1000 * seconds / max(examples["user_idx"].n_unique(), 1),
                           "device": str(teacher.device), "threads": torch.get_num_threads()},
                "exported_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}

    resumable = checkpoint_dir is not None and tables.resume_from is not None
    return write_export(out_dir, tables, data.split.examples, data.n_items, info, checkpoint_dir,
                        export_fingerprint(model_dir, Path(processed), cfg.export.model_dump(mode="json"))
                        if resumable else None)
