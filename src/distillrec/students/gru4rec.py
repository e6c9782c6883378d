"""GRU4Rec (Hidasi et al. 2016), RecBole's variant: embedding dropout → stacked GRU → dense.

A GRU run over left padding would drift through the pads (its biases act even on zero inputs),
so each history is rotated to be right-aligned first: the GRU then starts at the first real item
from a zero state, and the trailing pads only follow the real items, where nothing reads them.
Outputs are rotated back to the left-padded layout, with zeros at padded positions. Any length
works; max_length is not used.
"""

from __future__ import annotations

import torch
from torch import nn

from distillrec.params import StudentParams
from distillrec.students.base import Encoded, Student


class GRU4Rec(Student):
    """One single-layer GRU per layer (no dropout between them, as RecBole) so `blocks` holds
    every layer's output at no extra cost."""

    def __init__(self, n_items: int, params: StudentParams):
        super().__init__(n_items, params.hidden)
        self.items = nn.Embedding(n_items + 1, params.hidden, padding_idx=0)
        nn.init.normal_(self.items.weight[1:], std=0.02)
        self.dropout = nn.Dropout(params.dropout)
        self.layers = nn.ModuleList(
            nn.GRU(params.hidden, params.hidden, batch_first=True, bias=False) for _ in range(params.layers)
        )
        self.dense = nn.Linear(params.hidden, params.hidden)

    def encode(self, history: torch.Tensor) -> Encoded:
        length = history.shape[1]
        pads = (history == 0).sum(dim=1, keepdim=True)
        steps = torch.arange(length, device=history.device)
        to_right = (steps + pads) % length
        to_left = ((steps - pads) % length).unsqueeze(-1).expand(-1, -1, self.hidden)
        keep = (history > 0).unsqueeze(-1)

        x = self.dropout(self.items(history.gather(1, to_right)))
        blocks = []
        for gru in self.layers:
            x, _ = gru(x)
            blocks.append(x.gather(1, to_left) * keep)
        return Encoded(self.dense(blocks[-1]) * keep, blocks)

    def item_embeddings(self) -> torch.Tensor:
        return self.items.weight
