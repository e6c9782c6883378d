"""The UniSRec-like `text` teacher on a tiny BERT: training, the item-text cache, cold items, save/load."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
from transformers import BertConfig, BertModel

from distillrec.errors import DataError, ParamsError
from distillrec.params import TextTeacherParams, parse_params, validate_teacher
from distillrec.teachers.registry import teacher_class
from distillrec.teachers.data import TeacherData
from distillrec.teachers.export import TeacherExport, select_examples, write_export
from distillrec.teachers.itemtext import ItemTokens, TextEncoder, item_texts, mean_pool
from distillrec.teachers.text import TextTeacher, with_text_rows
from distillrec.tokenizer import train_tokenizer
from distillrec.train.loop import epoch_generator
from distillrec.train.objectives import Batch, cross_entropy, objective_of

MINILM = Path(__file__).resolve().parents[2] / "shared" / "models" / "all-MiniLM-L6-v2"
COLD = {"item_id": "cold", "title": "Solar camping lantern", "description": "A folding lantern that charges in the sun",
        "categories": ["Outdoor", "lantern"], "brand": None}


def config(encoder: Path, finetune: str = "lora", **sections) -> TextTeacherParams:
    return validate_teacher({
        "family": "text",
        "model": {"base_model": str(encoder), "finetune": finetune, "hidden": 32, "layers": 1, "heads": 2,
                  "max_length": 20, "max_text_tokens": 24, "grad_items": 32, "encode_batch_size": 32},
        "train": {"epochs": 2, "patience": 2, "batch_size": 16, "lr": 0.005, "device": "cpu"},
        "export": {"top_k": 10, "train_positions": 2, "batch_size": 64}} | sections)


@pytest.fixture(scope="module")
def data(small_split) -> TeacherData:
    """The small split plus one item (`COLD`) that occurs in no sequence."""
    base = TeacherData.load(small_split)
    split = base.split
    row = pl.DataFrame([{"item_idx": split.n_items + 1, **COLD}], schema=split.item_map.schema)
    cold = dataclasses.replace(split, item_map=pl.concat([split.item_map, row]))
    return TeacherData(cold, base.titles + [COLD["title"]], base.explanations)


@pytest.fixture(scope="module")
def encoder(data, tmp_path_factory) -> Path:
    """A tiny BERT and a WordPiece tokenizer of the catalogue's words, saved like a hub model."""
    folder = tmp_path_factory.mktemp("tiny-bert")
    tokenizer = train_tokenizer(item_texts(data.split.item_map, ["title", "categories", "brand", "description"]),
                                400, pad="[PAD]", eos="[SEP]", unk="[UNK]", bos="[CLS]")
    tokenizer.save_pretrained(folder)
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=64)).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def trained(data, encoder, tmp_path_factory) -> tuple[TextTeacher, Path, object, int]:
    """A LoRA text teacher fitted two epochs and saved; also the encoder passes the fit took."""
    root = tmp_path_factory.mktemp("text")
    teacher = teacher_class("text").create(config(encoder), data)
    state = teacher.fit(data, root / "ckpt", root / "live", "run")
    passes = teacher.encoder.passes
    teacher.save(root / "model")
    return teacher, root / "model", state, passes


def test_item_text_joins_present_fields_in_order():
    items = pl.DataFrame({"item_idx": [2, 1], "title": ["B", " A "], "description": [None, "about a"],
                          "categories": [None, ["x", "y"]], "brand": ["nb", None]})
    assert item_texts(items, ["title", "categories", "brand"]) == ["A. x, y", "B. nb"]
    assert item_texts(items, ["description", "title"]) == ["about a. A", "B"]
    with pytest.raises(DataError, match="no item has text in description"):
        item_texts(items.with_columns(pl.lit(None, pl.String).alias("description")), ["description"])


def test_lora_teacher_trains_and_exports(trained, data, tmp_path):
    teacher, folder, state, passes = trained
    assert state.epoch == 2 and state.history[-1]["loss"] < state.history[0]["loss"]
    assert passes == state.epoch + 1   # the first epoch's start, then one refresh per epoch (its validation)
    encoder_params = dict(teacher.encoder.encoder.named_parameters())
    assert {n for n, p in encoder_params.items() if p.requires_grad} == {n for n in encoder_params if "lora_" in n}
    assert (folder / "adapter").is_dir() and not (folder / "backbone").exists()
    examples = select_examples(data.split.examples, 2)
    tables = teacher.export(data, examples, teacher.cfg.export).gathered()
    assert tables.topk.items.shape == (examples.height, 10) and tables.topk.items.min() >= 1
    assert (np.exp(tables.topk.scores).sum(axis=1) <= 1 + 1e-5).all()   # log-softmax over the catalogue
    assert tables.item_embeddings.shape == (data.n_items, 32) and tables.states.states.shape == (examples.height, 32)
    info = {"parameters": 1, "trainable_parameters": 1, "size_mb": 0.1, "train_seconds": 1.0,
            "export": {"ms_per_example": 1.0, "ms_per_user": 1.0, "threads": 1}}
    write_export(tmp_path / "t", tables, data.split.examples, data.n_items, info)
    meta = TeacherExport(tmp_path / "t").info
    assert meta["family"] == "text" and meta["finetune"] == "lora" and meta["catalogue_passes"] == passes + 1


