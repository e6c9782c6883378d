"""GPU check: one command that tells whether the CUDA paths are right and what they cost.

    python benchmarks/gpu_check.py                 # one H100/H200, budgeted at ~8 minutes, no network
    python benchmarks/gpu_check.py --tiny          # the same parts on CPU with tiny shapes (seconds)
    python benchmarks/gpu_check.py --parts causal_7b,embed_7b   # a subset, e.g. to re-run one part

Every model is built from a config with random weights (no download). Parts, each guarded (a
failure is recorded and the next part runs) and bounded by fixed step counts:

1. `cuda_vs_cpu`: tiny models of the project's own classes run on CPU and on CUDA in fp32 (TF32
   off) and compared within rtol 1e-4 / atol 1e-5 (max abs diff reported): the causal teacher
   (scoring export, validation loss, one LoRA training step's loss and gradients), the POD teacher
   (validation loss, constrained beam export), the four students (ranking states and scores, one
   training step's CE loss and gradients), the objectives ce / sampled_softmax / gbce, and the
   fusion teacher (export, one training step). With --tiny, CPU is compared with CPU (a rehearsal).
2. `causal_7b`: a LLaMA-2-7B-shaped causal teacher (bf16, built on the device, LoRA r=8 on
   q/k/v/o, gradient checkpointing): training step time on BIGRec prompts and its `scoring` export
   throughput, projected to 120,000 prefixes.
3. `pod_t5_small`: a T5-small-shaped POD teacher: training examples/s, constrained beam export/s.
4. `embed_7b`: `embed_items`' encoding code with a 7B-shaped decoder body, last-token pooling: items/s.
5. `sasrec_180k`: a d=64 SASRec over 180,000 items: training windows/s, full CE and sampled softmax.

Each part records `torch.cuda.max_memory_allocated` (reset per part). Output: `gpu_check.json` and
`gpu_check.md` in --out (default benchmarks/out/gpu_check/); the summary is also logged.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import logging
import platform
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch

from distillrec.data.ingest import run_ingest
from distillrec.data.split import run_split
from distillrec.data.splitdata import SplitData
from distillrec.embed.run import catalogue_texts, encode_rows
from distillrec.embed.store import write_item_embeddings
from distillrec.embed.text import ItemInputs
from distillrec.hf import resolve_precision
from distillrec.params import (CausalTeacherParams, DatasetParams, Params, SplitParams, StudentParams,
                              SyntheticParams, TrainParams, validate_teacher)
from distillrec.students import build_student
from distillrec.teachers.registry import teacher_class
from distillrec.teachers.data import TeacherData
from distillrec.teachers.export import select_examples
from distillrec.teachers.scoring import WindowPlan
from distillrec.train.objectives import build_objective
from distillrec.train.trainer import Trainer

log = logging.getLogger("gpu_check")

OUT = Path("benchmarks/out/gpu_check")
TOLERANCE = {"rtol": 1e-4, "atol": 1e-5}
EXPORT_PREFIXES = 120_000          # training prefixes a BIGRec-size export scores
EXPORT_TARGET_SECONDS = 600        # ... in at most 10 minutes
BIGREC_INFERENCE_SECONDS = 23_000  # the time quoted for BIGRec's inference, for comparison
EMBED_PROMPT = "Item: {text}. In one word:"
LORA = {"r": 8, "alpha": 16, "dropout": 0.05, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]}


@dataclass(frozen=True)
class Shapes:
    """Sizes of every part: the GPU shapes, or tiny ones for a CPU rehearsal."""

    synthetic: dict[str, Any]   # SyntheticParams of the dataset parts 2-4 read
    llama: dict[str, int]       # ModelConfigParams of the causal LM (parts 2 and 4)
    causal_batch: int
    causal_steps: int           # timed steps (as many again warm up)
    max_history: int            # items in a BIGRec prompt (20 short synthetic titles: up to ~290 tokens)
    scoring_users: int          # users whose every prefix the scoring export scores
    scoring_batch: int
    t5: dict[str, int]
    pod_batch: int
    pod_steps: int              # timed batches per task (as many again warm up)
    pod_export: int             # examples of the constrained beam export
    embed_batch: int
    sasrec_items: int
    sasrec_users: int           # one training window each
    sasrec_batch: int
    negatives: int


TINY_SYNTHETIC = {"n_users": 120, "n_items": 60, "n_clusters": 4, "min_length": 6, "max_length": 20, "successors": 1}
TINY_LLAMA = {"d_model": 32, "layers": 1, "heads": 2, "d_ff": 64, "vocab_size": 300}

GPU = Shapes(
    synthetic={"n_users": 1000, "n_items": 1400, "n_clusters": 16, "min_length": 10, "max_length": 30},
    llama={"d_model": 4096, "layers": 32, "heads": 32, "d_ff": 11008, "vocab_size": 32000},
    causal_batch=8, causal_steps=4, max_history=20, scoring_users=200, scoring_batch=32,
    t5={"d_model": 512, "layers": 6, "heads": 8, "d_ff": 2048, "vocab_size": 32128},
    pod_batch=64, pod_steps=4, pod_export=512,
    embed_batch=64,
    sasrec_items=180_000, sasrec_users=8192, sasrec_batch=256, negatives=256)
TINY = Shapes(
    synthetic=TINY_SYNTHETIC, llama=TINY_LLAMA,
    causal_batch=4, causal_steps=2, max_history=4, scoring_users=10, scoring_batch=16,
    t5=TINY_LLAMA, pod_batch=8, pod_steps=2, pod_export=32,
    embed_batch=16,
    sasrec_items=2000, sasrec_users=256, sasrec_batch=64, negatives=32)


@dataclass
class Context:
    device: torch.device
    shapes: Shapes
    data: TeacherData           # parts 2-4
    check_data: TeacherData     # part 1 (tiny models)
    root: Path                  # scratch folder (checkpoints, curves)


# ---- plumbing ---------------------------------------------------------------------------------------

def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device) -> tuple[Any, float]:
    """fn()'s result and its wall seconds, the device's queue drained at both ends."""
    synchronize(device)
    started = time.perf_counter()
    out = fn()
    synchronize(device)
    return out, time.perf_counter() - started


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def peak_gib(device: torch.device) -> float | None:
    """torch.cuda.max_memory_allocated since the last reset, GiB (None on CPU)."""
    return round(torch.cuda.max_memory_allocated(device) / 2**30, 3) if device.type == "cuda" else None


def free(device: torch.device) -> None:
    """Return the finished part's GPU memory (a CPU rehearsal has nothing worth a collection)."""
    if device.type == "cuda":
        gc.collect()
        torch.cuda.empty_cache()


