"""One-pass prefix scoring: every target of a window from a single causal forward pass.

BIGRec generates a title per example (tens of decoder passes each, docs/methods.md §3.2). Here a
user's items are laid out once as `head + piece(t_s) + ... + piece(t_e)` (`bigrec.PromptPieces`);
under causal attention the state at the end of piece j is exactly the last state of the prompt
whose history stops at item j. So one pass scores every target of the window. A target's context
is fixed by `bigrec.context_start` (windows of max_history items, half overlapping), and
`prefix_states` recomputes the same states one prompt at a time as the reference.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from distillrec.data.splitdata import SplitData
from distillrec.teachers.bigrec import PromptPieces, context_start, pad

# (ids [B, T], attention mask [B, T]) -> last-layer hidden states [B, T, H]
Encoder = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class WindowPlan:
    """Windows to run (user, first item, end item exclusive) and where each example's state lies."""

    users: np.ndarray      # [W]
    starts: np.ndarray     # [W] index of the window's first item in the user's sequence
    ends: np.ndarray       # [W] one past its last item = the largest target position it serves
    window: np.ndarray     # [E] the window of each example
    offset: np.ndarray     # [E] the item piece (0-based within the window) whose end state scores it

    @classmethod
    def of(cls, users: np.ndarray, positions: np.ndarray, max_history: int) -> WindowPlan:
        """The fewest windows that serve the given (user, position) examples (vectorised)."""
        users, positions = np.asarray(users, np.int64), np.asarray(positions, np.int64)
        starts = context_start(positions, max_history)
        keys = users * (int(positions.max(initial=0)) + 1) + starts
        unique, first, window = np.unique(keys, return_index=True, return_inverse=True)
        ends = np.zeros(len(unique), np.int64)
        np.maximum.at(ends, window, positions)
        return cls(users[first], starts[first], ends, window, positions - 1 - starts)


def window_states(encode: Encoder, pieces: PromptPieces, split: SplitData, plan: WindowPlan, batch_size: int,
                  device: torch.device) -> tuple[torch.Tensor, int]:
    """States [E, H] of the plan's examples (float32, CPU) and the number of sequences forwarded."""
    ends_of: list[list[int]] = []
    chunks: list[torch.Tensor] = []
    for lo in tqdm(range(0, len(plan.users), batch_size), desc="scoring windows", leave=False, disable=None):
        seqs = []
        for user, start, end in zip(plan.users[lo:lo + batch_size], plan.starts[lo:lo + batch_size],
                                    plan.ends[lo:lo + batch_size]):
            base = split.offsets[user - 1]
            ids, ends = pieces.history(split.items[base + start:base + end].tolist())
            seqs.append(ids)
            ends_of.append(ends)
        ids, mask = pad(seqs, pieces.pad_id)
        hidden = encode(ids.to(device), mask.to(device))
        rows = np.repeat(np.arange(len(seqs)), [len(e) for e in ends_of[lo:]])
        cols = np.concatenate(ends_of[lo:])
        chunks.append(hidden[torch.as_tensor(rows), torch.as_tensor(cols)].float().cpu())
    flat = torch.cat(chunks)
    first = np.concatenate([[0], np.cumsum([len(e) for e in ends_of])[:-1]])
    return flat[torch.as_tensor(first[plan.window] + plan.offset)], len(plan.users)


def prefix_states(encode: Encoder, pieces: PromptPieces, split: SplitData, users: np.ndarray,
                  positions: np.ndarray, max_history: int, device: torch.device) -> tuple[torch.Tensor, int]:
    """Reference for `window_states`: each example's own prompt (same context), last state; one pass each."""
    users, positions = np.asarray(users, np.int64), np.asarray(positions, np.int64)
    starts = split.flat(users, context_start(positions, max_history))
    out = []
    for begin, end in zip(starts, split.flat(users, positions)):
        ids, _ = pieces.history(split.items[begin:end].tolist())
        hidden = encode(torch.as_tensor([ids], device=device), torch.ones((1, len(ids)), dtype=torch.long,
                                                                          device=device))
        out.append(hidden[0, -1].float().cpu())
    return torch.stack(out), len(out)
