"""BIGRec prompts (docs/methods.md §3.2) built from separately tokenised pieces.

A prompt is `prefix + head + piece(t1) + ... + piece(tn) + marker`, each part tokenised on its own and
the ids concatenated. So the ids of a shorter history are an exact prefix of the ids of a longer one,
and one causal forward pass over a whole history yields, at the end of every item piece, the state
that a prompt ending with that item would give (the basis of `scoring`).

Differences from BIGRec, on purpose: items are listed as `"title",` (a trailing comma after the last
item too, so pieces are identical wherever they appear); titles are cut to `max_title_tokens`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

INSTRUCTION = ("Below is an instruction that describes a task, paired with an input that provides further "
               "context. Write a response that appropriately completes the request.\n\n"
               "### Instruction:\nGiven a list of items the user has interacted with before, please recommend "
               "a new item that the user likes to the user.\n\n"
               "### Input:\nThe user has interacted with the following items before:")
RESPONSE = "\n\n### Response:\n"
OPEN, CLOSE = ' "', '",'


def tokenizer_texts(titles: Sequence[str]) -> list[str]:
    """What a tokenizer trained for a config-built teacher must cover: titles and prompt words."""
    return [INSTRUCTION, RESPONSE, OPEN, CLOSE, *titles]


def strip_quotes(text: str) -> str:
    """A generated response without its surrounding quotes and blanks (BIGRec's post-processing)."""
    return text.strip().strip('"').strip()


@dataclass(frozen=True)
class PromptPieces:
    """Token ids of every prompt part; `titles[i]` / `pieces[i]` / `targets[i]` belong to item i (0 = pad)."""

    prefix: list[int]          # the tokenizer's leading special tokens (LLaMA: bos)
    head: list[int]            # prefix + instruction + input lead-in
    marker: list[int]          # response marker
    titles: list[list[int]]    # title ids, cut to max_title_tokens
    pieces: list[list[int]]    # ` "title",`
    targets: list[list[int]]   # `"title"` + eos: the response the LM learns
    pad_id: int
    eos_id: int

    @classmethod
    def build(cls, tokenizer: PreTrainedTokenizerBase, titles: Sequence[str], max_title_tokens: int
              ) -> PromptPieces:
        def ids(text: str) -> list[int]:
            return tokenizer(text, add_special_tokens=False)["input_ids"]

        bos = tokenizer.bos_token_id
        prefix = [bos] if bos is not None and tokenizer("", add_special_tokens=True)["input_ids"][:1] == [bos] else []
        cut = [ids(t)[:max_title_tokens] if i else [] for i, t in enumerate(titles)]
        quote_open, quote_close, quote = ids(OPEN), ids(CLOSE), ids('"')
        eos = tokenizer.eos_token_id
        return cls(prefix=prefix, head=prefix + ids(INSTRUCTION), marker=ids(RESPONSE), titles=cut,
                   pieces=[quote_open + t + quote_close for t in cut],
                   targets=[quote + t + quote + [eos] for t in cut],
                   pad_id=tokenizer.pad_token_id, eos_id=eos)

    def history(self, items: Sequence[int]) -> tuple[list[int], list[int]]:
        """Ids of head + item pieces, and the index of the last token of every piece."""
        ids, ends = list(self.head), []
        for item in items:
            ids += self.pieces[item]
            ends.append(len(ids) - 1)
        return ids, ends

    def prompt(self, items: Sequence[int]) -> list[int]:
        """The full BIGRec prompt for a history (what generation starts from)."""
        return self.history(items)[0] + self.marker

    def max_length(self, max_history: int, new_tokens: int) -> int:
        """Longest sequence these pieces make: a full prompt plus a response or `new_tokens` generated ones."""
        longest = max(len(p) for p in self.pieces)
        response = max(new_tokens, max(len(t) for t in self.targets))
        return len(self.head) + max_history * longest + len(self.marker) + response


def context_start(positions: np.ndarray, window: int) -> np.ndarray:
    """First context item of the target at each position, for one-pass `scoring`.

    Windows of `window` items start every `stride = ceil(window / 2)` items; a target takes the
    latest window start s (a multiple of stride) with p - s <= window. So its context is
    sequence[s:p]: all of its history when p <= window, else between window - stride + 1 and
    window items. The context depends only on (p, window): deterministic, and identical whether
    the state comes from a shared window pass or from the target's own prefix.
    """
    stride = -(-window // 2)
    positions = np.asarray(positions, np.int64)
    return np.maximum(0, -(-(positions - window) // stride)) * stride


def pad(sequences: Sequence[Sequence[int]], pad_id: int, left: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """[B, T] ids and attention mask, right-padded (or left-padded for generation)."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        span = slice(width - len(seq), width) if left else slice(0, len(seq))
        ids[row, span] = torch.as_tensor(seq, dtype=torch.long)
        mask[row, span] = 1
    return ids, mask
