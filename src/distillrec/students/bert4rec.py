"""BERT4Rec (Sun et al. 2019): bidirectional transformer trained by masked-item prediction.

Same encoder as SASRec without the causal mask. The mask token is item id n_items + 1 (the item
table has n_items + 2 rows); `item_embeddings` stops at n_items so the mask is never scored.
"""

from __future__ import annotations

import torch

from distillrec.params import StudentParams
from distillrec.students.sasrec import TransformerStudent


class BERT4Rec(TransformerStudent):
    """Predicts masked items from both sides; ranks by appending a mask after the history."""

    causal = False
    extra_tokens = 1

    def __init__(self, n_items: int, params: StudentParams):
        super().__init__(n_items, params)
        self.mask_token = n_items + 1
        self.mask_prob = params.bert4rec.mask_prob

    def training_pair(
        self, sequence: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(masked inputs, targets): each real item is masked with probability mask_prob.

        The input is the whole sequence, not shifted; only its last max_length columns are kept
        (the oldest one drops when the trainer passes max_length + 1, as for causal models).
        A non-empty sequence where nothing was drawn gets its last item masked, so every row
        trains and the last position (the one used for ranking) is practised. Targets are the
        original items at masked positions, 0 elsewhere.
        """
        sequence = sequence[:, -self.max_length :]
        real = sequence > 0
        draws = torch.rand(sequence.shape, generator=generator, device=sequence.device)
        masked = real & (draws < self.mask_prob)
        masked[:, -1] |= real[:, -1] & ~masked.any(dim=1)
        return sequence.masked_fill(masked, self.mask_token), sequence.masked_fill(~masked, 0)

    def user_states(self, history: torch.Tensor) -> torch.Tensor:
        """State of a mask token appended after the history (oldest column dropped if too long)."""
        mask = torch.full_like(history[:, :1], self.mask_token)
        return self.encode(torch.cat([history, mask], dim=1)[:, -self.max_length :]).states[:, -1]
