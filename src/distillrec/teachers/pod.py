"""POD inputs (docs/methods.md §3.1): id words, templates, whole-word ids and padded batches.

Users and items are written as words `user_<user_idx>` / `item_<item_idx>`; our indices are
assigned by sorted original id, so an id word does not leak the sequence order as P5's
sequential ids do (2.1). Training fills a randomly chosen template (one is the bare input);
inference uses only the bare input and leaves the instruction to the continuous prompt.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

from distillrec.errors import DataError

PREFIXES = ("user", "item")
WHOLE_WORDS = 512   # rows of the whole-word embedding (POD: n_positions of T5)
IGNORE = -100       # label value the loss skips (POD put pads in the loss, 2.9 item 2)

SEQUENTIAL_TEMPLATES = (
    "{user} {history}",
    "Given the following interaction history of {user}: {history}, predict the next item the user will "
    "interact with.",
    "{user} has interacted with {history}. What is the next item to recommend to the user?",
    "Here is the history of {user}: {history}. Recommend the next item for this user.",
    "According to the items {user} has interacted with: {history}, can you recommend another item?",
    "By analysing the history of {user}: {history}, which item is the user expected to choose next?",
)
EXPLANATION_TEMPLATES = (
    "{user} {item}",
    "Generate an explanation for {user} about this product: {item}",
    "Help {user} generate an explanation about this product: {item}",
    "What would {user} say about {item}?",
    "Explain why {user} chose {item}.",
    "Write a short review by {user} of {item}.",
)
TEMPLATES = {"sequential": SEQUENTIAL_TEMPLATES, "explanation": EXPLANATION_TEMPLATES}


def user_word(user: int) -> str:
    return f"user_{user}"


def item_word(item: int) -> str:
    return f"item_{item}"


def sequential_text(template: str, user: int, history: Sequence[int]) -> str:
    """`history` may be left-padded with 0 (SplitData.histories); pads are dropped."""
    return template.format(user=user_word(user), history=" ".join(item_word(i) for i in history if i))


def explanation_text(template: str, user: int, item: int) -> str:
    return template.format(user=user_word(user), item=item_word(item))


def template_texts() -> list[str]:
    """Every template filled with sample ids: what a tokenizer trained on the data must also cover."""
    return ([sequential_text(t, 1, [1, 2]) for t in SEQUENTIAL_TEMPLATES]
            + [explanation_text(t, 1, 1) for t in EXPLANATION_TEMPLATES])


# Token classes for whole-word ids. A token is cleaned of its word-start marker (SentencePiece
# `▁`, byte-level `Ġ`) and WordPiece's `##`; digits and `_` count only inside a word (no marker).
OTHER, PREFIX, UNDERSCORE, UNDERSCORE_DIGITS, PREFIX_UNDERSCORE, PREFIX_UNDERSCORE_DIGITS, DIGITS = range(7)
_PREFIX = "|".join(PREFIXES)
_CLASSES = (  # (pattern of the cleaned token, class, may carry a word-start marker)
    (re.compile(rf"(?:{_PREFIX})"), PREFIX, True),
    (re.compile(r"_"), UNDERSCORE, False),
    (re.compile(r"_\d+"), UNDERSCORE_DIGITS, False),
    (re.compile(rf"(?:{_PREFIX})_"), PREFIX_UNDERSCORE, True),
    (re.compile(rf"(?:{_PREFIX})_\d+"), PREFIX_UNDERSCORE_DIGITS, True),
    (re.compile(r"\d+"), DIGITS, False),
)


def token_class(token: str) -> int:
    marked = token.startswith(("▁", "Ġ"))
    text = token.lstrip("▁Ġ").removeprefix("##")
    for pattern, code, may_start_word in _CLASSES:
        if pattern.fullmatch(text) and (may_start_word or not marked):
            return code
    return OTHER


def whole_word_from_classes(codes: torch.Tensor) -> torch.Tensor:
    """[B, L] token classes → whole-word ids: the j-th id word's tokens get j (1, 2, ...), others 0.

    An id word is a prefix (`user`/`item`), `_`, and the digit tokens that follow, however the
    tokenizer cut it: `item _ 3 4 5` (ours), `▁item _ 34 5` (T5), `▁item _34`, `▁item_ 3`, `item_3`.
    """
    def ahead(x: torch.Tensor, n: int) -> torch.Tensor:
        return torch.nn.functional.pad(x[:, n:], (0, n), value=OTHER)

    c, c1, c2 = codes, ahead(codes, 1), ahead(codes, 2)
    from_prefix = (c == PREFIX) & (((c1 == UNDERSCORE) & (c2 == DIGITS)) | (c1 == UNDERSCORE_DIGITS))
    start = from_prefix | ((c == PREFIX_UNDERSCORE) & (c1 == DIGITS)) | (c == PREFIX_UNDERSCORE_DIGITS)
    head = start | torch.nn.functional.pad(from_prefix[:, :-1], (1, 0), value=False)  # + the `_` after a prefix
    # a digit token belongs to the id word of the last non-digit token before it, if that is part of one
    position = torch.arange(c.shape[1], device=c.device).expand_as(c)
    last_other = torch.where(c != DIGITS, position, -1).cummax(dim=1).values
    tail = (c == DIGITS) & (last_other >= 0) & head.gather(1, last_other.clamp(min=0))
    return (start.long().cumsum(dim=1) * (head | tail)).clamp(max=WHOLE_WORDS - 1)


def whole_word_ids(tokens: Sequence[str]) -> list[int]:
    """Whole-word ids of one tokenised text (POD `compute_whole_word_id`, for any tokenizer)."""
    codes = torch.tensor([[token_class(t) for t in tokens]], dtype=torch.long)
    return whole_word_from_classes(codes)[0].tolist()


@dataclass
class PromptInputs:
    """A padded encoder batch: token ids, mask and whole-word ids, [B, L] each."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    whole_word_ids: torch.Tensor

    def to(self, device: torch.device) -> PromptInputs:
        return PromptInputs(self.input_ids.to(device), self.attention_mask.to(device), self.whole_word_ids.to(device))