def accelerator_on(device: torch.device) -> Any:
    """A fresh `Accelerator` on `device`. accelerate keeps one state per process: without a reset, a
    CUDA run after a CPU one would silently stay on the CPU (and the reverse raises)."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    accelerator = Accelerator(cpu=device.type == "cpu")
    if accelerator.device.type != device.type:
        raise RuntimeError(f"accelerate chose {accelerator.device}, not {device}")
    return accelerator


@contextlib.contextmanager
def fp32_matmuls() -> Iterator[None]:
    """Full fp32 matmuls and cuDNN kernels (no TF32), so CUDA and CPU compute the same function."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def synthetic_data(synthetic: dict[str, Any], root: Path) -> TeacherData:
    """The project's synthetic catalogue (titles, reviews), ingested and split as the pipeline does."""
    params = Params(dataset=DatasetParams(synthetic=SyntheticParams(**synthetic)), split=SplitParams(item_core=0))
    run_ingest(params, root / "interim")
    run_split(params, root / "interim", root / "processed", root / "data.json")
    return TeacherData.load(root / "processed", root / "item_text")


def random_split(n_users: int, n_items: int, max_length: int, seed: int = 0) -> SplitData:
    """Sequences of Zipf-popular items, 5..max_length + 2 long, in memory (the synthetic source is too
    slow at 10^5 items; the students' trainer reads only the sequences)."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(5, max_length + 3, n_users)
    popularity = 1.0 / np.arange(1, n_items + 1)
    items = rng.choice(n_items, int(lengths.sum()), p=popularity / popularity.sum()) + 1
    examples = pl.DataFrame(schema={"user_idx": pl.Int32, "position": pl.Int32, "item_idx": pl.Int32,
                                    "split": pl.String})
    return SplitData(items.astype(np.int64), np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
                     pl.DataFrame({"item_idx": np.arange(1, n_items + 1)}),
                     pl.DataFrame({"user_idx": np.arange(1, n_users + 1)}), examples)


def numpy(value: Any) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        value = value.detach().double().cpu().numpy()
    return np.asarray(value, np.float64)


def gradients(module: torch.nn.Module) -> np.ndarray:
    """Every parameter gradient, flattened, in parameter order."""
    return np.concatenate([numpy(p.grad).ravel() for p in module.parameters() if p.grad is not None])


def build_llama(cfg: CausalTeacherParams, data: TeacherData, device: torch.device, lm: bool = True
                ) -> tuple[Any, torch.nn.Module]:
    """The tokenizer and a LLaMA of `cfg.model.config` built on `device` in the teacher's precision, random
    weights: the causal LM (`lm`) or its decoder body (what `embed_items` reads). The model gets the
    whole `config.vocab_size` (LLaMA-2: 32,000) although the dataset's tokenizer uses fewer ids."""
    from transformers import AutoModel, AutoModelForCausalLM

    from distillrec.teachers.causal import config_llama

    tokenizer, config = config_llama(cfg, data.require_titles("causal"))
    config.vocab_size = max(config.vocab_size, cfg.model.config.vocab_size)
    torch.manual_seed(cfg.train.seed)
    with torch.device(device):
        model = (AutoModelForCausalLM if lm else AutoModel).from_config(
            config, dtype=resolve_precision(cfg.train.precision, device))
    return tokenizer, model


