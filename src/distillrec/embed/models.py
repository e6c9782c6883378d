"""The language model that reads item text: a pretrained encoder or decoder, a GGUF file, or a small
BERT built from a config (offline stand-in), each as tokenizer + a body returning last hidden states.

* encoder: `AutoModel` (BERT, sentence-transformers folders); for T5 (mT5, UMT5) its encoder only
  (`T5EncoderModel`); another encoder-decoder's `get_encoder()`.
* decoder: `AutoModelForCausalLM`'s base model (LLaMA's `model`): its last hidden layer (after the
  final norm), without computing the vocabulary logits.
* `.gguf`: a decoder de-quantised by transformers (the tokenizer comes from the same file).
* `package:<module>/<zip>`: weights shipped in an installed Python package, verified then unpacked
  (`packaged.py`); the offline default's all-MiniLM-L6-v2 comes this way.
* null: `BertModel` of `config` (seeded random init) with a WordPiece tokenizer trained on the
  catalogue's text (`tokenizer.py`): items that share words get similar vectors.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from distillrec.embed import packaged
from distillrec.errors import DataError
from distillrec.hf import from_pretrained
from distillrec.params import EmbedParams

log = logging.getLogger(__name__)

BERT_SPECIALS = {"pad": "[PAD]", "eos": "[SEP]", "unk": "[UNK]", "bos": "[CLS]"}


def hidden_size(body: nn.Module) -> int:
    config = body.config
    return int(getattr(config, "hidden_size", None) or config.d_model)


def gguf_file(model: str | None) -> Path | None:
    path = Path(model).expanduser() if model else None
    return path if path is not None and path.suffix == ".gguf" else None


@contextlib.contextmanager
def local_source(cfg: EmbedParams) -> Iterator[tuple[EmbedParams, dict[str, str] | None]]:
    """`(cfg, None)`, or for a `package:` model a copy naming the verified, unpacked folder and the
    package's identity (the temporary folder's own would change every run)."""
    if not packaged.is_packaged(cfg.model):
        yield cfg, None
        return
    with packaged.unpacked(cfg.model, cfg.sha256) as (folder, identity):
        yield cfg.model_copy(update={"model": str(folder), "sha256": None}), identity


def _source(cfg: EmbedParams) -> tuple[str, dict[str, Any]]:
    """The name `from_pretrained` gets and its extra kwargs (gguf_file for a .gguf)."""
    gguf = gguf_file(cfg.model)
    if gguf is None:
        return str(cfg.model), {}
    if not gguf.is_file():
        raise DataError(f"embed model {cfg.model!r}: no such GGUF file")
    return str(gguf.parent), {"gguf_file": gguf.name}


def load_tokenizer(cfg: EmbedParams, texts: list[str]) -> Any:
    """The model's tokenizer, or (model null) a WordPiece tokenizer trained on the texts and the prompt."""
    if cfg.model is None:
        from distillrec.tokenizer import train_tokenizer

        corpus = texts + ([cfg.prompt.replace("{text}", " ")] if cfg.prompt else [])
        return train_tokenizer(corpus, cfg.config.vocab_size, **BERT_SPECIALS)
    from transformers import AutoTokenizer

    name, kwargs = _source(cfg)
    return from_pretrained(AutoTokenizer, name, what="embed model", **kwargs)


def load_body(cfg: EmbedParams, tokenizer: Any, max_length: int, dtype: torch.dtype) -> tuple[nn.Module, dict]:
    """The module in eval mode, on CPU in `dtype`, and its identity (what the chunk fingerprint keys on)."""
    if cfg.model is None:
        body = _config_bert(cfg, tokenizer, max_length).to(dtype)
        identity: dict[str, Any] = {"built": "bert", "vocab": len(tokenizer)}
    else:
        name, kwargs = _source(cfg)
        body = _decoder(cfg, name, kwargs, dtype) if cfg.kind == "decoder" else _encoder(name, kwargs, dtype)
        identity = model_identity(cfg.model, body)
    return body.eval().requires_grad_(False), identity


def _config_bert(cfg: EmbedParams, tokenizer: Any, max_length: int) -> nn.Module:
    from transformers import BertConfig, BertModel

    c = cfg.config
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=c.hidden, num_hidden_layers=c.layers,
                        num_attention_heads=c.heads, intermediate_size=c.intermediate,
                        max_position_embeddings=max(512, max_length), pad_token_id=tokenizer.pad_token_id)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(c.seed)
        return BertModel(config, add_pooling_layer=False)


def _encoder(name: str, kwargs: dict[str, Any], dtype: torch.dtype) -> nn.Module:
    import transformers

    config = from_pretrained(transformers.AutoConfig, name, what="embed model", **kwargs)
    t5 = {"t5": "T5EncoderModel", "mt5": "MT5EncoderModel", "umt5": "UMT5EncoderModel"}.get(config.model_type)
    auto_cls = getattr(transformers, t5) if t5 else transformers.AutoModel
    model = from_pretrained(auto_cls, name, what="embed model", dtype=dtype, **kwargs)
    if t5 is None and getattr(model.config, "is_encoder_decoder", False):
        model = model.get_encoder()
    return model


def _decoder(cfg: EmbedParams, name: str, kwargs: dict[str, Any], dtype: torch.dtype) -> nn.Module:
    from transformers import AutoModelForCausalLM

    gguf = "gguf_file" in kwargs   # de-quantised weights load in fp32, then cast
    lm = from_pretrained(AutoModelForCausalLM, name, what="embed model",
                         dtype=torch.float32 if gguf else dtype, **kwargs)
    body = lm.base_model
    if body is lm:
        raise DataError(f"embed model {cfg.model!r}: {type(lm).__name__} has no base model to read the last "
                        f"hidden layer from")
    return body.to(dtype)


def model_identity(model: str, body: nn.Module) -> dict[str, Any]:
    """A local file or folder: each file's name, size and modification time; a hub id: its commit."""
    path = Path(model).expanduser()
    if path.exists():
        files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
        root = path.parent if path.is_file() else path
        return {"files": [[str(p.relative_to(root)), p.stat().st_size, p.stat().st_mtime_ns] for p in files]}
    return {"hub": model, "commit": getattr(body.config, "_commit_hash", None)}
