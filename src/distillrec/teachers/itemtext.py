"""Item text for the text teacher: each item's text, tokenised once, and the cached encoder pass.

`TextEncoder.catalogue()` is the mean-pooled encoder output of every item, kept until the
encoder's weights change. The cache is keyed by the storage and version counter of every encoder
parameter, which an optimiser step, `load_state_dict` and a device move all bump: staleness is
detected exactly, without hashing weights, and a frozen encoder is never encoded twice.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import polars as pl
import torch
from torch import nn
from tqdm import tqdm

from distillrec.embed.pooling import mean_pool
from distillrec.embed.text import item_texts as join_fields
from distillrec.errors import DataError

log = logging.getLogger(__name__)


def item_texts(item_map: pl.DataFrame, fields: Sequence[str]) -> list[str]:
    """Text of items 1..N: the present values of `fields`, in that order, joined by '. ' (lists by ', ')."""
    texts = join_fields(item_map, fields)
    missing = sum(not text for text in texts)
    if missing == len(texts):
        raise DataError(f"item_map.parquet: no item has text in {', '.join(fields)}; the text teacher reads "
                        f"item text, so use a dataset with item metadata (MovieLens, Amazon with metadata, "
                        f"synthetic) or other text.fields")
    if missing:
        log.warning("%d of %d items have no text in %s: they share the empty text's vector", missing, len(texts),
                    ", ".join(fields))
    return texts


def weights_key(params: Sequence[torch.Tensor]) -> tuple[tuple[int, int], ...]:
    """Changes whenever any of `params` is written in place or given new storage."""
    return tuple((p.data_ptr(), p._version) for p in params)


@dataclass(frozen=True)
class ItemTokens:
    """Token ids and attention mask [N + 1, T] of every item's text (row 0, the padding item, is empty)."""

    ids: torch.Tensor
    mask: torch.Tensor

    @classmethod
    def build(cls, tokenizer: Any, texts: list[str], max_tokens: int) -> ItemTokens:
        encoded = tokenizer([""] + texts, truncation=True, max_length=max_tokens, padding=True,
                            return_tensors="pt")
        return cls(encoded["input_ids"], encoded["attention_mask"])

    @property
    def n_items(self) -> int:
        return len(self.ids) - 1

    def batch(self, items: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Ids and mask of `items` without the columns that are padding in all of them."""
        ids, mask = self.ids[items], self.mask[items]
        used = mask.any(0)
        return ids[:, used], mask[:, used]


class TextEncoder(nn.Module):
    """A Hugging Face encoder (possibly peft-wrapped) over the catalogue's tokens, with the cache."""

    def __init__(self, encoder: nn.Module, tokens: ItemTokens, batch_size: int, dim: int):
        super().__init__()
        self.encoder, self.tokens, self.batch_size, self.dim = encoder, tokens, batch_size, dim
        self._params = list(encoder.parameters())   # walked once: scoring a user checks the key
        self.passes = 0   # catalogue passes so far: what the cache saves
        self._cache: torch.Tensor | None = None
        self._key: tuple | None = None

    @property
    def trainable(self) -> bool:
        return any(p.requires_grad for p in self._params)

    def version(self) -> tuple:
        return weights_key(self._params)

    @property
    def stale(self) -> bool:
        return self._cache is None or self._key != self.version()

    def encode(self, items: torch.Tensor) -> torch.Tensor:
        """[len(items), dim] pooled outputs of `items` (1..N) in the encoder's current mode; differentiable."""
        device = next(self.encoder.parameters()).device
        ids, mask = (t.to(device) for t in self.tokens.batch(items.cpu()))
        return mean_pool(self.encoder(input_ids=ids, attention_mask=mask).last_hidden_state, mask)

    def catalogue(self) -> torch.Tensor:
        """[N + 1, dim] outputs of every item (row 0 = 0), recomputed only when the weights changed."""
        key = self.version()
        if self._cache is None or key != self._key:
            self._cache, self._key = self._encode_all(), key
        return self._cache

    def cached(self) -> torch.Tensor:
        """The cache as it is, even if stale (a training step's constants); computed if absent."""
        return self._cache if self._cache is not None else self.catalogue()

    @torch.no_grad()
    def _encode_all(self) -> torch.Tensor:
        """One pass in eval mode (no dropout), longest texts first so each batch pads little."""
        device = next(self.encoder.parameters()).device
        order = torch.argsort(self.tokens.mask[1:].sum(1), descending=True, stable=True) + 1
        table = torch.zeros(self.tokens.n_items + 1, self.dim, device=device)
        training = self.encoder.training
        self.encoder.eval()
        try:
            for lo in tqdm(range(0, len(order), self.batch_size), desc="encoding items", leave=False,
                           disable=None):
                chunk = order[lo:lo + self.batch_size]
                table[chunk.to(device)] = self.encode(chunk)
        finally:
            self.encoder.train(training)
        self.passes += 1
        log.debug("encoded %d items (pass %d)", len(order), self.passes)
        return table
