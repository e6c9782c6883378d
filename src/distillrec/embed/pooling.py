"""One vector per text from the last hidden states: masked mean, or the last real token."""

from __future__ import annotations

import torch


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Attention-masked mean over tokens, float32 (an empty text gives 0)."""
    mask = mask.unsqueeze(-1).float()
    return (hidden.float() * mask).sum(1) / mask.sum(1).clamp(min=1.0)


def last_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The hidden state of each row's last real token (the last 1 of the mask), float32.

    Right or left padding alike: the position is found from the mask, never assumed to be -1.
    """
    positions = torch.arange(mask.shape[1], device=mask.device)
    last = (mask.long() * (positions + 1)).argmax(1)
    return hidden[torch.arange(len(hidden), device=hidden.device), last].float()


def pool(kind: str, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return mean_pool(hidden, mask) if kind == "mean" else last_pool(hidden, mask)