# ---- part 1: the CUDA paths compute what the CPU paths compute ---------------------------------------

def causal_outputs(data: TeacherData, device: torch.device, root: Path) -> dict[str, Any]:
    """Tiny LLaMA teacher: scoring export, validation loss, one LoRA training step (its loss; the gradients
    of the adapters, the item table and the scoring head)."""
    from distillrec.teachers.causal import CausalTeacher, _Task

    cfg = validate_teacher({
        "family": "causal",
        "model": {"finetune": "lora", "config": TINY_LLAMA, "lora": {"dropout": 0.0}, "max_history": 4,
                  "max_title_tokens": 8},
        "train": {"lr": 0.001, "batch_size": 16, "sample": 16, "valid_examples": 16, "device": device.type,
                  "precision": "fp32"},
        "export": {"top_k": 5, "batch_size": 16}})
    teacher = CausalTeacher.create(cfg, data)
    tables = teacher.export(data, select_examples(data.split.examples, 2).head(48), cfg.export)
    task = _Task(teacher, data, accelerator_on(device))
    teacher.module.eval()
    with torch.no_grad():
        valid = task.validate()
    teacher.module.train()
    loss = task.train_epoch(1)   # one batch: the loss before the update
    return {"scoring_top_scores": tables.topk.scores, "scoring_states": tables.states.states,
            "top_items": tables.topk.items, "valid_loss": valid["valid_loss"], "train_step_loss": loss,
            "gradients": gradients(teacher.module),
            "ran_on": next(teacher.module.parameters()).device.type}


def pod_outputs(data: TeacherData, device: torch.device, root: Path) -> dict[str, Any]:
    """Tiny POD T5: validation loss per task (teacher forcing) and the constrained beam export. No training
    step: T5's dropout (0.1, config-built) draws different masks on each device."""
    from distillrec.teachers.seq2seq import Seq2SeqTeacher, _Training

    cfg = validate_teacher({
        "family": "seq2seq",
        "model": {"finetune": "full", "config": TINY_LLAMA, "max_history": 6, "explanation_tokens": 8},
        "train": {"batch_size": 16, "sample": None, "valid_examples": 32, "device": device.type, "precision": "fp32",
                  "seed": 1},
        "export": {"top_k": 5, "batch_size": 16}})
    teacher = Seq2SeqTeacher.create(cfg, data)
    training = _Training(teacher, data, accelerator_on(device))
    teacher.module.eval()
    with torch.no_grad():
        valid = training.validate()
        topk, states = teacher.top_k(data, select_examples(data.split.examples, 1).head(32), cfg.export)
    return {**valid, "beam_top_scores": topk.scores,
            "encoder_states": states.states, "top_items": topk.items,
            "ran_on": next(teacher.module.parameters()).device.type}


def student_outputs(data: TeacherData, model: str, objective: str, device: torch.device, root: Path
                    ) -> dict[str, Any]:
    """A student: ranking states and scores of validation histories, then one training step of
    `objective` through the students' trainer (the loss before the update, the gradients)."""
    split = data.split
    student = StudentParams(model=model, hidden=32, layers=2, heads=2, dropout=0.0, max_length=20)
    windows = len(split.training_windows(student.max_length)[0])
    train = TrainParams(objective=objective, negatives=1 if objective in ("ce", "bce") else 16,
                        batch_size=windows, device=device.type)   # one step per epoch
    torch.manual_seed(0)
    net = build_student(student, split.n_items)
    trainer = Trainer(net, split, student, train, build_objective(train, split), root / "ckpt", root / "live",
                      "check", seed=0)
    users, positions, _ = split.targets("valid")
    histories = torch.as_tensor(split.histories(users, positions, student.max_length), device=device)
    net.eval()
    with torch.no_grad():
        states = net.user_states(histories)
        scores = net.score(states)[:, 1:]
    net.train()
    logs = trainer.train_epoch(1)
    return {"states": states, "scores": scores, "train_step_loss": logs["loss"], "gradients": gradients(net),
            "ran_on": next(net.parameters()).device.type}


