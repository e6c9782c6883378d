"""A word-level tokenizer built from the dataset's own text, for models built from a config
(the seq2seq and causal teachers, `embed_items` without a pretrained model).

Digits are split one by one, so an id word like `item_345` becomes `item`, `_`, `3`, `4`, `5`:
ids share sub-words as in POD (docs/methods.md §3.1) and the vocabulary stays small. The vocabulary
is counted here rather than by the `tokenizers` trainer, whose tie-breaking follows hash-map order
and so differs between processes: special tokens, every character (alone and as a `##`
continuation), then whole words by frequency, ties alphabetical. Unknown words fall back to
characters.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast


def train_tokenizer(texts: Iterable[str], vocab_size: int, pad: str, eos: str, unk: str,
                    bos: str | None = None) -> PreTrainedTokenizerFast:
    """A deterministic WordPiece tokenizer over `texts`; `pad` gets id 0.

    Like the pretrained tokenizers it stands in for, it appends `eos` to every text (T5), or,
    when `bos` is given, prepends `bos` instead (LLaMA).
    """
    normalizer = normalizers.NFKC()
    pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation(), pre_tokenizers.Digits(individual_digits=True)])
    counts: Counter[str] = Counter()
    for text in texts:
        counts.update(word for word, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text)))
    specials = [pad, eos, unk] + ([bos] if bos else [])
    chars = sorted({char for word in counts for char in word})
    words = sorted((w for w in counts if len(w) > 1), key=lambda w: (-counts[w], w))
    base = list(dict.fromkeys(specials + chars + [f"##{c}" for c in chars]))
    vocab = base + words[:max(0, vocab_size - len(base))]
    tok = Tokenizer(models.WordPiece(vocab={token: i for i, token in enumerate(vocab)}, unk_token=unk))
    tok.normalizer, tok.pre_tokenizer, tok.decoder = normalizer, pre_tokenizer, decoders.WordPiece()
    edge = bos or eos
    single = f"{bos} $A" if bos else f"$A {eos}"
    tok.post_processor = processors.TemplateProcessing(single=single, special_tokens=[(edge, tok.token_to_id(edge))])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=pad, eos_token=eos, unk_token=unk,
                                   bos_token=bos)
