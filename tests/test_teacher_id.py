"""The `id` teacher: a large ID model trained with the students' trainer, exported in the common schema."""

import numpy as np
import pytest

from distillrec.evaluate.evaluation import Evaluator
from distillrec.params import EvaluateParams, IdTeacherParams, validate_teacher
from distillrec.teachers.registry import teacher_class
from distillrec.teachers.data import TeacherData
from distillrec.teachers.export import TeacherExport, select_examples, write_export


def config(**id_params) -> IdTeacherParams:
    return validate_teacher({
        "family": "id", "train": {"epochs": 15, "patience": 15, "batch_size": 16, "lr": 0.003, "device": "cpu"},
        "export": {"top_k": 10, "train_positions": 2, "batch_size": 64},
        "model": {"model": "sasrec", "hidden": 32, "layers": 2, "heads": 2, "max_length": 20} | id_params})


@pytest.fixture(scope="module")
def trained(small_split, tmp_path_factory):
    root = tmp_path_factory.mktemp("id")
    data = TeacherData.load(small_split)
    teacher = teacher_class("id").create(config(), data)
    state = teacher.fit(data, root / "ckpt", root / "live", "run")
    teacher.save(root)
    return teacher, data, root, state


def test_id_teacher_trains_exports_and_beats_popularity(trained, small_split, tmp_path):
    teacher, data, root, state = trained
    assert state.best_epoch >= 1 and state.history[-1]["loss"] < state.history[0]["loss"]
    examples = select_examples(data.split.examples, 2)
    tables = teacher.export(data, examples, config().export).gathered()
    assert tables.topk.items.shape == (examples.height, 10)
    assert (np.exp(tables.topk.scores).sum(axis=1) <= 1 + 1e-5).all()  # log-softmax over the catalogue
    assert tables.item_embeddings.shape == (data.n_items, 32) and tables.states.states.shape == (examples.height, 32)
    info = {"parameters": 1, "trainable_parameters": 1, "size_mb": 0.1, "train_seconds": 1.0,
            "export": {"ms_per_example": 1.0, "ms_per_user": 1.0, "threads": 1}}
    write_export(tmp_path / "t", tables, data.split.examples, data.n_items, info)
    evaluator = Evaluator(small_split, EvaluateParams(ks=[10], latency_repeats=2))
    evaluator.add_popularity()
    evaluator.add_teacher("teacher-id", tmp_path / "t")
    table = evaluator.table
    assert table["teacher-id"]["valid"]["ndcg@10"] > 1.5 * table["popularity"]["valid"]["ndcg@10"]
    assert TeacherExport(tmp_path / "t").info["family"] == "id"


def test_saved_id_teacher_reloads_to_identical_export(trained):
    teacher, data, root, _ = trained
    examples = select_examples(data.split.examples, 1).head(50)
    before = teacher.export(data, examples, config().export).gathered()
    after = teacher_class("id").load(root, config()).export(data, examples, config().export).gathered()
    assert np.array_equal(before.topk.items, after.topk.items)
    assert np.allclose(before.topk.scores, after.topk.scores)
