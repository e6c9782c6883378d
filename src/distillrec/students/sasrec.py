"""SASRec (Kang & McAuley 2018): causal self-attention over the item history.

Also home of `TransformerStudent`, the encoder BERT4Rec reuses with a bidirectional mask.

Choices (all deliberate, DLLM2Rec's SASRec differs; docs/methods.md §4.1):
- Positions are counted from the RIGHT: the most recent item always gets the last row of the
  position table, whatever the amount of left padding, so padding never shifts positions.
- Pre-LayerNorm blocks plus a final LayerNorm (as the original SASRec, stable without warm-up);
  point-wise FFN of width 4·hidden with GELU, as RecBole's SASRec (inner_size 256 at d=64);
  dropout on attention weights and on each sub-layer's output, none inside the FFN (as RecBole;
  dropout is a large share of a CPU step).
- Keys at padded positions are masked out; every position may also attend to itself, so the
  attention rows of padded queries are never empty (no NaN). Padded positions output zeros.
- Embeddings and linear layers are initialised N(0, 0.02) as RecBole does; the padding row is 0.
  Scores use the tied item table.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from distillrec.params import StudentParams
from distillrec.students.base import Encoded, Student


class Block(nn.Module):
    """Pre-LN transformer block: multi-head self-attention then point-wise FFN, both residual."""

    def __init__(self, hidden: int, heads: int, dropout: float):
        super().__init__()
        self.heads, self.p = heads, dropout
        self.attention_norm = nn.LayerNorm(hidden)
        self.qkv = nn.Linear(hidden, 3 * hidden)
        self.out = nn.Linear(hidden, hidden)
        self.ffn_norm = nn.LayerNorm(hidden)
        self.ffn = nn.Sequential(nn.Linear(hidden, 4 * hidden), nn.GELU(), nn.Linear(4 * hidden, hidden))
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        """x [B, L, d]; allowed [B, 1, L, L] bool, True where a query may attend to a key."""
        batch, length, hidden = x.shape
        q, k, v = (
            self.qkv(self.attention_norm(x))
            .view(batch, length, 3, self.heads, hidden // self.heads)
            .permute(2, 0, 3, 1, 4)
        )
        attended = F.scaled_dot_product_attention(
            q, k, v, attn_mask=allowed, dropout_p=self.p if self.training else 0.0
        )
        x = x + self.dropout(self.out(attended.transpose(1, 2).reshape(batch, length, hidden)))
        return x + self.dropout(self.ffn(self.ffn_norm(x)))


class TransformerStudent(Student):
    """Item + right-aligned position embeddings → `layers` pre-LN blocks → final LayerNorm.

    Reads histories of length ≤ max_length (the trainer cuts sequences of max_length + 1 into
    inputs/targets of length max_length). `extra_tokens` rows follow the catalogue in the item
    table (BERT4Rec's mask token) and are never scored.
    """

    extra_tokens = 0

    def __init__(self, n_items: int, params: StudentParams):
        super().__init__(n_items, params.hidden)
        self.max_length = params.max_length
        self.items = nn.Embedding(n_items + 1 + self.extra_tokens, params.hidden, padding_idx=0)
        self.positions = nn.Embedding(params.max_length, params.hidden)
        self.dropout = nn.Dropout(params.dropout)
        self.blocks = nn.ModuleList(
            Block(params.hidden, params.heads, params.dropout) for _ in range(params.layers)
        )
        self.norm = nn.LayerNorm(params.hidden)
        self.apply(_init_recbole)

    def encode(self, history: torch.Tensor) -> Encoded:
        length = history.shape[1]
        if length > self.max_length:
            raise ValueError(f"history length {length} exceeds max_length {self.max_length}")
        real = history > 0
        x = self.dropout(self.embed_items(history) + self.positions.weight[-length:])
        allowed = real[:, None, None, :] | torch.eye(length, dtype=torch.bool, device=history.device)
        if self.causal:
            allowed = allowed & torch.ones_like(allowed[0, 0]).tril()
        keep = real.unsqueeze(-1)
        blocks = []
        for block in self.blocks:
            x = block(x, allowed)
            blocks.append(x * keep)
        return Encoded(self.norm(x) * keep, blocks)

    def item_embeddings(self) -> torch.Tensor:
        return self.items.weight[: self.n_items + 1]


class SASRec(TransformerStudent):
    """Causal transformer: the state at t predicts item t + 1."""

    causal = True


def _init_recbole(module: nn.Module) -> None:
    """N(0, 0.02) weights and zero biases for linear/embedding layers; padding row stays 0."""
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, std=0.02)
    if isinstance(module, nn.Linear):
        nn.init.zeros_(module.bias)
    if isinstance(module, nn.Embedding) and module.padding_idx is not None:
        nn.init.zeros_(module.weight[module.padding_idx])