def _batch(teacher: TextTeacher, data: TeacherData) -> Batch:
    windows, users, ends, _ = data.split.training_windows(teacher.cfg.model.max_length)
    inputs, targets = teacher.module.training_pair(torch.as_tensor(windows[:8]))
    positions = torch.as_tensor(ends[:8, None]) - targets.shape[1] + torch.arange(targets.shape[1])
    return Batch(inputs, targets, torch.as_tensor(users[:8]), positions, epoch_generator(0, 1))


def test_an_encoder_update_invalidates_the_cache(data, encoder):
    teacher = TextTeacher.create(config(encoder), data)
    text, model = teacher.encoder, teacher.module
    before = text.catalogue().clone()
    assert text.passes == 1 and not text.stale
    model.eval()
    model.item_embeddings()
    assert text.passes == 1   # unchanged weights: served from the cache
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.01)
    loss, _ = with_text_rows(objective_of(cross_entropy))(model, _batch(teacher, data))
    loss.backward()
    lora = [p for n, p in text.encoder.named_parameters() if "lora_B" in n]
    assert any(p.grad.abs().sum() > 0 for p in lora)   # the batch's items were re-encoded with gradient
    optimizer.step()
    assert text.stale and text.passes == 1
    model.eval()
    model.item_embeddings()
    assert text.passes == 2 and not text.stale
    assert not torch.allclose(text.catalogue(), before)


def test_frozen_encoder_is_encoded_once(data, encoder, tmp_path):
    cfg = config(encoder, "frozen")
    teacher = TextTeacher.create(cfg, data)
    weights = {n: p.detach().clone() for n, p in teacher.encoder.encoder.named_parameters()}
    teacher.fit(data, tmp_path / "ckpt", tmp_path / "live", "run")
    examples = select_examples(data.split.examples, 1).head(40)
    tables = teacher.export(data, examples, cfg.export).gathered()
    assert teacher.encoder.passes == 1
    assert all(torch.equal(p, weights[n]) and not p.requires_grad
               for n, p in teacher.encoder.encoder.named_parameters())
    teacher.save(tmp_path / "model")
    assert not (tmp_path / "model" / "adapter").exists() and not (tmp_path / "model" / "backbone").exists()
    again = TextTeacher.load(tmp_path / "model", cfg).export(data, examples, cfg.export).gathered()
    assert np.array_equal(tables.topk.items, again.topk.items)
    assert np.allclose(tables.topk.scores, again.topk.scores, atol=1e-5)


def test_cold_item_is_ranked_from_its_text(trained, data):
    teacher, _, _, _ = trained
    cold = data.n_items
    assert not (data.split.items == cold).any()   # in no history and no target
    model = teacher.module.eval()
    tokens = teacher.tokenizer([item_texts(data.split.item_map, teacher.cfg.model.fields)[-1]], truncation=True,
                               max_length=teacher.cfg.model.max_text_tokens, return_tensors="pt")
    with torch.no_grad():
        text = mean_pool(teacher.encoder.encoder(**tokens).last_hidden_state, tokens["attention_mask"])[0]
        table = model.item_embeddings()
        assert torch.allclose(teacher.encoder.catalogue()[cold], text, atol=1e-5)
        assert torch.allclose(table[cold], model.items.adaptor(text[None])[0], atol=1e-5)
        users, positions, _ = data.split.targets("test")
        history = torch.as_tensor(data.split.histories(users, positions, teacher.cfg.model.max_length))
        scores = model.score(model.user_states(history))[:, cold]
    assert torch.isfinite(scores).all() and scores.std() > 0
    assert (table[1:cold] - table[cold]).norm(dim=1).min() > 1e-3   # its own vector, not a shared fallback
    assert teacher.module.unseen.nonzero().flatten().tolist() == [cold]   # never trained as a negative
    model.train()
    with torch.no_grad():
        logits = model.score(model.user_states(history[:4]))
    model.eval()
    assert (logits[:, cold] == torch.finfo(logits.dtype).min).all() and (logits[:, 1:cold] > -1e30).all()


def test_saved_teacher_reloads_to_identical_export(trained, data):
    teacher, folder, _, _ = trained
    cfg = teacher.cfg
    examples = select_examples(data.split.examples, 1).head(50)
    before = teacher.export(data, examples, cfg.export).gathered()
    after = teacher_class("text").load(folder, cfg).export(data, examples, cfg.export).gathered()
    assert np.array_equal(before.topk.items, after.topk.items)
    assert np.allclose(before.topk.scores, after.topk.scores, atol=1e-5)
    assert np.allclose(before.item_embeddings, after.item_embeddings, atol=1e-5)
    assert np.allclose(before.states.states, after.states.states, atol=1e-5)


