"""GRU4Rec (Hidasi et al. 2016), RecBole's variant: embedding dropout → stacked GRU → dense.

Left padding is harmless without packing or re-alignment because the GRU has no biases (as in
RecBole): with a zero state and a zero input (the padding row, also after dropout) both gates
are sigmoid(0) and the candidate is tanh(0) = 0, so the state stays exactly zero until the first
real item. Keep `bias=False`: with biases the state would drift through the pads (the padding
invariance test guards this). Padded positions output zeros. Any length works; max_length is
not used.
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
        x = self.dropout(self.embed_items(history))
        blocks = []
        for gru in self.layers:
            x, _ = gru(x)
            blocks.append(x)
        return Encoded(self.dense(x) * (history > 0).unsqueeze(-1), blocks)

    def item_embeddings(self) -> torch.Tensor:
        return self.items.weight