def pad_right(rows: Sequence[Sequence[int]], value: int) -> torch.Tensor:
    width = max(len(r) for r in rows)
    return torch.tensor([list(r) + [value] * (width - len(r)) for r in rows], dtype=torch.long)


class Codec:
    """Tokenises POD inputs and targets; whole-word ids come from a per-vocabulary class table."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase):
        self.tokenizer = tokenizer
        tokenizer.padding_side = "right"
        self.classes = torch.tensor([token_class(t) for t in tokenizer.convert_ids_to_tokens(range(len(tokenizer)))],
                                    dtype=torch.long)
        self.eos = tokenizer.eos_token_id
        self.pad = tokenizer.pad_token_id
        if self.eos is None or self.pad is None:
            raise DataError("the teacher tokenizer needs a pad and an eos token")
        sample = f"{user_word(12)} {item_word(345)}"
        tokens = tokenizer.tokenize(sample)
        if set(whole_word_ids(tokens)) != {1, 2}:
            raise DataError(f"the tokenizer splits {sample!r} into {tokens}, where the id words are not "
                            f"recognised (expected `user`/`item`, `_`, digits); for a tokenizer trained on the "
                            f"data, raise config.vocab_size")

    def inputs(self, texts: Sequence[str]) -> PromptInputs:
        batch = self.tokenizer(list(texts), padding=True, return_tensors="pt")
        ids = batch["input_ids"]
        return PromptInputs(ids, batch["attention_mask"], whole_word_from_classes(self.classes[ids]))

    def target_ids(self, texts: Sequence[str], max_tokens: int | None = None) -> list[list[int]]:
        """Token ids of each text cut to `max_tokens`, then eos."""
        rows = self.tokenizer(list(texts), add_special_tokens=False)["input_ids"]
        return [r[:max_tokens] + [self.eos] for r in rows]

    def labels(self, texts: Sequence[str], max_tokens: int | None = None) -> torch.Tensor:
        """Padded decoder targets; pads are IGNORE so they stay out of the loss."""
        return pad_right(self.target_ids(texts, max_tokens), IGNORE)

    def decode(self, ids: Sequence[Sequence[int]] | torch.Tensor) -> list[str]:
        return self.tokenizer.batch_decode(ids, skip_special_tokens=True)


@dataclass
class TaskExamples:
    """The examples of one task: (user, position, item) keys, and the reference text (explanation)."""

    task: str
    users: np.ndarray
    positions: np.ndarray
    items: np.ndarray
    texts: list[str] | None = None

    def __len__(self) -> int:
        return len(self.users)

    def subset(self, index: np.ndarray) -> TaskExamples:
        return TaskExamples(self.task, self.users[index], self.positions[index], self.items[index],
                            None if self.texts is None else [self.texts[i] for i in index])


def input_texts(examples: TaskExamples, index: np.ndarray, histories: np.ndarray | None,
                templates: Sequence[int] | None) -> list[str]:
    """Encoder texts for `examples[index]`: template `templates[j]` for row j, the bare one if None.

    `histories` ([len(index), L], left-padded) is needed by the sequential task only.
    """
    chosen = TEMPLATES[examples.task]
    which = [0] * len(index) if templates is None else templates
    users = examples.users[index].tolist()
    if examples.task == "sequential":
        return [sequential_text(chosen[t], u, h) for t, u, h in zip(which, users, histories.tolist())]
    return [explanation_text(chosen[t], u, i) for t, u, i in zip(which, users, examples.items[index].tolist())]


def target_texts(examples: TaskExamples, index: np.ndarray) -> list[str]:
    if examples.task == "sequential":
        return [item_word(i) for i in examples.items[index].tolist()]
    return [examples.texts[i] for i in index.tolist()]
