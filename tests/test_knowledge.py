"""Item knowledge from a language model: the fusion teacher, `llm_init`, CED from LM vectors, combinations."""

from __future__ import annotations

import dataclasses
import shutil

import numpy as np
import polars as pl
import pytest
import torch

from distillrec.data.splitdata import SplitData
from distillrec.distill.llm_init import init_item_table, pca_projection
from distillrec.embed.store import read_item_embeddings, write_item_embeddings
from distillrec.errors import ParamsError
from distillrec.params import (DistillParams, FusionTeacherParams, Params, Seq2SeqTeacherParams, StudentParams, TrainParams,
                               parse_params, validate_teacher)
from distillrec.students import build_student
from distillrec.students.saved import load_student
from distillrec.teachers.registry import teacher_class
from distillrec.teachers.data import TeacherData
from distillrec.teachers.export import select_examples, write_export
from distillrec.distill.run import distill_student



def fusion_cfg(ids: bool = True, epochs: int = 6) -> FusionTeacherParams:
    return validate_teacher({
        "family": "fusion",
        "train": {"epochs": epochs, "patience": epochs, "batch_size": 16, "lr": 0.005, "device": "cpu"},
        "export": {"top_k": 10, "train_positions": 2, "batch_size": 64},
        "model": {"embedding": "lm", "ids": ids, "hidden": 32, "layers": 1, "heads": 2, "max_length": 20,
                   "adaptor_experts": 2, "adaptor_dropout": 0.0}})


@pytest.fixture(scope="module")
def cold(small_split, tmp_path_factory) -> tuple[TeacherData, int, int]:
    """The small split plus two items in no sequence: `cold` has the LM vector of the most popular item
    (its twin), `stranger` (the last item) one of its own. Vectors are one-hot: item text that names
    the item, the clearest case of knowledge an unseen item can carry."""
    base = TeacherData.load(small_split)
    split = base.split
    cold_idx = split.n_items + 1
    rows = pl.DataFrame([{"item_idx": cold_idx + k, "item_id": name, "title": name, "description": None,
                          "categories": None, "brand": None} for k, name in enumerate(["cold", "stranger"])],
                        schema=split.item_map.schema)
    split = dataclasses.replace(split, item_map=pl.concat([split.item_map, rows]))
    twin = int(split.training_counts().argmax())
    vectors = np.eye(split.n_items, dtype=np.float32)   # row i - 1 = item i: a text that names the item
    vectors[cold_idx - 1] = vectors[twin - 1]
    root = tmp_path_factory.mktemp("item_text")
    write_item_embeddings(root / "lm", vectors, {"name": "lm"})
    return TeacherData(split, base.titles + ["cold", "stranger"], base.explanations, root), cold_idx, twin


def test_fusion_teacher_trains_exports_and_reloads(cold, tmp_path):
    data, _, _ = cold
    cfg = fusion_cfg(epochs=2)
    teacher = teacher_class("fusion").create(cfg, data)
    state = teacher.fit(data, tmp_path / "ckpt", tmp_path / "live", "run")
    assert state.epoch == 2 and state.history[-1]["loss"] < state.history[0]["loss"]
    (tmp_path / "model").mkdir()
    teacher.save(tmp_path / "model")
    examples = select_examples(data.split.examples, 2)
    tables = teacher.export(data, examples, cfg.export).gathered()
    assert tables.topk.items.shape == (examples.height, 10) and tables.topk.items.min() >= 1
    assert (np.exp(tables.topk.scores).sum(axis=1) <= 1 + 1e-5).all()   # log-softmax over the catalogue
    assert tables.item_embeddings.shape == (data.n_items, 32) and tables.states.states.shape == (examples.height, 32)
    assert tables.info["family"] == "fusion" and tables.info["ids"] is True
    again = teacher_class("fusion").load(tmp_path / "model", cfg).export(data, examples, cfg.export).gathered()
    np.testing.assert_array_equal(again.topk.items, tables.topk.items)
    np.testing.assert_allclose(again.topk.scores, tables.topk.scores, rtol=1e-6)
    info = {"parameters": 1, "trainable_parameters": 1, "size_mb": 0.1, "train_seconds": 1.0,
            "export": {"ms_per_example": 1.0, "ms_per_user": 1.0, "threads": 1}}
    write_export(tmp_path / "t", tables, data.split.examples, data.n_items, info)


