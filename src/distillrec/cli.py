"""`distillrec recommend`: top-K items after a history, or after a user's known sequence, from a
release folder or a saved student, through `distillrec.load` (serving/recommender.py), the object
the Python API and the HTTP server answer with, so all three give the same lists. `serve`, `plots`
and `tune` hand over to their tools (serving/server.py, plots.py, tune.py).

`recommend` starts fast: with the onnx backend (a release folder) neither torch nor polars is
imported; `--user` reads the split with polars.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from distillrec.errors import DataError, DistillrecError

log = logging.getLogger("distillrec.cli")
MODEL_HELP = ("a release folder (models/release, written by the `release` stage) or a saved student folder "
              "(models/students/<model>-<method>/seed<seed>)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="distillrec")
    commands = parser.add_subparsers(dest="command", required=True)
    rec = commands.add_parser(
        "recommend", help="top-K items after a history (or a user of the split) from a release or a saved student",
        description="Top-K items after a history, best first. The history is item ids as in the raw data, "
                    "oldest first: --history, --history-file, or --user for a user's whole known sequence.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  distillrec recommend --model models/release --user u00000\n"
               "  distillrec recommend --model models/release --history i00063,i00024,i00069 --k 5 --json\n"
               "  distillrec recommend --model models/students/sasrec-none/seed42 --history-file history.txt")
    rec.add_argument("--model", type=Path, required=True, help=MODEL_HELP)
    rec.add_argument("--backend", choices=("auto", "onnx", "torch"), default="auto",
                     help="auto (default): onnx for a release folder, torch for a saved student")
    source = rec.add_mutually_exclusive_group(required=True)
    source.add_argument("--history", action="append", metavar="IDS",
                        help="comma-separated item ids, oldest first; may be repeated (the values are concatenated)")
    source.add_argument("--history-file", type=Path, metavar="FILE",
                        help="item ids, one per line, oldest first (blank lines ignored; `-` reads stdin); "
                             "for ids that contain a comma")
    source.add_argument("--user", metavar="USER_ID",
                        help="a user of the split (original id): their whole known sequence (train, valid and test "
                             "items, oldest first) is the history, so this recommends what comes next for them")
    rec.add_argument("--data", type=Path, default=Path("data/processed"),
                     help="the split that --user reads (default data/processed)")
    rec.add_argument("--k", type=int, default=10, help="how many items (>= 1; default 10)")
    rec.add_argument("--keep-seen", action="store_true", help="allow items already in the history")
    rec.add_argument("--json", action="store_true",
                     help="print one JSON object (model, row, backend, history, recommendations) and nothing else")
    commands.add_parser("serve", add_help=False, help="the HTTP service (FastAPI, micro-batching) over a release "
                        "folder (`distillrec serve --help`)")
    commands.add_parser("plots", add_help=False, help="dvc plots show|diff as SVG/PNG and an index.html that opens "
                        "offline (`distillrec plots show --help`)")
    commands.add_parser("tune", add_help=False, help="the same tuning budget for every row through DVC's queue "
                        "(`distillrec tune --help`)")
    return parser


# ------------------------------------------------------------------------------------------ history

def split_history(values: Sequence[str]) -> list[str]:
    """--history values: each split on commas, stripped, empty parts dropped, concatenated in order."""
    return [part.strip() for value in values for part in value.split(",") if part.strip()]


def read_history_file(path: Path) -> list[str]:
    """One item id per line (surrounding whitespace stripped, blank lines ignored); `-` is stdin."""
    if str(path) == "-":
        return [line.strip() for line in sys.stdin.read().splitlines() if line.strip()]
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"--history-file {path}: cannot be read ({exc})") from None
    return [line.strip() for line in text.splitlines() if line.strip()]


def user_history(data: Path, user: str) -> list[str]:
    """The original item ids of `user`'s whole sequence in the split at `data` (oldest first)."""
    import polars as pl

    paths = {name: data / f"{name}.parquet" for name in ("user_map", "sequences", "item_map")}
    missing = [p.name for p in paths.values() if not p.is_file()]
    if missing:
        raise DataError(f"--user reads the split in {data}, which lacks {', '.join(missing)}: run the `split` "
                        "stage, or pass --data <the split's folder>")
    try:
        users = pl.scan_parquet(paths["user_map"]).select("user_idx", pl.col("user_id").cast(pl.String))
        found = users.filter(pl.col("user_id") == user).collect()
        if found.height == 0:
            some = users.head(3).collect()["user_id"].to_list()
            count = users.select(pl.len()).collect().item()
            raise DistillrecError(f"unknown user {user!r}: not in {paths['user_map']} ({count} users, "
                                  f"e.g. {', '.join(some)})")
        sequence = (pl.scan_parquet(paths["sequences"]).filter(pl.col("user_idx") == found["user_idx"][0])
                    .select("items").collect())
        items = sequence["items"][0].to_list() if sequence.height else []
        ids = dict(pl.read_parquet(paths["item_map"], columns=["item_idx", "item_id"]).iter_rows())
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise DataError(f"{data}: the split cannot be read, a file is truncated, corrupt or not a split "
                        f"({' '.join(str(exc).split())[:300]})") from None
    if not items or any(item not in ids for item in items):
        raise DataError(f"{paths['sequences']}: user {user!r} has no sequence, or items missing from "
                        f"{paths['item_map'].name}: re-run the `split` stage")
    return [str(ids[item]) for item in items]


