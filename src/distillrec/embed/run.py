"""`embed_items@<name>`: every item's text through the language model once -> data/item_text/<name>/.

Items are encoded longest input first (batches pad little), `batch_size` per forward pass, in eval
mode without gradients (bf16 on CUDA unless `precision` says otherwise). Every `chunk_items` items
of that order form a chunk that is saved under the run's fingerprint (params, resolved device and
dtype, the model's identity, the item texts) as soon as it is done: an interrupted run resumes
from its chunks and ends with exactly the vectors of an uninterrupted one.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch
from tqdm import tqdm

from distillrec.embed import checkpoint
from distillrec.embed.models import hidden_size, load_body, load_tokenizer, local_source
from distillrec.embed.pooling import pool
from distillrec.embed.store import write_item_embeddings
from distillrec.embed.text import ItemInputs, item_texts
from distillrec.errors import DataError, ParamsError
from distillrec.hf import resolve_device, resolve_precision
from distillrec.io import folder_lock
from distillrec.params import EmbedParams, Params

log = logging.getLogger(__name__)


@dataclass
class Embedded:
    """Vectors [N, D] (row i - 1 = item i) and what the card reports about the pass."""

    vectors: np.ndarray
    stats: dict[str, Any] = field(default_factory=dict)


def encode_rows(body: torch.nn.Module, inputs: ItemInputs, rows: np.ndarray, batch_size: int, pooling: str,
                device: torch.device, progress: tqdm | None = None) -> np.ndarray:
    """Pooled float32 vectors [len(rows), D] of item rows (0-based), `batch_size` at a time, in order."""
    out = []
    with torch.inference_mode():
        for lo in range(0, len(rows), batch_size):
            ids, mask = (torch.from_numpy(a).to(device) for a in inputs.batch(rows[lo:lo + batch_size]))
            hidden = body(input_ids=ids, attention_mask=mask).last_hidden_state
            out.append(pool(pooling, hidden, mask).cpu().numpy())
            if progress is not None:
                progress.update(len(ids))
    return np.concatenate(out).astype(np.float32, copy=False)


def _encode_chunk(body: torch.nn.Module, inputs: ItemInputs, rows: np.ndarray, cfg: EmbedParams,
                  device: torch.device, progress: tqdm | None) -> np.ndarray:
    """One chunk (a seam for tests that interrupt a run)."""
    return encode_rows(body, inputs, rows, cfg.batch_size, cfg.pooling, device, progress)


def embed_texts(cfg: EmbedParams, texts: list[str], checkpoint_dir: Path | str, name: str = "") -> Embedded:
    """Vectors of `texts` (item i = texts[i - 1]), resuming from and saving chunks in `checkpoint_dir`."""
    checkpoint_dir = Path(checkpoint_dir)
    device = resolve_device(cfg.device)
    dtype = resolve_precision(cfg.precision, device)
    threads = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    try:
        started = time.perf_counter()
        with local_source(cfg) as (source, pinned):
            tokenizer = load_tokenizer(source, texts)
            inputs = ItemInputs.build(tokenizer, texts, cfg.max_tokens, cfg.prompt)
            lengths = inputs.lengths
            body, identity = load_body(source, tokenizer, int(lengths.max(initial=1)), dtype)
        identity = pinned or identity
        body.to(device)
        loaded = time.perf_counter() - started
        key = checkpoint.fingerprint(params=cfg.model_dump(mode="json"), device=device.type, dtype=str(dtype),
                                     model=identity, texts=checkpoint.texts_digest(texts))
        order = inputs.order()
        chunks = [order[lo:lo + cfg.chunk_items] for lo in range(0, len(order), cfg.chunk_items)]
        vectors = np.zeros((len(texts), hidden_size(body)), np.float32)
        todo = []
        for k, rows in enumerate(chunks):
            cached = checkpoint.load_chunk(checkpoint_dir, k, key, rows + 1)
            if cached is None or cached.shape[1] != vectors.shape[1]:
                todo.append(k)
            else:
                vectors[rows] = cached
        resumed = sum(len(chunks[k]) for k in range(len(chunks)) if k not in todo)
        if resumed:
            log.info("resuming: %d of %d items read from %d chunk(s) in %s", resumed, len(texts),
                     len(chunks) - len(todo), checkpoint_dir)
        started = time.perf_counter()
        with tqdm(total=len(texts), initial=resumed, unit="item", desc=f"embed_items {name}".strip(),
                  disable=None) as progress:
            for k in todo:
                vectors[chunks[k]] = _encode_chunk(body, inputs, chunks[k], cfg, device, progress)
                if not np.isfinite(vectors[chunks[k]]).all():
                    raise DataError(f"embed model {cfg.model or 'config-built BERT'} produced NaN or inf vectors "
                                    f"(precision {dtype}): try precision: fp32")
                checkpoint.save_chunk(checkpoint_dir, k, key, chunks[k] + 1, vectors[chunks[k]])
        seconds = time.perf_counter() - started
        checkpoint.prune(checkpoint_dir, len(chunks))
        computed = len(texts) - resumed
        used_threads = torch.get_num_threads()
    finally:
        torch.set_num_threads(threads)
    if cfg.normalize:
        vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    stats = {"dim": int(vectors.shape[1]), "items": len(texts), "tokens": int(lengths.sum()),
             "max_input_tokens": int(lengths.max(initial=0)), "seconds": round(seconds, 3),
             "load_seconds": round(loaded, 3), "computed_items": computed, "resumed_items": resumed,
             "items_per_second": round(computed / seconds, 2) if computed and seconds > 0 else None,
             "device": str(device), "dtype": str(dtype).removeprefix("torch."), "threads": used_threads}
    return Embedded(vectors, stats)


def catalogue_texts(item_map: pl.DataFrame, fields: list[str]) -> list[str]:
    """Item texts of items 1..N; checks that item_idx is exactly 1..N and that some item has text."""
    items = item_map["item_idx"].to_numpy()
    if not np.array_equal(np.sort(items), np.arange(1, len(items) + 1)):
        raise DataError("item_map.parquet: item_idx must be 1..N, each once (re-run split)")
    texts = item_texts(item_map, fields)
    empty = sum(not text for text in texts)
    if empty == len(texts):
        raise DataError(f"item_map.parquet: no item has text in {', '.join(fields)}; embed_items reads item "
                        f"text: use a dataset with item metadata or other fields")
    if empty:
        log.warning("%d of %d items have no text in %s: they are encoded from the empty text (inside the "
                    "prompt, if any)", empty, len(texts), ", ".join(fields))
    return texts


def embed_items(params: Params, name: str, processed_dir: Path | str, out_dir: Path | str,
                checkpoint_dir: Path | str) -> dict[str, Any]:
    """The stage: item_map -> `out_dir` (item_embeddings.parquet, card.json); returns the card."""
    if name not in params.embed:
        raise ParamsError(f"no embed entry named {name!r} in params.yaml (configured: "
                          f"{', '.join(params.embed) or 'none'})")
    cfg = params.embed[name]
    path = Path(processed_dir) / "item_map.parquet"
    if not path.is_file():
        raise DataError(f"{path} not found: run the `split` stage first")
    texts = catalogue_texts(pl.read_parquet(path), list(cfg.fields))
    with folder_lock(checkpoint_dir):   # one writer of the chunks
        result = embed_texts(cfg, texts, checkpoint_dir, name)
    stats = result.stats
    card = {"name": name, "model": cfg.model or "config-built BERT", "kind": cfg.kind, "pooling": cfg.pooling,
            "prompt": cfg.prompt, "fields": list(cfg.fields), "max_tokens": cfg.max_tokens,
            "normalize": cfg.normalize, "items_without_text": sum(not t for t in texts),
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), **stats}
    write_item_embeddings(out_dir, result.vectors, card)
    log.info("embed_items %s: %d items x %d dims in %.1f s (%s items/s, %s, %s, %d threads) -> %s", name,
             stats["items"], stats["dim"], stats["seconds"], stats["items_per_second"], stats["device"],
             stats["dtype"], stats["threads"], out_dir)
    return card