def test_fusion_table_is_id_plus_adapted_vector_and_text_only_has_no_ids(cold):
    data = cold[0]
    fused = teacher_class("fusion").create(fusion_cfg(), data).module.eval()
    items = fused.items
    with torch.no_grad():
        adapted = items.adaptor(items.vectors[1:])
        torch.testing.assert_close(fused.item_embeddings()[1:], adapted + items.ids.weight[1:])
    text_only = teacher_class("fusion").create(fusion_cfg(ids=False), data).module.eval()
    assert text_only.items.ids is None and not any("ids" in name for name, _ in text_only.named_parameters())
    table = text_only.item_embeddings()
    _, cold_idx, twin = cold
    assert torch.equal(table[cold_idx], table[twin])   # same text, same vector: nothing per id


def _mean_rank(model: torch.nn.Module, data: TeacherData, item: int, users: np.ndarray, positions: np.ndarray) -> float:
    model.eval()
    with torch.no_grad():
        history = torch.as_tensor(data.split.histories(users, positions, 20))
        scores = model.score(model.user_states(history))[:, 1:]
    return float((scores > scores[:, item - 1:item]).sum(1).float().mean() + 1)


def test_fusion_ranks_an_unseen_item_from_its_text(cold, tmp_path):
    """The cold item shares the most popular item's LM vector; where that item is the next one, the cold
    item is ranked far above chance and above an unseen item with an unrelated vector."""
    data, cold_idx, twin = cold
    teacher = teacher_class("fusion").create(fusion_cfg(epochs=10), data)
    teacher.fit(data, tmp_path / "ckpt", tmp_path / "live", "run")
    examples = data.split.examples.filter(pl.col("item_idx") == twin)
    users, positions = examples["user_idx"].to_numpy(), examples["position"].to_numpy()
    rank = _mean_rank(teacher.module, data, cold_idx, users, positions)
    stranger = _mean_rank(teacher.module, data, cold_idx + 1, users, positions)
    chance = (data.n_items + 1) / 2
    assert rank < 0.75 * chance and rank < 0.75 * stranger, (rank, stranger, chance)


def test_pca_projection_orders_components_and_fixes_signs():
    rng = np.random.default_rng(1)
    vectors = rng.normal(size=(50, 8)) * np.array([5, 4, 3, 2, 1, 0.5, 0.2, 0.1])
    projected = pca_projection(vectors, 4)
    assert projected.shape == (50, 4)
    variances = projected.var(0)
    assert np.all(np.diff(variances) < 0)   # decreasing variance: the top components first
    np.testing.assert_allclose(np.corrcoef(projected.T), np.eye(4), atol=1e-8)   # uncorrelated
    assert pca_projection(vectors, 10)[:, 8:].tolist() == [[0.0, 0.0]] * 50   # D < dims: zero columns


def test_llm_init_table_equals_the_scaled_projection(small_split):
    data = SplitData.load(small_split)
    rng = np.random.default_rng(2)
    vectors = np.concatenate([np.zeros((1, 24)), rng.normal(size=(data.n_items, 24))]).astype(np.float32)
    student = build_student(StudentParams(hidden=16, layers=1, heads=1, max_length=20), data.n_items)
    init_item_table(student, vectors, scale=0.05)
    expected = pca_projection(vectors[1:], 16)
    expected *= 0.05 / expected.std()
    np.testing.assert_allclose(student.items.weight[1:].detach().numpy(), expected, rtol=1e-5, atol=1e-7)
    assert student.items.weight[0].abs().sum() == 0   # padding untouched
    narrow = build_student(StudentParams(hidden=32, layers=1, heads=1, max_length=20), data.n_items)
    before = narrow.items.weight[1:, 24:].detach().clone()
    init_item_table(narrow, vectors, scale=0.05)
    torch.testing.assert_close(narrow.items.weight[1:, 24:].detach(), before)   # beyond D: the random init


def _params(**distill) -> Params:
    return Params(student=StudentParams(hidden=16, layers=1, heads=1, max_length=20),
                  train=TrainParams(epochs=2, patience=2, batch_size=32, seeds=[3]),
                  teachers={"t": Seq2SeqTeacherParams()}, embed={"lm": {}},
                  distill=DistillParams(teachers=["t"], **distill))


