"""BIGRec ranking (docs/methods.md §3.2): generate a title, ground it in the catalogue by L2 distance.

φ(text) is the base model's (LoRA disabled) last-layer hidden state at the last token. Two fixes:
* B10, duplicate titles: equal titles get bitwise-equal embeddings (each distinct title is embedded
  once), so their distances tie exactly; ties are broken by training popularity (more first), then
  by item id (smaller first).
* B6, confidence scale: raw distances of a large LM are far above the range where exp(-d) is
  usable, so the score is the row z-score of the negative distance over the whole catalogue,
  -(d - mean_row(d)) / std_row(d): scale-free, higher = better. `distance_summary` records the raw
  distances so the scale can be checked.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

from distillrec.teachers.bigrec import PromptPieces, pad, strip_quotes

Encoder = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def embed(encode: Encoder, pieces: PromptPieces, titles: Sequence[Sequence[int]], batch_size: int,
          device: torch.device) -> torch.Tensor:
    """φ of title ids [B, H] (float32, CPU): prefix + title, left-padded, last token's state."""
    seqs = [(pieces.prefix + list(t)) or [pieces.eos_id] for t in titles]
    out = []
    for lo in range(0, len(seqs), batch_size):
        ids, mask = pad(seqs[lo:lo + batch_size], pieces.pad_id, left=True)
        out.append(encode(ids.to(device), mask.to(device))[:, -1].float().cpu())
    return torch.cat(out)


def catalogue(encode: Encoder, pieces: PromptPieces, batch_size: int, device: torch.device
              ) -> tuple[torch.Tensor, int]:
    """φ(title_i) for items 1..N [N, H], each distinct title embedded once (so duplicates tie exactly)."""
    keys = [tuple(t) for t in pieces.titles[1:]]
    distinct = list(dict.fromkeys(keys))
    index = {key: i for i, key in enumerate(distinct)}
    table = embed(encode, pieces, distinct, batch_size, device)
    return table[torch.as_tensor([index[k] for k in keys])], len(distinct)


def generate(model: Any, pieces: PromptPieces, prompts: Sequence[Sequence[int]], beams: int, max_new_tokens: int,
             device: torch.device) -> tuple[list[list[int]], int]:
    """Top beam's new token ids per prompt (cut at eos), and the number of decoder steps run."""
    ids, mask = pad(prompts, pieces.pad_id, left=True)
    steps = [0]
    target = model.get_base_model() if hasattr(model, "get_base_model") else model
    hook = target.register_forward_hook(lambda *_: steps.__setitem__(0, steps[0] + 1))
    try:
        out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), num_beams=beams,
                             num_return_sequences=1, do_sample=False, max_new_tokens=max_new_tokens,
                             eos_token_id=pieces.eos_id, pad_token_id=pieces.pad_id)
    finally:
        hook.remove()
    generated = []
    for row in out[:, ids.shape[1]:].tolist():
        generated.append(row[:row.index(pieces.eos_id)] if pieces.eos_id in row else row)
    return generated, steps[0]


def title_ids(tokenizer: PreTrainedTokenizerBase, generated: Sequence[Sequence[int]], max_title_tokens: int
              ) -> list[list[int]]:
    """Generated responses as title ids: decoded, quotes stripped, re-tokenised like catalogue titles."""
    texts = tokenizer.batch_decode(generated, skip_special_tokens=True)
    return [tokenizer(strip_quotes(t), add_special_tokens=False)["input_ids"][:max_title_tokens] for t in texts]


def tie_order(popularity: np.ndarray) -> torch.Tensor:
    """Item rows (0-based) by training popularity, descending, then by id: the order ties resolve to."""
    return torch.as_tensor(np.lexsort((np.arange(len(popularity)), -np.asarray(popularity))))


def rank(queries: torch.Tensor, items: torch.Tensor, order: torch.Tensor, k: int
         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Top-k item ids (1-based) by ascending L2 distance, their z-scores, and the raw distances [B, N]."""
    dist = torch.cdist(queries.double(), items.double(), compute_mode="donot_use_mm_for_euclid_dist")
    std = dist.std(dim=1, unbiased=False, keepdim=True)
    z = -(dist - dist.mean(dim=1, keepdim=True)) / torch.where(std > 0, std, torch.ones_like(std))
    scores, idx = torch.sort(z[:, order], dim=1, descending=True, stable=True)
    return order[idx[:, :k]] + 1, scores[:, :k].float(), dist


def row_stats(dist: torch.Tensor) -> torch.Tensor:
    """Per row [B, 3]: nearest, median and spread of the raw distances (kept for `distance_summary`)."""
    return torch.stack([dist.min(dim=1).values, dist.median(dim=1).values, dist.std(dim=1, unbiased=False)], 1)


def distance_summary(stats: torch.Tensor) -> dict[str, Any]:
    """Raw-distance scale (B6): quantiles over rows of `row_stats`, and the exact-match rate."""
    stats = stats.double()
    q = torch.tensor([0.05, 0.25, 0.5, 0.75, 0.95], dtype=stats.dtype)
    summary: dict[str, Any] = {"quantiles_at": q.tolist()}
    for col, name in enumerate(("nearest", "row_median", "row_std")):
        summary[name] = [round(float(v), 6) for v in torch.quantile(stats[:, col], q)]
    summary["exact_match_rate"] = float((stats[:, 0] <= 1e-3 * stats[:, 1].clamp(min=1e-12)).double().mean())
    return summary
