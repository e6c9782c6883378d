"""A word-piece tokenizer trained on the dataset's own text, for teachers built from a config.

Digits are split one by one, so an id word like `item_345` becomes `item`, `_`, `3`, `4`, `5`:
ids share sub-words as in POD (ALGORITHMS.md 2.2) and the vocabulary stays small.
"""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast


def train_tokenizer(texts: Iterable[str], vocab_size: int, pad: str, eos: str, unk: str,
                    bos: str | None = None) -> PreTrainedTokenizerFast:
    """A deterministic WordPiece tokenizer over `texts` with the given special tokens.

    Like the pretrained tokenizers it stands in for, it appends `eos` to every text (T5), or,
    when `bos` is given, prepends `bos` instead (LLaMA).
    """
    specials = [pad, eos, unk] + ([bos] if bos else [])
    tok = Tokenizer(models.WordPiece(unk_token=unk))
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation(), pre_tokenizers.Digits(individual_digits=True)])
    tok.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False)
    tok.train_from_iterator(texts, trainer)
    edge = bos or eos
    single = f"{bos} $A" if bos else f"$A {eos}"
    tok.post_processor = processors.TemplateProcessing(single=single, special_tokens=[(edge, tok.token_to_id(edge))])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=pad, eos_token=eos, unk_token=unk,
                                   bos_token=bos)