def test_llm_init_plus_dllm2rec_from_lm_vectors_serves_without_lm_or_teacher(small_split, tmp_path):
    from tests.test_distill_training import teacher

    data = SplitData.load(small_split)
    item_text = tmp_path / "item_text"
    write_item_embeddings(item_text / "lm", np.random.default_rng(3).normal(size=(data.n_items, 24)), {})
    teacher(tmp_path / "teachers" / "t", data, oracle=True)
    method = "llm_init+dllm2rec"
    params = _params(llm_init={"embedding": "lm", "combine": ["dllm2rec"]},
                     dllm2rec={"ed_table": "lm", "ed_weight": 0.3})
    summary = distill_student(params, small_split, tmp_path / "student", tmp_path / "ckpt", tmp_path / "live", method,
                            teachers_root=tmp_path / "teachers", item_text_root=item_text)
    assert summary["distill"]["method"] == "dllm2rec" and "llm_init" in summary["distill"]
    assert "ed_vectors" in summary["distill"]
    model, meta = load_student(tmp_path / "student")
    history = torch.as_tensor(data.histories(np.array([1, 2]), np.array([5, 6]), 20))
    with torch.no_grad():
        before = model.score(model.user_states(history))
    shutil.rmtree(item_text)
    shutil.rmtree(tmp_path / "teachers")
    served, _ = load_student(tmp_path / "student")   # no LM vectors, no teacher files
    with torch.no_grad():
        torch.testing.assert_close(served.score(served.user_states(history)), before)
    assert meta["item_adapter"] == [data.n_items + 1, 16]   # CED folded into fixed offsets


def test_llm_init_alone_needs_no_teacher_and_changes_the_start(small_split, tmp_path):
    data = SplitData.load(small_split)
    vectors = np.random.default_rng(4).normal(size=(data.n_items, 24))
    write_item_embeddings(tmp_path / "item_text" / "lm", vectors, {})
    params = Params(student=StudentParams(hidden=16, layers=1, heads=1, max_length=20),
                    train=TrainParams(epochs=1, patience=1, batch_size=32, seeds=[3]), embed={"lm": {}},
                    distill=DistillParams(methods=["llm_init"], llm_init={"embedding": "lm"}))
    summary = distill_student(params, small_split, tmp_path / "s", tmp_path / "ckpt", tmp_path / "live", "llm_init",
                            item_text_root=tmp_path / "item_text")
    assert summary["distill"]["llm_init"]["params"]["embedding"] == "lm"
    assert read_item_embeddings(tmp_path / "item_text" / "lm", data.n_items).shape == (data.n_items + 1, 24)


@pytest.mark.parametrize("raw, fragment", [
    ({"distill": {"methods": ["llm_init+dllm2rec"]}}, "'distill.methods.0': Input should be"),
    ({"distill": {"llm_init": {"combine": ["llm_init"]}}}, "'distill.llm_init.combine.0'"),
    ({"distill": {"llm_init": {"combine": ["logit_kd", "logit_kd"]}}}, "combine has duplicates"),
    ({"distill": {"methods": ["llm_init"], "llm_init": {"embedding": "nope"}}}, "not an entry of `embed`"),
    ({"distill": {"llm_init": {"combine": ["logit_kd"], "embedding": "lm"}}, "embed": {"lm": {}}},
     "need at least one teacher"),
    ({"teachers": {"f": {"family": "fusion"}}}, "'teachers.f.model': Field required"),
    ({"teachers": {"f": {"family": "fusion", "model": {}}}}, "'teachers.f.model.embedding': Field required"),
    ({"teachers": {"f": {"family": "fusion", "model": {"embedding": "x"}}}},
     "teachers.f.model.embedding is 'x'"),
    ({"distill": {"methods": ["dllm2rec"], "teachers": ["t"], "dllm2rec": {"ed_table": "x"}},
      "teachers": {"t": {"family": "id"}}}, "or `teacher`"),
    ({"teachers": {"f": {"family": "fusion", "model": {"embedding": "x", "hidden": 30, "heads": 4}}}},
     "divisible"),
])
def test_knowledge_params_are_checked(raw, fragment):
    with pytest.raises(ParamsError, match=fragment.replace("(", r"\(").replace("+", r"\+")):
        parse_params(raw)


def test_llm_init_needs_no_teacher_and_combines_with_every_method():
    params = parse_params({"embed": {"lm": {}}, "distill": {"methods": ["llm_init"], "llm_init": {"embedding": "lm"}}})
    assert params.distill.runs == ["llm_init"]
    combined = parse_params({"embed": {"lm": {}}, "teachers": {"t": {"family": "id"}}, "distill": {
        "methods": ["logit_kd"], "teachers": ["t"],
        "llm_init": {"embedding": "lm", "combine": ["dllm2rec", "prmkd", "feature", "logit_kd"]}}})
    assert combined.distill.runs == ["logit_kd", "llm_init+dllm2rec", "llm_init+prmkd", "llm_init+feature",
                                     "llm_init+logit_kd"]
