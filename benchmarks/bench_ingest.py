"""Ingest + split at the scale of a large Amazon category, each stage in a fresh process.

Generates a deterministic synthetic category in the Amazon-2018 format (gzip JSON lines with the
published fields, plus its metadata file), then runs `run_ingest` and `run_split` in separate
child processes so each one's wall time and peak RSS are its own, not the generator's.

    python benchmarks/bench_ingest.py --reviews 5000000 --out benchmarks/out
"""

from __future__ import annotations

import argparse
import gzip
import json
import logging
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl

from distillrec.io import setup_logging
from distillrec.params import AmazonParams, DatasetParams, IngestParams, Params

log = logging.getLogger("bench_ingest")
CATEGORY = "Bench_Category"
CHUNK = 250_000  # reviews serialised per write: bounds the generator's memory
WORDS = np.array("great fine poor solid cheap sturdy quick slow bright quiet loud small large "
                 "battery screen cable case sound picture price value quality shipping box "
                 "works broke returned love hate recommend again would not very really the a "
                 "and it this for with after month week day kids game book".split())


def _phrases(rng: np.random.Generator, n: int, low: int, high: int) -> pl.Series:
    """`n` random word sequences: a vocabulary of text to sample reviews from."""
    return pl.Series([" ".join(rng.choice(WORDS, rng.integers(low, high))) for _ in range(n)])


def _ids(prefix: str, codes: np.ndarray, width: int) -> pl.Expr:
    return pl.lit(prefix) + pl.lit(pl.Series(codes)).cast(pl.String).str.zfill(width)


def _write_ndjson_gz(path: Path, chunks) -> None:
    """gzip level 1: the point is a realistic input file, not the smallest one."""
    with gzip.open(path, "wb", compresslevel=1) as out:
        for frame in chunks:
            frame.write_ndjson(out)


def _review_chunks(rng: np.random.Generator, n: int, n_users: int, n_items: int):
    sentences, summaries = _phrases(rng, 4000, 8, 20), _phrases(rng, 500, 2, 6)
    popularity = 1.0 / (np.arange(n_items) + 10.0) ** 0.8
    popularity /= popularity.sum()
    for start in range(0, n, CHUNK):
        size = min(CHUNK, n - start)
        seconds = rng.integers(946_684_800, 1_538_352_000, size)
        votes = rng.integers(2, 3000, size)
        yield pl.select(
            overall=pl.lit(pl.Series(rng.choice(5, size, p=[.06, .05, .09, .2, .6]) + 1.0)),
            vote=pl.when(pl.lit(pl.Series(votes % 7 == 0))).then(  # "1,234" strings, mostly absent
                pl.lit(pl.Series([f"{v:,}" for v in votes.tolist()]))),
            verified=pl.lit(pl.Series(seconds % 3 > 0)),
            reviewTime=pl.from_epoch(pl.lit(pl.Series(seconds))).dt.strftime("%m %-d, %Y"),
            reviewerID=_ids("A", rng.integers(0, n_users, size), 13),
            asin=_ids("B", rng.choice(n_items, size, p=popularity), 9),
            style=pl.struct(pl.lit(" Paperback").alias("Format:")),
            reviewerName=pl.lit("Reviewer"),
            reviewText=pl.concat_str(*(pl.lit(sentences.gather(rng.integers(0, len(sentences), size)))
                                       for _ in range(3)), separator=". "),
            summary=pl.lit(summaries.gather(rng.integers(0, len(summaries), size))),
            unixReviewTime=pl.lit(pl.Series(seconds)),
        )


