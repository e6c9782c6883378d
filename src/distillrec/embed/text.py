"""What the model reads for each item: its text (item_map fields joined), cut, put into the prompt.

The rule, in order:
1. text = the present values of `fields`, in that order, joined by '. ' (a list's values by ', ');
2. the text alone is tokenised (no special tokens) and cut before its token `max_tokens + 1`, at the
   character where that token starts (so a word is never split into a different token);
3. `prompt` (if any) has every `{text}` replaced by the cut text;
4. the result is tokenised with the model's own special tokens ([CLS]/[SEP], BOS, </s>).
An item without text is step 3 on the empty string: the bare special tokens for an encoder, the
prompt around nothing for a decoder. A sequence that would still have no token gets one (the BOS,
else EOS, else pad token) so that every item has a vector.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl


def item_texts(item_map: pl.DataFrame, fields: Sequence[str]) -> list[str]:
    """Text of items 1..N (sorted by item_idx): the present values of `fields`, in that order, joined by
    '. ' (lists by ', '); '' for an item with none of them."""
    items = item_map.sort("item_idx")
    texts = []
    for values in zip(*(items[field].to_list() for field in fields)):
        parts = [", ".join(v for v in value if v) if isinstance(value, list) else value for value in values if value]
        texts.append(". ".join(part.strip() for part in parts if part.strip()))
    return texts


def cut_texts(tokenizer: Any, texts: Sequence[str], max_tokens: int) -> list[str]:
    """Each text cut after its first `max_tokens` tokens (tokenised alone, without special tokens)."""
    if not texts:
        return []
    if getattr(tokenizer, "is_fast", False):
        offsets = tokenizer(list(texts), add_special_tokens=False, return_offsets_mapping=True,
                            verbose=False)["offset_mapping"]
        return [text if len(spans) <= max_tokens else text[:spans[max_tokens][0]].rstrip()
                for text, spans in zip(texts, offsets)]
    ids = tokenizer(list(texts), add_special_tokens=False, verbose=False)["input_ids"]
    return [text if len(row) <= max_tokens else tokenizer.decode(row[:max_tokens]).strip()
            for text, row in zip(texts, ids)]


def apply_prompt(prompt: str | None, text: str) -> str:
    return text if prompt is None else prompt.replace("{text}", text)


@dataclass(frozen=True)
class ItemInputs:
    """Token ids of every item's model input; `ids[i]` is item i + 1."""

    ids: list[list[int]]
    pad_id: int

    @classmethod
    def build(cls, tokenizer: Any, texts: Sequence[str], max_tokens: int, prompt: str | None) -> ItemInputs:
        full = [apply_prompt(prompt, text) for text in cut_texts(tokenizer, texts, max_tokens)]
        ids = [list(row) for row in tokenizer(full)["input_ids"]] if full else []
        fallback = next((i for i in (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id)
                         if i is not None), 0)
        return cls([row or [fallback] for row in ids], pad_id(tokenizer))

    @property
    def lengths(self) -> np.ndarray:
        return np.array([len(row) for row in self.ids], dtype=np.int64)

    def order(self) -> np.ndarray:
        """0-based item rows, longest input first (ties by item), so each batch pads little."""
        return np.argsort(-self.lengths, kind="stable")

    def batch(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Right-padded ids and attention mask [len(rows), longest] of `rows` (0-based)."""
        width = max(len(self.ids[r]) for r in rows)
        ids = np.full((len(rows), width), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(rows), width), dtype=np.int64)
        for i, r in enumerate(rows):
            ids[i, :len(self.ids[r])] = self.ids[r]
            mask[i, :len(self.ids[r])] = 1
        return ids, mask


def pad_id(tokenizer: Any) -> int:
    """Any id works under a zero mask; the tokenizer's pad token when it has one."""
    for token_id in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if token_id is not None:
            return int(token_id)
    return 0