@pytest.mark.parametrize(("teacher", "fragment"), [
    ({"family": "text"}, "'teachers.t.model': Field required"),
    ({"family": "text", "model": {}}, "'teachers.t.model.base_model': Field required"),
    ({"family": "seq2seq", "model": {"finetune": "frozen"}}, "'teachers.t.model.finetune': Input should be 'lora' or 'full'"),
    ({"family": "text", "model": {"base_model": "m", "bogus": 1}}, "unknown key 'teachers.t.model.bogus'; "
                                                                   "allowed keys here: hidden, layers, heads"),
    ({"family": "text", "model": {"base_model": "m", "fields": ["plot"]}}, "'teachers.t.model.fields.0'"),
    ({"family": "text", "model": {"base_model": "m", "fields": ["title", "title"]}}, "fields has duplicates"),
    ({"family": "text", "model": {"base_model": "m", "hidden": 30, "heads": 4}}, "must be divisible by heads"),
    ({"family": "text", "model": {"base_model": "m", "grad_items": 0}}, "'teachers.t.model.grad_items'"),
    ({"family": "text", "model": {"base_model": "m", "finetune": "partial"}}, "'teachers.t.model.finetune'"),
    ({"family": "text", "model": {"base_model": "m", "max_length": 10}, "train": {"window_stride": 20}},
     "train.window_stride (20) must be <= model.max_length (10)"),
    ({"family": "text", "model": {"base_model": "m"}, "text": {}}, "unknown key 'teachers.t.text'; "
                                                                  "allowed keys here: family, model, train, export"),
])
def test_text_params_are_strict(teacher, fragment):
    with pytest.raises(ParamsError) as info:
        parse_params({"teachers": {"t": teacher}})
    assert fragment in str(info.value)


def test_missing_base_model_folder_is_a_clear_error(data, tmp_path):
    with pytest.raises(DataError, match="no such folder"):
        TextTeacher.create(config(tmp_path / "absent"), data)


@pytest.mark.skipif(not MINILM.is_dir(), reason=f"{MINILM} is absent (the shared pretrained text encoder)")
def test_minilm_puts_related_titles_closer():
    from transformers import AutoModel, AutoTokenizer

    titles = ["Toy Story", "Toy Story 2", "Schindler's List", "Star Wars", "Return of the Jedi",
              "Sense and Sensibility"]
    tokens = ItemTokens.build(AutoTokenizer.from_pretrained(MINILM), titles, 32)
    vectors = TextEncoder(AutoModel.from_pretrained(MINILM), tokens, 4, 384).catalogue()[1:]
    similarity = torch.nn.functional.normalize(vectors, dim=1) @ torch.nn.functional.normalize(vectors, dim=1).T
    assert similarity[0, 1] > similarity[0, [2, 3, 4, 5]].max()   # Toy Story ~ Toy Story 2
    assert similarity[3, 4] > similarity[3, [0, 1, 2, 5]].max()   # Star Wars ~ Return of the Jedi


def test_stages_train_export_and_evaluate(small_split, encoder, tmp_path):
    from distillrec.evaluate.evaluation import Evaluator
    from distillrec.params import EvaluateParams, Params
    from distillrec.teachers.run import export_teacher, train_teacher

    params = Params(teachers={"txt": config(encoder, train={"epochs": 6, "patience": 6, "batch_size": 16,
                                                             "lr": 0.005, "device": "cpu"})})
    summary = train_teacher(params, "txt", small_split, tmp_path / "model", tmp_path / "ckpt", tmp_path / "live")
    assert summary["family"] == "text" and summary["trainable_parameters"] < summary["parameters"]
    meta = export_teacher(params, "txt", small_split, tmp_path / "model", tmp_path / "export")
    assert meta["item_embedding_dim"] == 32 and meta["counts"]["states"] > 0
    evaluator = Evaluator(small_split, EvaluateParams(ks=[10], latency_repeats=2))
    evaluator.add_popularity()
    evaluator.add_teacher("teacher-txt", tmp_path / "export")
    table = evaluator.table   # a random tiny BERT, 6 epochs: it must still use the order, not just popularity
    assert table["teacher-txt"]["valid"]["ndcg@10"] > 1.2 * table["popularity"]["valid"]["ndcg@10"]


def test_encoder_lr_puts_the_encoder_in_its_own_group(data, encoder, tmp_path):
    from distillrec.teachers.idmodel import train_params
    from distillrec.teachers.text import TextTrainer, sasrec_params

    cfg = config(encoder)
    teacher = TextTeacher.create(cfg, data)
    trainer = TextTrainer(teacher.module, data.split, sasrec_params(cfg.model), train_params(cfg),
                          objective_of(cross_entropy), tmp_path, tmp_path, "run", 0, encoder_lr=1e-4)
    rest, encoder_group = trainer.optimizer.param_groups
    lora = {id(p) for n, p in teacher.encoder.named_parameters() if "lora_" in n}
    assert {id(p) for p in encoder_group["params"]} == lora and encoder_group["lr"] == 1e-4
    assert rest["lr"] == cfg.train.lr and not lora & {id(p) for p in rest["params"]}