def fusion_outputs(data: TeacherData, device: torch.device, root: Path) -> dict[str, Any]:
    """Fusion teacher (ID + MoE-adapted LM vectors, SASRec): export, and one epoch of one step."""
    vectors = np.random.default_rng(0).normal(size=(data.n_items, 24)).astype(np.float32)
    write_item_embeddings(root / "item_text" / "lm", vectors, {"name": "lm"})
    data = replace(data, item_text=root / "item_text")
    windows = len(data.split.training_windows(20)[0])
    cfg = validate_teacher({
        "family": "fusion", "train": {"lr": 0.001, "epochs": 1, "batch_size": windows, "device": device.type},
        "export": {"top_k": 10, "batch_size": 64},
        "model": {"embedding": "lm", "hidden": 32, "layers": 1, "heads": 2, "max_length": 20, "dropout": 0.0,
                  "adaptor_experts": 2, "adaptor_dropout": 0.0}})
    teacher = teacher_class("fusion").create(cfg, data)
    tables = teacher.export(data, select_examples(data.split.examples, 2), cfg.export).gathered()
    state = teacher.fit(data, root / "ckpt", root / "live", "check")
    return {"export_top_scores": tables.topk.scores, "export_states": tables.states.states,
            "item_table": tables.item_embeddings, "top_items": tables.topk.items,
            "train_step_loss": state.history[0]["loss"], "ran_on": next(teacher.module.parameters()).device.type}


