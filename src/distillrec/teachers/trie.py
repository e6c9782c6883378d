"""Beam search constrained to the catalogue by a prefix trie over tokenised id words.

POD decodes freely and maps unparsable outputs to random items (docs/methods.md §3.1); here
every hypothesis follows the trie, so each finished one is an existing item and none repeats.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from distillrec.errors import DataError


@dataclass
class ItemTrie:
    """Trie in CSR form: the children of node n are slots start[n] .. start[n] + count[n] - 1.

    A slot holds the token that leads to a child and the child's node; `item[n]` is the item whose
    token sequence (ending in eos) ends at node n, 0 for inner nodes. Node 0 is the root.
    """

    start: torch.Tensor
    count: torch.Tensor
    child_token: torch.Tensor
    child_node: torch.Tensor
    item: torch.Tensor
    depth: int

    @classmethod
    def build(cls, sequences: Sequence[Sequence[int]], items: Sequence[int]) -> ItemTrie:
        """`sequences[j]` are the token ids of item `items[j]`; each ends in the same eos token."""
        children: list[dict[int, int]] = [{}]
        item_of: dict[int, int] = {}
        for seq, item in zip(sequences, items):
            node = 0
            for token in seq:
                if node in item_of:
                    raise DataError(f"the tokens of item {item} extend those of item {item_of[node]}")
                nxt = children[node].get(token)
                if nxt is None:
                    nxt = children[node][token] = len(children)
                    children.append({})
                node = nxt
            if children[node] or node in item_of:
                raise DataError(f"item {item} has the same tokens as item {item_of.get(node, '?')} ({list(seq)})")
            item_of[node] = item
        count = torch.tensor([len(c) for c in children], dtype=torch.long)
        return cls(start=torch.cumsum(count, 0) - count, count=count,
                   child_token=torch.tensor([t for c in children for t in c], dtype=torch.long),
                   child_node=torch.tensor([n for c in children for n in c.values()], dtype=torch.long),
                   item=torch.zeros(len(children), dtype=torch.long).index_put_(
                       (torch.tensor(list(item_of), dtype=torch.long),),
                       torch.tensor(list(item_of.values()), dtype=torch.long)),
                   depth=max(len(s) for s in sequences))

    def to(self, device: torch.device) -> ItemTrie:
        return ItemTrie(self.start.to(device), self.count.to(device), self.child_token.to(device),
                        self.child_node.to(device), self.item.to(device), self.depth)


Step = Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]


def beam_search(step: Step, trie: ItemTrie, batch: int, beams: int, k: int, start_token: int
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k items [batch, k] and their log-probabilities (sum over tokens, best first).

    `step(tokens, order)` feeds the last token of each of the batch * beams hypotheses (rows
    example-major) and returns next-token log-probabilities [batch * beams, V]; `order` says which
    old row each row continues (to reorder a decoder cache first). The first call, with `order`
    None, has every row at the start token, so it may compute one row per example. Finished items
    go to a pool of k; the search stops when no live beam can beat the pool's k-th score, which is
    exact because log-probabilities only fall as a hypothesis grows.
    """
    device = trie.start.device
    rows = batch * beams
    scores = torch.full((batch, beams), float("-inf"), device=device)
    scores[:, 0] = 0.0  # one live hypothesis per example at the root; the others are empty
    nodes = torch.zeros(rows, dtype=torch.long, device=device)
    tokens = torch.full((rows,), start_token, dtype=torch.long, device=device)
    pool_scores = torch.full((batch, k), float("-inf"), device=device)
    pool_items = torch.zeros((batch, k), dtype=torch.long, device=device)
    base = torch.arange(batch, device=device)[:, None] * beams
    order = None
    for _ in range(trie.depth):
        logp = step(tokens, order)
        count = trie.count[nodes]
        width = int(count.max())
        if width == 0:
            break
        offset = torch.arange(width, device=device)
        valid = offset[None, :] < count[:, None]
        slot = torch.where(valid, trie.start[nodes][:, None] + offset, 0)
        child_token, child = trie.child_token[slot], trie.child_node[slot]
        cand = (scores.reshape(rows, 1) + logp.gather(1, child_token)).masked_fill(~valid, float("-inf"))
        done = trie.item[child] > 0
        pool_scores, pick = torch.cat([pool_scores, cand.masked_fill(~done, float("-inf")).view(batch, -1)], 1).topk(k)
        pool_items = torch.cat([pool_items, trie.item[child].view(batch, -1)], 1).gather(1, pick)
        scores, pick = cand.masked_fill(done, float("-inf")).view(batch, -1).topk(beams)
        order = (base + pick // width).view(-1)
        nodes = child.view(batch, -1).gather(1, pick).view(-1)
        tokens = child_token.view(batch, -1).gather(1, pick).view(-1)
        if not (scores.max(dim=1).values > pool_scores[:, -1]).any():
            break
    if not torch.isfinite(pool_scores).all():
        raise DataError(f"beam search with {beams} beams finished fewer than {k} items; raise export.beams")
    return pool_items, pool_scores
