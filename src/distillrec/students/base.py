"""The one interface every student implements; trainers and distillation losses use only this.

Conventions: item ids are 1..n_items, 0 is padding. Histories are LEFT-padded `[B, L]` long
tensors in time order, so column -1 always holds the most recent item; positions that hold
padding never influence any output at a real position.
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


class Student(nn.Module, ABC):
    """A sequential recommender: encode histories, score states against the whole catalogue."""

    causal: bool = True

    def __init__(self, n_items: int, hidden: int):
        super().__init__()
        self.n_items = n_items
        self.hidden = hidden

    @abstractmethod
    def encode(self, history: torch.Tensor) -> Encoded:
        """Hidden states per position for a left-padded history batch."""

    @abstractmethod
    def item_embeddings(self) -> torch.Tensor:
        """Output item table [n_items + 1, d] (row 0 = padding) that `score` multiplies with."""

    def score(self, states: torch.Tensor) -> torch.Tensor:
        """Logits over all items [..., n_items + 1]; column 0 (padding) is the dtype's minimum."""
        logits = states @ self.item_embeddings().T
        logits[..., 0] = torch.finfo(logits.dtype).min  # in place: the matmul's backward needs no output
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