def compare(reference: dict[str, Any], other: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """Max abs diff per output and whether |other - reference| <= atol + rtol |reference| everywhere;
    `top_items` (ids) as the share of equal entries (near-ties may swap, their scores are compared).
    Where the models ran is checked too: a run that fell back to the CPU compares nothing."""
    out: dict[str, Any] = {"ran_on": [reference["ran_on"], other["ran_on"]]}
    within = reference["ran_on"] == "cpu" and other["ran_on"] == device.type
    for name, value in reference.items():
        if name == "ran_on":
            continue
        a, b = numpy(value), numpy(other[name])
        if name == "top_items":
            out["top_items_equal"] = round(float((a == b).mean()), 4) if a.shape == b.shape else 0.0
            continue
        if a.shape != b.shape:
            out[name] = {"shape": [list(a.shape), list(b.shape)], "within": False}
            within = False
            continue
        diff = np.abs(a - b)
        ok = bool((diff <= TOLERANCE["atol"] + TOLERANCE["rtol"] * np.abs(a)).all() and np.isfinite(b).all())
        out[name] = {"max_abs_diff": float(diff.max(initial=0.0)), "size": int(a.size), "within": ok}
        within = within and ok
    out["within"] = within
    out["max_abs_diff"] = max((v["max_abs_diff"] for v in out.values() if isinstance(v, dict)
                               and "max_abs_diff" in v), default=None)
    return out


def part_cuda_vs_cpu(ctx: Context) -> dict[str, Any]:
    target = ctx.device
    data = ctx.check_data
    checks: dict[str, Callable[[torch.device, Path], dict[str, Any]]] = {
        "teacher causal (LLaMA + LoRA)": partial(causal_outputs, data),
        "teacher seq2seq (POD T5)": partial(pod_outputs, data),
        **{f"student {name} (ce)": partial(student_outputs, data, name, "ce")
           for name in ("sasrec", "gru4rec", "caser", "bert4rec")},
        **{f"objective {name} (sasrec)": partial(student_outputs, data, "sasrec", name)
           for name in ("sampled_softmax", "gbce")},
        "teacher fusion (ID + LM vectors)": partial(fusion_outputs, data),
    }
    results: dict[str, Any] = {}
    with fp32_matmuls():
        for name, run in checks.items():
            log.info("cuda_vs_cpu: %s", name)
            folder = ctx.root / "checks" / name.split(" (")[0].replace(" ", "_")
            try:
                reference = run(torch.device("cpu"), folder / "reference")
                results[name] = compare(reference, run(target, folder / "compared"), target)
            except Exception as exc:  # one broken model must not hide the others
                log.exception("cuda_vs_cpu: %s failed", name)
                results[name] = {"error": f"{type(exc).__name__}: {exc}", "within": False}
            free(target)
    failed = [name for name, r in results.items() if not r["within"]]
    return {"reference": "cpu", "compared": str(target), "precision": "fp32, TF32 off", "tolerance": TOLERANCE,
            "checks": results, "passed": not failed, "failed": failed,
            "headline": {"checks within tolerance": f"{len(results) - len(failed)}/{len(results)}",
                         "max abs diff": max((r.get("max_abs_diff") or 0.0 for r in results.values()),
                                             default=0.0)}}


# ---- part 2: a LLaMA-2-7B-shaped causal teacher ------------------------------------------------------

def part_causal_7b(ctx: Context) -> dict[str, Any]:
    from distillrec.teachers.causal import CausalTeacher, _Task

    s, device, data = ctx.shapes, ctx.device, ctx.data
    cfg = validate_teacher({
        "family": "causal", "model": {"finetune": "lora", "config": s.llama, "lora": LORA, "max_history": s.max_history},
        "train": {"batch_size": s.causal_batch, "sample": s.causal_batch * s.causal_steps, "valid_examples": 8,
                  "lr": 1e-4, "device": device.type, "gradient_checkpointing": True},
        "export": {"top_k": 20, "batch_size": s.scoring_batch}})
    (tokenizer, base), built = timed(lambda: build_llama(cfg, data, device), device)
    parameters = sum(p.numel() for p in base.parameters())
    log.info("causal_7b: %s parameters built in %.1f s (%s)", f"{parameters:,}", built, base.dtype)
    teacher = CausalTeacher.around(cfg, data, tokenizer, base)
    task = _Task(teacher, data, accelerator_on(device))
    inputs, _, _ = task._batch(task.train[0], task.train[1], every_item=True)
    tokens = inputs["mask"].sum(1).float()

    teacher.module.train()
    task.train_epoch(1)   # warm-up
    reset_peak(device)
    loss, seconds = timed(lambda: task.train_epoch(2), device)
    step = seconds / s.causal_steps
    train_peak = peak_gib(device)
    log.info("causal_7b: %.3f s per step of %d prompts (%.0f tokens on average), loss %.3f",
             step, s.causal_batch, tokens.mean(), loss)

    teacher.module.eval()
    examples = select_examples(data.split.examples, "all").filter(pl.col("user_idx") <= s.scoring_users)
    teacher.export(data, examples.head(s.scoring_batch), cfg.export)   # warm-up
    reset_peak(device)
    tables, export_seconds = timed(lambda: teacher.export(data, examples, cfg.export), device)
    rate = examples.height / export_seconds
    window_tokens = scoring_tokens(teacher, data, examples)
    projected = EXPORT_PREFIXES / rate
    log.info("causal_7b: scoring %d prefixes in %.1f s (%.0f/s, %d passes): %d prefixes in %.0f s",
             examples.height, export_seconds, rate, tables.info["forward_passes"], EXPORT_PREFIXES, projected)
    return {
        "model": {"parameters": parameters, "dtype": str(base.dtype).removeprefix("torch."),
                  "trainable_parameters": sum(p.numel() for p in teacher.module.parameters() if p.requires_grad),
                  "config": s.llama | {"vocab_size": base.config.vocab_size}, "lora": LORA,
                  "gradient_checkpointing": True, "build_seconds": round(built, 2)},
        "training": {"batch": s.causal_batch, "steps_timed": s.causal_steps, "step_seconds": round(step, 4),
                     "examples_per_second": round(s.causal_batch / step, 2),
                     "tokens_per_example_mean": round(float(tokens.mean()), 1),
                     "tokens_per_example_max": int(tokens.max()), "max_history": s.max_history,
                     "peak_memory_gib": train_peak, "loss": round(loss, 4)},
        "scoring_export": {"prefixes": examples.height, "seconds": round(export_seconds, 3),
                           "prefixes_per_second": round(rate, 2), "forward_passes": tables.info["forward_passes"],
                           "tokens_per_pass_mean": round(window_tokens / tables.info["forward_passes"], 1),
                           "tokens_per_prefix": round(window_tokens / examples.height, 1),
                           "tokens_per_second": round(window_tokens / export_seconds, 1),
                           "peak_memory_gib": peak_gib(device),
                           "code_path": "CausalTeacher.export, ranking scoring (scoring.window_states + rank_states)"},
        "projection": {"prefixes": EXPORT_PREFIXES, "seconds": round(projected, 1),
                       "target_seconds": EXPORT_TARGET_SECONDS, "meets_target": projected <= EXPORT_TARGET_SECONDS,
                       "bigrec_inference_seconds": BIGREC_INFERENCE_SECONDS,
                       "note": "at this run's tokens per prefix; the time scales with it (seconds = prefixes x "
                               "tokens_per_prefix / tokens_per_second): real titles are longer than the synthetic "
                               "ones, and BIGRec's 10-item prompts give 5 new prefixes per pass, not 10"},
        "headline": {"train step (s)": round(step, 3), "train peak GiB": train_peak,
                     "scoring prefixes/s": round(rate, 1), "120k prefixes (s)": round(projected, 1)},
    }


def scoring_tokens(teacher: Any, data: TeacherData, examples: pl.DataFrame) -> int:
    """Tokens the scoring export forwarded: one window per plan entry (`scoring.window_states`)."""
    split, pieces = data.split, teacher.prompt_pieces(data)
    plan = WindowPlan.of(examples["user_idx"].to_numpy(), examples["position"].to_numpy(),
                         teacher.cfg.model.max_history)
    return sum(len(pieces.history(split.items[split.offsets[u - 1] + a:split.offsets[u - 1] + b].tolist())[0])
               for u, a, b in zip(plan.users, plan.starts, plan.ends))


# ---- part 3: a T5-small-shaped POD teacher -----------------------------------------------------------

def part_pod_t5_small(ctx: Context) -> dict[str, Any]:
    from distillrec.teachers.seq2seq import Seq2SeqTeacher, _Training

    s, device, data = ctx.shapes, ctx.device, ctx.data
    cfg = validate_teacher({
        "family": "seq2seq", "model": {"finetune": "full", "config": s.t5},
        "train": {"lr": 0.001, "batch_size": s.pod_batch, "sample": s.pod_batch * s.pod_steps,
                  "valid_examples": s.pod_batch, "device": device.type},
        "export": {"top_k": 20, "batch_size": s.pod_batch}})
    teacher = Seq2SeqTeacher.create(cfg, data)
    backbone = teacher.module.backbone
    # T5-small's 32,128-token vocabulary (the dataset's tokenizer uses fewer ids)
    backbone.resize_token_embeddings(max(len(teacher.tokenizer), cfg.model.config.vocab_size), mean_resizing=False)
    parameters = sum(p.numel() for p in teacher.module.parameters())
    training = _Training(teacher, data, accelerator_on(device))
    seen = sum(len(examples) for examples in training.train.values())
    teacher.module.train()
    training.train_epoch(1)   # warm-up
    reset_peak(device)
    loss, seconds = timed(lambda: training.train_epoch(2), device)
    train_peak = peak_gib(device)
    log.info("pod_t5_small: %d examples in %.2f s (%.0f/s), loss %.3f", seen, seconds, seen / seconds, loss)

    teacher.module.eval()
    examples = select_examples(data.split.examples, "all").head(s.pod_export)
    with torch.no_grad():
        teacher.top_k(data, examples.head(s.pod_batch), cfg.export)   # warm-up
        reset_peak(device)
        _, export_seconds = timed(lambda: teacher.top_k(data, examples, cfg.export), device)
    log.info("pod_t5_small: constrained beam export of %d examples in %.2f s", examples.height, export_seconds)
    return {
        "model": {"parameters": parameters, "config": s.t5 | {"vocab_size": backbone.config.vocab_size},
                  "finetune": "full", "precision": "bf16 autocast" if device.type == "cuda" else "fp32"},
        "training": {"examples": seen, "batch": s.pod_batch, "tasks": list(training.train),
                     "seconds": round(seconds, 3), "examples_per_second": round(seen / seconds, 1),
                     "peak_memory_gib": train_peak, "loss": round(loss, 4)},
        "export": {"examples": examples.height, "beams": teacher.beams(cfg.export), "top_k": cfg.export.top_k,
                   "seconds": round(export_seconds, 3),
                   "examples_per_second": round(examples.height / export_seconds, 1),
                   "peak_memory_gib": peak_gib(device),
                   "code_path": "Seq2SeqTeacher.top_k (trie-constrained beam search)"},
        "headline": {"train examples/s": round(seen / seconds, 1),
                     "beam export examples/s": round(examples.height / export_seconds, 1)},
    }


# ---- part 4: embed_items with a 7B-shaped decoder ----------------------------------------------------

def part_embed_7b(ctx: Context) -> dict[str, Any]:
    s, device, data = ctx.shapes, ctx.device, ctx.data
    cfg = validate_teacher({"family": "causal", "model": {"config": s.llama}, "train": {"device": device.type}})
    tokenizer, body = build_llama(cfg, data, device, lm=False)
    body.eval().requires_grad_(False)
    texts = catalogue_texts(data.split.item_map, ["title"])
    inputs = ItemInputs.build(tokenizer, texts, 64, EMBED_PROMPT)
    order = inputs.order()
    encode = partial(encode_rows, body, inputs, batch_size=s.embed_batch, pooling="last", device=device)
    encode(order[:s.embed_batch])   # warm-up
    reset_peak(device)
    vectors, seconds = timed(lambda: encode(order), device)
    rate = len(order) / seconds
    log.info("embed_7b: %d items in %.2f s (%.1f items/s)", len(order), seconds, rate)
    return {"model": {"parameters": sum(p.numel() for p in body.parameters()),
                      "dtype": str(body.dtype).removeprefix("torch."), "kind": "decoder body (LlamaModel)",
                      "pooling": "last"},
            "items": len(order), "prompt": EMBED_PROMPT, "fields": ["title"], "batch_size": s.embed_batch,
            "tokens_per_item_mean": round(float(inputs.lengths.mean()), 1), "seconds": round(seconds, 3),
            "items_per_second": round(rate, 2), "vectors_finite": bool(np.isfinite(vectors).all()),
            "dim": int(vectors.shape[1]), "code_path": "embed.text.ItemInputs + embed.run.encode_rows",
            "headline": {"items/s": round(rate, 1)}}


# ---- part 5: SASRec over 180,000 items ---------------------------------------------------------------

def part_sasrec_180k(ctx: Context) -> dict[str, Any]:
    s, device = ctx.shapes, ctx.device
    student = StudentParams(model="sasrec", hidden=64, layers=2, heads=2, max_length=50)
    split = random_split(s.sasrec_users, s.sasrec_items, student.max_length)
    out: dict[str, Any] = {"items": s.sasrec_items, "windows": s.sasrec_users, "batch": s.sasrec_batch,
                           "hidden": student.hidden, "max_length": student.max_length, "objectives": {}}
    for objective, negatives in (("ce", 1), ("sampled_softmax", s.negatives)):
        train = TrainParams(objective=objective, negatives=negatives, batch_size=s.sasrec_batch, device=device.type)
        torch.manual_seed(0)
        model = build_student(student, split.n_items)
        trainer = Trainer(model, split, student, train, build_objective(train, split), ctx.root / objective / "ckpt",
                          ctx.root / objective / "live", objective, seed=0)
        model.train()
        trainer.train_epoch(1)   # warm-up
        reset_peak(device)
        logs, seconds = timed(lambda: trainer.train_epoch(2), device)
        windows = len(trainer.windows)
        out["objectives"][objective] = {
            "negatives": negatives if objective != "ce" else None, "seconds": round(seconds, 3),
            "steps": -(-windows // s.sasrec_batch), "windows_per_second": round(windows / seconds, 1),
            "peak_memory_gib": peak_gib(device), "loss": round(logs["loss"], 4)}
        log.info("sasrec_180k: %s %.0f windows/s", objective, windows / seconds)
        del model, trainer
        free(device)
    out["headline"] = {f"{name} windows/s": r["windows_per_second"] for name, r in out["objectives"].items()}
    return out


PARTS: dict[str, Callable[[Context], dict[str, Any]]] = {
    "cuda_vs_cpu": part_cuda_vs_cpu,
    "causal_7b": part_causal_7b,
    "pod_t5_small": part_pod_t5_small,
    "embed_7b": part_embed_7b,
    "sasrec_180k": part_sasrec_180k,
}


def run_part(name: str, part: Callable[[Context], dict[str, Any]], ctx: Context) -> dict[str, Any]:
    """The part's result with status (ok | failed: a check out of tolerance | error), seconds and peak
    memory; an exception is recorded, never raised."""
    log.info("part %s: start", name)
    free(ctx.device)
    reset_peak(ctx.device)
    started = time.perf_counter()
    try:
        result = part(ctx)
        result = {"status": "ok" if result.get("passed", True) else "failed", **result}
    except Exception as exc:
        log.exception("part %s failed", name)
        result = {"status": "error", "error": f"{type(exc).__name__}: {exc}",
                  "traceback": traceback.format_exc(limit=-6)}
    result["seconds"] = round(time.perf_counter() - started, 2)
    result["peak_memory_gib"] = peak_gib(ctx.device)
    free(ctx.device)
    log.info("part %s: %s in %.1f s", name, result["status"], result["seconds"])
    return result


def environment(device: torch.device) -> dict[str, Any]:
    import accelerate
    import peft
    import transformers

    return {"python": platform.python_version(), "platform": platform.platform(), "torch": torch.__version__,
            "cuda": torch.version.cuda, "transformers": transformers.__version__, "peft": peft.__version__,
            "accelerate": accelerate.__version__, "torch_threads": torch.get_num_threads(),
            "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
            "gpu_memory_gib": round(torch.cuda.get_device_properties(device).total_memory / 2**30, 1)
            if device.type == "cuda" else None}


def markdown(report: dict[str, Any]) -> str:
    env = report["environment"]
    lines = [f"# GPU check ({report['mode']}, {report['device']})", "",
             f"{report['created']}; torch {env['torch']} (CUDA {env['cuda']}), transformers {env['transformers']}, "
             f"peft {env['peft']}; {env['gpu'] or 'no GPU'}. {' '.join(report['notes'])}", "",
             "| part | status | seconds | peak GiB | results |", "|---|---|---|---|---|"]
    for name, part in report["parts"].items():
        headline = ("; ".join(f"{k} {v}" for k, v in part.get("headline", {}).items() if v is not None)
                    or part.get("error", ""))
        peak = "" if part["peak_memory_gib"] is None else part["peak_memory_gib"]
        lines.append(f"| {name} | {part['status']} | {part['seconds']} | {peak} | {headline} |")
    checks = report["parts"].get("cuda_vs_cpu", {}).get("checks")
    if checks:
        part = report["parts"]["cuda_vs_cpu"]
        lines += ["", f"**{part['compared']} vs {part['reference']}** ({part['precision']}; within = |x - x_cpu| "
                  f"<= {TOLERANCE['atol']} + {TOLERANCE['rtol']} |x_cpu| everywhere):", "",
                  "| check | within | max abs diff | top items equal | ran on |", "|---|---|---|---|---|"]
        for name, r in checks.items():
            diff = r.get("max_abs_diff")
            lines.append(f"| {name} | {r['within']} | {r.get('error', '' if diff is None else f'{diff:.2e}')} | "
                         f"{r.get('top_items_equal', '')} | {' / '.join(r.get('ran_on', []))} |")
    errors = [(name, part["error"]) for name, part in report["parts"].items() if part["status"] == "error"]
    if errors:
        lines += ["", "Errors:", ""] + [f"- {name}: {error}" for name, error in errors]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--tiny", action="store_true", help="tiny shapes on CPU: a rehearsal in seconds")
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {','.join(PARTS)}")
    args = parser.parse_args(argv)
    names = [name.strip() for name in args.parts.split(",") if name.strip()]
    unknown = set(names) - set(PARTS)
    if unknown:
        parser.error(f"unknown parts {sorted(unknown)}; choose from {', '.join(PARTS)}")
    if not args.tiny and not torch.cuda.is_available():
        parser.error("torch sees no CUDA device: run on a GPU machine (CUDA build of torch), or pass --tiny")
    device = torch.device("cpu" if args.tiny else "cuda")
    shapes = TINY if args.tiny else GPU
    notes = ["--tiny: every part on CPU with tiny shapes; cuda_vs_cpu compares CPU with CPU (a rehearsal of the "
             "comparison, not a CUDA check)."] if args.tiny else []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
        root = Path(tmp)
        log.info("building the synthetic datasets")
        check_data = synthetic_data(TINY_SYNTHETIC, root / "check_data")
        data = check_data if shapes.synthetic == TINY_SYNTHETIC else synthetic_data(shapes.synthetic, root / "data")
        ctx = Context(device, shapes, data, check_data, root)
        parts = {name: run_part(name, PARTS[name], ctx) for name in names}
    report = {"created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "mode": "tiny" if args.tiny else "gpu", "device": str(device), "environment": environment(device),
              "notes": notes, "seconds": round(time.perf_counter() - started, 1),
              "dataset": {"synthetic": shapes.synthetic, "users": data.split.n_users, "items": data.n_items},
              "parts": parts}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu_check.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    summary = markdown(report)
    (args.out / "gpu_check.md").write_text(summary)
    log.info("summary (%s):\n%s", args.out, summary)
    return report


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    outcome = main()
    raise SystemExit(0 if all(part["status"] == "ok" for part in outcome["parts"].values()) else 1)
