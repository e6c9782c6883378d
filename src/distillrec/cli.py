"""`python -m distillrec recommend`: top-K items for a history from a saved student; `plots` and
`tune` hand over to their tools (distillrec/plots.py, distillrec/tune.py)."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import polars as pl
import torch

from distillrec.errors import DataError, DistillrecError
from distillrec.io import setup_logging
from distillrec.students.saved import load_student

log = logging.getLogger("distillrec.cli")


def _history(text: str, item_map: pl.DataFrame) -> list[int]:
    """Original item ids (as in the raw data) → internal indices, with a clear error."""
    ids = [part.strip() for part in text.split(",") if part.strip()]
    if not ids:
        raise DistillrecError("--history is empty: give comma-separated item ids, e.g. --history 12,55,7")
    index = dict(zip(item_map["item_id"].to_list(), item_map["item_idx"].to_list()))
    unknown = [i for i in ids if i not in index]
    if unknown:
        raise DistillrecError(f"unknown item id(s) {', '.join(unknown)}: not in the model's catalogue "
                              f"({len(index)} items, e.g. {', '.join(item_map['item_id'].head(3).to_list())})")
    return [index[i] for i in ids]


def _item_map(model_dir: Path, n_items: int) -> pl.DataFrame:
    path = model_dir / "item_map.parquet"
    try:
        item_map = pl.read_parquet(path)
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise DataError(f"{path}: cannot be read, the file is truncated or corrupt ({exc})") from None
    if not {"item_idx", "item_id", "title"} <= set(item_map.columns):
        raise DataError(f"{path}: expected columns item_idx, item_id, title; found {item_map.columns}")
    return item_map.filter(pl.col("item_idx").is_between(1, n_items))


def recommend(model_dir: Path, history_text: str, k: int, keep_seen: bool) -> pl.DataFrame:
    """The top `k` items after the history, best first: never padding, never a history item unless
    `keep_seen`. When fewer than `k` items can be recommended, all of them are, with a warning."""
    model, meta = load_student(model_dir)
    item_map = _item_map(model_dir, meta["n_items"])
    history = _history(history_text, item_map)
    max_length = int(meta["student"]["max_length"])
    padded = ([0] * max_length + history)[-max_length:]
    with torch.no_grad():
        scores = model.score(model.user_states(torch.tensor([padded])))[0]
    allowed = torch.zeros(len(scores), dtype=torch.bool)
    allowed[torch.tensor(item_map["item_idx"].to_list(), dtype=torch.long)] = True  # never padding (0)
    if not keep_seen:
        allowed[torch.tensor(history)] = False
    candidates = allowed.nonzero().squeeze(1)
    if len(candidates) == 0:
        raise DistillrecError(f"nothing to recommend: the history holds all {len(item_map)} items of the "
                              "catalogue (pass --keep-seen to rank them anyway)")
    if k > len(candidates):
        log.warning("--k %d is more than the %d items that can be recommended (%d in the catalogue%s); "
                    "listing all %d", k, len(candidates), len(item_map),
                    "" if keep_seen else f", {len(set(history))} already in the history", len(candidates))
    top = scores[candidates].topk(min(k, len(candidates)))
    ranked = pl.DataFrame({"rank": range(1, len(top.indices) + 1),
                           "item_idx": candidates[top.indices].tolist(), "score": top.values.tolist()},
                          schema_overrides={"item_idx": item_map["item_idx"].dtype})
    return ranked.join(item_map.select("item_idx", "item_id", "title"), on="item_idx").sort("rank")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="distillrec")
    commands = parser.add_subparsers(dest="command", required=True)
    rec = commands.add_parser("recommend", help="top-K items for a history from a saved student")
    rec.add_argument("--model", type=Path, required=True, help="saved student folder, e.g. models/students/sasrec-none/seed42")
    rec.add_argument("--history", required=True, help="comma-separated item ids, oldest first (ids as in the raw data)")
    rec.add_argument("--k", type=int, default=10)
    rec.add_argument("--keep-seen", action="store_true", help="allow items already in the history")
    commands.add_parser("plots", add_help=False, help="dvc plots show|diff as SVG/PNG and an index.html that opens "
                        "offline (`distillrec plots show --help`)")
    commands.add_parser("tune", add_help=False, help="the same tuning budget for every row through DVC's queue "
                        "(`distillrec tune --help`)")
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["plots"]:
        from distillrec.plots import main as plots  # vl-convert loads only for this command
        plots(argv[1:])
        return
    if argv[:1] == ["tune"]:
        from distillrec.tune import main as tune
        tune(argv[1:])
        return
    args = parser.parse_args(argv)
    setup_logging(logging.WARNING)
    if args.k < 1:
        parser.error("--k must be >= 1")
    try:
        table = recommend(args.model, args.history, args.k, args.keep_seen)
    except DistillrecError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    for row in table.iter_rows(named=True):
        print(f"{row['rank']:>3}  {row['item_id']:<14} {row['score']:8.3f}  {row['title'] or ''}")
