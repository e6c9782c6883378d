"""Caser (Tang & Wang 2018), user-independent: convolutions over the last `window` items.

We score histories, not users, so the paper's user embedding is left out: the state is
ReLU(W · dropout([vertical ‖ horizontal]) + b), scored against the tied item table.

States are computed at every position from that position's trailing window, so the model is
causal. Windows reaching before the history see zero rows, exactly like padding items (their
embedding row is 0): a position's output depends only on the real items in its window and
where they sit, so extra left padding beyond the window never changes anything. Any length
works; max_length is not used.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from distillrec.params import StudentParams
from distillrec.students.base import Encoded, Student


class Caser(Student):
    """Horizontal filters of heights 1..window (max-pooled over time) and vertical filters."""

    def __init__(self, n_items: int, params: StudentParams):
        super().__init__(n_items, params.hidden)
        caser = params.caser
        self.window = caser.window
        self.items = nn.Embedding(n_items + 1, params.hidden, padding_idx=0)
        nn.init.normal_(self.items.weight[1:], std=0.02)
        self.horizontal = nn.ModuleList(
            nn.Conv1d(params.hidden, caser.horizontal_filters, height)
            for height in range(1, caser.window + 1)
        )
        self.vertical = nn.Linear(caser.window, caser.vertical_filters)
        self.dropout = nn.Dropout(params.dropout)
        features = caser.vertical_filters * params.hidden + caser.horizontal_filters * caser.window
        self.fc = nn.Linear(features, params.hidden)

    def encode(self, history: torch.Tensor) -> Encoded:
        # [B, L + window - 1, d]: every position's window is the `window` rows ending there.
        padded = F.pad(self.embed_items(history), (0, 0, self.window - 1, 0))

        # A height-h filter has window - h + 1 placements inside each window; max over them.
        sequence = padded.transpose(1, 2)
        horizontal = [
            F.max_pool1d(F.relu(conv(sequence)), self.window - height + 1, stride=1)
            for height, conv in enumerate(self.horizontal, start=1)
        ]
        horizontal = torch.cat(horizontal, dim=1).transpose(1, 2)

        # Vertical filters: weighted sums of the window's rows, one d-vector per filter.
        windows = padded.unfold(1, self.window, 1)  # [B, L, d, window]
        vertical = self.vertical(windows).flatten(2)

        features = self.dropout(torch.cat([vertical, horizontal], dim=-1))
        states = F.relu(self.fc(features)) * (history > 0).unsqueeze(-1)
        return Encoded(states, [states])

    def item_embeddings(self) -> torch.Tensor:
        return self.items.weight