# ---------------------------------------------------------------------------------------- recommend

@dataclass(frozen=True)
class Listing:
    """One `recommend` answer: what served it, the history, and the ranked items (rank, item_id,
    title, score), best first."""

    model: str
    row: str | None
    method: str | None
    seed: int | None
    backend: str
    max_length: int
    history: list[str]
    recommendations: list[dict[str, Any]]

    def as_json(self) -> dict[str, Any]:
        """The `--json` object."""
        return {"model": self.model, "row": self.row, "backend": self.backend, "history": self.history,
                "recommendations": self.recommendations}

    def table(self, user: str | None = None) -> str:
        """A header line (model, row, backend, history) and the labelled columns rank, item_id, score, title."""
        what = f"row {self.row or '?'}" + (f" (method {self.method})" if self.method not in (None, self.row) else "")
        what += f", seed {self.seed}" if self.seed is not None else ""
        n = len(self.history)
        history = f"history {n} item{'s' * (n != 1)}" + (f" of user {user}" if user is not None else "")
        history += f" (the model reads the last {self.max_length})" if n > self.max_length else ""
        width = max([len("item_id"), *(len(r["item_id"]) for r in self.recommendations)])
        lines = [f"# model {self.model}: {what}; backend {self.backend}; {history}",
                 f"{'rank':>4}  {'item_id':<{width}}  {'score':>9}  title"]
        lines += [f"{r['rank']:>4}  {r['item_id']:<{width}}  {r['score']:>9.4f}  {r['title'] or ''}"
                  for r in self.recommendations]
        return "\n".join(lines)


def recommend(model_dir: Path, history: Sequence[str], k: int = 10, keep_seen: bool = False,
              backend: str = "auto", source: str = "the history", hint: str = "") -> Listing:
    """The top `k` items after `history` (original ids, oldest first), from the release or saved
    student at `model_dir`: never padding, never a history item unless `keep_seen`. When fewer
    than `k` items can be recommended, all of them are, with a warning. `source` names the history
    in an error (e.g. --history); `hint` ends the message of an unknown id."""
    if k < 1:
        raise DistillrecError(f"--k must be >= 1, found {k}")
    from distillrec.serving.recommender import load

    model = load(model_dir, backend=backend)  # type: ignore[arg-type]
    catalogue, history = model.catalogue, list(history)
    examples = ", ".join(catalogue.ids[1:4])
    if not history:
        raise DistillrecError(f"{source} is empty: give at least one item id, oldest first (e.g. {examples})")
    unknown = list(dict.fromkeys(item for item in history if item not in catalogue.index))
    if unknown:
        shown = ", ".join(map(repr, unknown[:10])) + (f" and {len(unknown) - 10} more" if len(unknown) > 10 else "")
        raise DistillrecError(f"unknown item id(s) {shown}: not in the model's catalogue ({len(catalogue)} items, "
                              f"e.g. {examples}){hint}")
    seen = 0 if keep_seen else len(set(history))
    allowed = len(catalogue) - seen
    if allowed == 0:
        raise DistillrecError(f"nothing to recommend: the history holds all {len(catalogue)} items of the "
                              "catalogue (pass --keep-seen to rank them anyway)")
    if k > allowed:
        log.warning("--k %d is more than the %d items that can be recommended (%d in the catalogue%s); "
                    "listing all %d", k, allowed, len(catalogue),
                    f", {seen} already in the history" if seen else "", allowed)
    [ranked] = model.recommend([history], k=k, exclude_seen=not keep_seen)
    items = [{"rank": rank, "item_id": item, "title": title, "score": score} for rank, (item, title, score)
             in enumerate(zip(ranked.item_ids, ranked.titles, ranked.scores), start=1)]
    config = model.config
    return Listing(str(model_dir), config.get("row"), config.get("method"), config.get("seed"), model.backend,
                   model.max_length, history, items)


def _recommend(args: argparse.Namespace) -> None:
    hint = ""
    if args.history is not None:
        history, source = split_history(args.history), "--history"
    elif args.history_file is not None:
        history, source = read_history_file(args.history_file), f"--history-file {args.history_file}"
    else:
        source = f"user {args.user}'s sequence"
        history = user_history(args.data, args.user)
        hint = (f"; they are user {args.user}'s items in {args.data}: is that the split {args.model} "
                "was trained on? (--data)")
    listing = recommend(args.model, history, args.k, args.keep_seen, args.backend, source, hint)
    if args.json:
        print(json.dumps(listing.as_json(), indent=2, ensure_ascii=False))
    else:
        print(listing.table(args.user))
    sys.stdout.flush()


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["serve"]:
        from distillrec.serving.server import main as serve  # FastAPI and uvicorn load only for this command
        serve(argv[1:])
        return
    if argv[:1] == ["plots"]:
        from distillrec.plots import main as plots  # vl-convert loads only for this command
        plots(argv[1:])
        return
    if argv[:1] == ["tune"]:
        from distillrec.tune import main as tune
        tune(argv[1:])
        return
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s", force=True)
    try:
        _recommend(args)
    except DistillrecError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except BrokenPipeError:  # `distillrec recommend ... | head`: the reader left early, nothing is wrong
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error when Python exits
        sys.exit(0)