def _meta(rng: np.random.Generator, n_items: int) -> pl.DataFrame:
    titles, sentences = _phrases(rng, 2000, 3, 8), _phrases(rng, 2000, 10, 25)
    n = int(n_items * 1.05)  # a few items that nobody reviewed, as in the real files
    cat = rng.integers(0, 30, n)
    return pl.select(
        category=pl.concat_list(pl.lit("Bench"), pl.lit(pl.Series(cat)).cast(pl.String)),
        description=pl.concat_list(pl.lit(sentences.gather(rng.integers(0, 2000, n)))),
        title=pl.lit(titles.gather(rng.integers(0, 2000, n))),
        also_buy=pl.concat_list(_ids("B", rng.integers(0, n, n), 9)),
        brand=pl.lit("Brand") + pl.lit(pl.Series(cat % 7)).cast(pl.String),
        price=pl.lit("$9.99"),
        asin=_ids("B", np.arange(n), 9),
    )


def generate(raw_dir: Path, n_reviews: int, seed: int = 0) -> None:
    """Write `<Cat>_5.json.gz` and `meta_<Cat>.json.gz`; same seed and size, same bytes."""
    rng = np.random.default_rng(seed)
    n_users, n_items = max(n_reviews // 8, 10), max(n_reviews // 25, 10)
    raw_dir.mkdir(parents=True, exist_ok=True)
    _write_ndjson_gz(raw_dir / f"{CATEGORY}_5.json.gz", _review_chunks(rng, n_reviews, n_users, n_items))
    _write_ndjson_gz(raw_dir / f"meta_{CATEGORY}.json.gz", [_meta(rng, n_items)])


def _params(out: Path) -> Params:
    return Params(dataset=DatasetParams(source="amazon", name=CATEGORY, path=str(out / "raw"),
                                        amazon=AmazonParams(version=2018)),
                  ingest=IngestParams(download=False))


def _child(stage: str, out: Path) -> None:
    """Run one stage in this (fresh) process and write its result and peak RSS as JSON."""
    from distillrec.data.ingest import run_ingest
    from distillrec.data.split import run_split

    params = _params(out)
    if stage == "ingest":
        result = run_ingest(params, out / "interim")
    else:
        result = run_split(params, out / "interim", out / "processed", out / "data_metrics.json")
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    (out / f"{stage}_result.json").write_text(json.dumps({"peak_rss_kib": peak_kib, "result": result}))


def _run(stage: str, out: Path) -> dict:
    started = time.perf_counter()
    subprocess.run([sys.executable, __file__, "--child", stage, "--out", str(out)], check=True)
    wall = time.perf_counter() - started
    report = json.loads((out / f"{stage}_result.json").read_text())
    log.info("%s: %.1f s, peak RSS %.2f GiB", stage, wall, report["peak_rss_kib"] / 2**20)
    return {"wall_s": wall, "peak_gib": report["peak_rss_kib"] / 2**20, **report["result"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out"))
    parser.add_argument("--reviews", type=int, default=5_000_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--child", choices=["ingest", "split"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    setup_logging()
    if args.child:
        _child(args.child, args.out)
        return
    started = time.perf_counter()
    generate(args.out / "raw", args.reviews, args.seed)
    log.info("generated %d reviews in %.1f s (%.0f MB gz)", args.reviews, time.perf_counter() - started,
             (args.out / "raw" / f"{CATEGORY}_5.json.gz").stat().st_size / 1e6)
    ingest, split = _run("ingest", args.out), _run("split", args.out)
    kept = split["filtered"]
    print("| reviews | ingest s | ingest peak RSS | split s | split peak RSS | "
          "ingested (users / items) | after 5-core (users / items / interactions) |")
    print("|---|---|---|---|---|---|---|")
    print(f"| {args.reviews:,} | {ingest['wall_s']:.1f} | {ingest['peak_gib']:.2f} GiB "
          f"| {split['wall_s']:.1f} | {split['peak_gib']:.2f} GiB "
          f"| {ingest['interactions']:,} ({ingest['users']:,} / {ingest['items']:,}) "
          f"| {kept['users']:,} / {kept['items']:,} / {kept['interactions']:,} |")


if __name__ == "__main__":
    main()
