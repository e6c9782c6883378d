"""The one interface every student implements; trainers and distillation losses use only this.

Conventions: item ids are 1..n_items, 0 is padding. Histories are LEFT-padded `[B, L]` long
tensors in time order, so column -1 always holds the most recent item; positions that hold
padding never influence any output at a real position.

Input item vectors come from `embed_items`, the one hook embedding distillation needs: an
optional `item_adapter` module adds a per-item offset to the input side only (DLLM2Rec's CED,
docs/methods.md §4.1), at training and at inference alike; the scored item table is untouched.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class Encoded:
    """Hidden states of a history batch.

    states: [B, L, d] final hidden state at every position (position t summarises the history up
            to and including item t for causal models).
    blocks: per-block [B, L, d] outputs, first block first (the last equals `states` before any
            final projection/norm); used by feature distillation and multi-block supervision.
    """

    states: torch.Tensor
    blocks: list[torch.Tensor]


class ItemOffsets(nn.Module):
    """A fixed per-item input offset [rows, d] (row 0 = padding): a trained adapter, folded.

    A saved student stores its adapter in this form, so serving needs neither the teacher's
    item table nor its projector. Ids outside 1..rows-1 (padding, BERT4Rec's mask) get 0.
    """

    def __init__(self, table: torch.Tensor):
        super().__init__()
        self.register_buffer("table", table)

    def forward(self, history: torch.Tensor) -> torch.Tensor:
        known = (history > 0) & (history < len(self.table))
        return self.table[history.clamp(0, len(self.table) - 1)] * known.unsqueeze(-1)

    def offsets(self) -> torch.Tensor:
        return self.table


def trim_padding(history: torch.Tensor, *aligned: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Drop the leading columns that are padding in every row of `history` (and in `aligned` tensors of
    the same [B, L] shape, e.g. targets): outputs at real positions do not depend on padding, so this
    only saves compute on catalogues of short histories, where most of a window is padding."""
    used = history != 0
    for other in aligned:
        used = used | (other != 0)
    used = used.any(0)
    start = int(used.to(torch.int8).argmax()) if bool(used.any()) else history.shape[1] - 1
    return (history[:, start:], *(t[:, start:] for t in aligned))


class Student(nn.Module, ABC):
    """A sequential recommender: encode histories, score states against the whole catalogue.

    Subclasses hold their input item table in `self.items` and read it through `embed_items`.
    """

    causal: bool = True
    items: nn.Embedding

    def __init__(self, n_items: int, hidden: int):
        super().__init__()
        self.n_items = n_items
        self.hidden = hidden
        # history [B, L] -> [B, L, d] added to the input item vectors; 0 at padding. The module
        # must have `offsets()` -> [rows, d] so that `saved.save_student` can fold it.
        self.item_adapter: nn.Module | None = None
        # [N + 1] bool: items the training objective must not score (a text teacher's items that no
        # training sequence holds); None = every item. Eval-mode scores always cover every item.
        self.unseen: torch.Tensor | None = None

    def embed_items(self, history: torch.Tensor) -> torch.Tensor:
        """Input item vectors [B, L, d]: the item table plus the adapter's offset, if any."""
        vectors = self.items(history)
        if self.item_adapter is not None:
            vectors = vectors + self.item_adapter(history)
        return vectors

    @abstractmethod
    def encode(self, history: torch.Tensor) -> Encoded:
        """Hidden states per position for a left-padded history batch."""

    @abstractmethod
    def item_embeddings(self) -> torch.Tensor:
        """Output item table [n_items + 1, d] (row 0 = padding) that `score` multiplies with."""

    def score(self, states: torch.Tensor, start: int = 0, stop: int | None = None) -> torch.Tensor:
        """Logits [..., stop - start] of items start..stop-1 (default: all, [..., n_items + 1]); column 0
        (padding) is the dtype's minimum. Ranking scores a large catalogue a slice at a time."""
        logits = states @ self.item_embeddings()[start:stop].T
        if start == 0:
            logits[..., 0] = torch.finfo(logits.dtype).min  # in place: the matmul's backward needs no output
        if self.training and self.unseen is not None:
            logits = logits.masked_fill(self.unseen[start:stop], torch.finfo(logits.dtype).min)
        return logits

    def training_pair(
        self, sequence: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(inputs, targets) for one all-position training step on left-padded `sequence`.

        Causal models predict item t+1 from the prefix ending at t; target 0 = ignored position.
        Masked models (BERT4Rec) override this with masked-item prediction.
        """
        inputs, targets = sequence[:, :-1], sequence[:, 1:]
        return inputs, targets.masked_fill(inputs == 0, 0)

    def user_states(self, history: torch.Tensor) -> torch.Tensor:
        """[B, d] state that predicts the item after each history (used for ranking)."""
        return self.encode(history).states[:, -1]
