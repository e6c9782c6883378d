"""Distillation losses: hand-computed weights and terms, key lookup, and every loss on every student."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
import torch.nn.functional as F

from distillrec.data.splitdata import SplitData
from distillrec.distill import METHODS, build_distill_objective, trainable_parameters
from distillrec.distill.dllm2rec import (ItemAdapter, student_consistency, importance_weights, position_weights,
                                         ranking_distillation, sample_negatives)
from distillrec.distill.feature import feature_distance
from distillrec.distill.logit_kd import catalogue_scores, softened_kl
from distillrec.distill.lookup import TeacherLookup
from distillrec.distill.prmkd import teacher_consistency
from distillrec.distill.prmkd import kl, topk_scores
from distillrec.errors import DataError, ParamsError
from distillrec.evaluate.listed import listed_metrics
from distillrec.params import Params, StudentParams
from distillrec.students import STUDENTS, build_student
from distillrec.students.saved import load_student, save_student
from distillrec.teachers.export import ExportTables, States, TeacherExport, TopK, select_examples, write_export
from distillrec.train.objectives import Batch, cross_entropy, objective_of, sampled_bce
from distillrec.distill.run import teacher_gate

INFO = {"parameters": 1, "trainable_parameters": 1, "size_mb": 0.0, "train_seconds": 0.0}
MAX_LENGTH = 8
DIM = 12  # teacher width, != the student's 16: projections are exercised



@pytest.fixture(scope="module")
def data(small_split) -> SplitData:
    return SplitData.load(small_split)


def teacher_lists(data: SplitData, examples: pl.DataFrame, k: int, right: bool = True) -> TopK:
    """Lists led by the true target (right) or never holding it (wrong); scores 0, -0.5, -1, ..."""
    targets = examples["item_idx"].to_numpy().astype(np.int64)
    shift = np.arange(k)[None, :] + (0 if right else 1)
    items = (targets[:, None] + shift - 1) % data.n_items + 1
    scores = np.repeat(-0.5 * np.arange(k, dtype=np.float32)[None, :], len(targets), 0)
    return TopK(examples["user_idx"].to_numpy().copy(), examples["position"].to_numpy().copy(), items, scores)


def write_teacher(folder, data: SplitData, *, k: int = 5, last: int | str = "all", right: bool = True,
                  embeddings: bool = True, states: bool = True, seed: int = 0) -> TeacherExport:
    rng = np.random.default_rng(seed)
    examples = select_examples(data.examples, last)
    topk = teacher_lists(data, examples, k, right)
    emb = rng.normal(size=(data.n_items, DIM)).astype(np.float32) if embeddings else None
    st = States(topk.users, topk.positions, rng.normal(size=(len(topk.users), DIM)).astype(np.float32)) if states else None
    write_export(folder, ExportTables(topk, emb, st), data.examples, data.n_items, INFO)
    return TeacherExport(folder)


@pytest.fixture(scope="module")
def teachers(tmp_path_factory, data) -> dict[str, TeacherExport]:
    root = tmp_path_factory.mktemp("teachers")
    return {
        "full": write_teacher(root / "full", data),
        "last": write_teacher(root / "last", data, last=1, embeddings=False, states=False),
        "good2": write_teacher(root / "good2", data, embeddings=False, states=False, seed=1),
        "wrong": write_teacher(root / "wrong", data, right=False, embeddings=False, states=False),
    }


def make_student(name: str, n_items: int):
    torch.manual_seed(0)
    params = StudentParams(model=name, hidden=16, layers=2, heads=2, dropout=0.1, max_length=MAX_LENGTH,
                           caser=dict(window=3))
    return build_student(params, n_items)


def trainer_batch(model, data: SplitData, n: int = 12, seed: int = 0) -> Batch:
    """A batch built exactly as Trainer.train_epoch builds one."""
    windows, users, ends, first = (torch.as_tensor(a) for a in data.training_windows(MAX_LENGTH))
    generator = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(windows), generator=generator)[:n]
    inputs, targets = model.training_pair(windows[idx], generator)
    column = torch.arange(targets.shape[1])
    if model.causal:
        targets = targets.masked_fill(column < first[idx, None], 0)
    return Batch(inputs, targets, users[idx], ends[idx, None] + column - targets.shape[1], generator)


# --- lookup -------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["sasrec", "bert4rec"])
def test_lookup_finds_the_row_of_each_batch_key(data, teachers, name):
    lookup = TeacherLookup(teachers["full"], data)
    model = make_student(name, data.n_items)
    batch = trainer_batch(model, data, n=40)
    keep = batch.targets > 0
    example = keep & (batch.positions >= 1)  # BERT4Rec also masks a user's first item: no example, no row
    rows = lookup.topk_rows(batch.users, batch.positions)
    assert rows.shape == batch.targets.shape and (rows[example] >= 0).all() and (rows[keep & ~example] == -1).all()
    assert torch.equal(lookup.items[rows[example], 0], batch.targets[example])  # the oracle lists the target first
    state_rows = lookup.state_rows(batch.users, batch.positions)
    assert torch.equal(state_rows[keep] >= 0, example[keep])
    assert lookup.item_embeddings.shape == (data.n_items + 1, DIM) and (lookup.item_embeddings[0] == 0).all()
    assert lookup.covered == {"with": len(data.targets("train")[0]), "without": 0}


def _mapping_of(tensor: torch.Tensor) -> str:
    """The /proc/self/maps line of the memory that holds this tensor's data."""
    address = tensor.data_ptr()
    for line in Path("/proc/self/maps").read_text().splitlines():
        start, end = (int(a, 16) for a in line.split()[0].split("-"))
        if start <= address < end:
            return line
    raise AssertionError("no mapping holds the tensor")


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs Linux's /proc to see mappings")
def test_lookup_tables_are_file_backed_and_gather_what_the_export_holds(data, teachers):
    lookup = TeacherLookup(teachers["full"], data)
    for table in (lookup.items, lookup.scores, lookup.states):
        assert "(deleted)" in _mapping_of(table)   # an unlinked temporary file, paged by the OS: not heap
    export = teachers["full"].topk("train")
    users, positions = torch.as_tensor(export.users), torch.as_tensor(export.positions)
    rows = lookup.topk_rows(users, positions)
    items, scores = lookup.topk(rows, 3)
    assert items.dtype == torch.long and torch.equal(items, torch.as_tensor(export.items[:, :3]))
    assert torch.equal(scores, torch.as_tensor(export.scores[:, :3]))
    states = teachers["full"].states()
    train = np.isin(states.users * 1000 + states.positions, export.users * 1000 + export.positions)
    vectors = lookup.state_vectors(lookup.state_rows(torch.as_tensor(states.users[train]),
                                                     torch.as_tensor(states.positions[train])))
    assert torch.equal(vectors, torch.as_tensor(states.states[train]))


def test_lookup_indexes_training_rows_only_and_counts_coverage(data, teachers):
    lookup = TeacherLookup(teachers["last"], data)
    assert lookup.covered == {"with": data.n_users, "without": len(data.targets("train")[0]) - data.n_users}
    users, positions, _ = data.targets("test")
    assert (lookup.topk_rows(torch.as_tensor(users), torch.as_tensor(positions)) == -1).all()
    assert (lookup.state_rows(torch.as_tensor(users), torch.as_tensor(positions)) == -1).all()
    users, positions, _ = data.targets("train")
    rows = lookup.topk_rows(torch.as_tensor(users), torch.as_tensor(positions))
    assert int((rows >= 0).sum()) == data.n_users


def _corrupt(tmp_path, teachers, edit) -> TeacherExport:
    source = teachers["last"].folder
    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / "teacher.json").write_text((source / "teacher.json").read_text())
    edit(pl.read_parquet(source / "topk.parquet")).write_parquet(folder / "topk.parquet")
    return TeacherExport(folder)


@pytest.mark.parametrize("edit, message", [
    (lambda t: pl.concat([t, t.filter(pl.col("user_idx") == 3)]), "duplicate key"),
    (lambda t: t.with_columns(pl.when(pl.col("user_idx") == 3).then(10_000).otherwise(pl.col("position"))
                              .alias("position")), "not examples of the split"),
    (lambda t: t.with_columns(pl.when(pl.col("user_idx") == 3).then(pl.col("position") + 1)
                              .otherwise(pl.col("position")).alias("position")), "training example but the split"),
    (lambda t: t.with_columns(pl.when(pl.col("user_idx") == 3).then(pl.col("items") * 0 + 999)
                              .otherwise(pl.col("items")).alias("items")), "item ids must be in"),
])
def test_lookup_refuses_keys_that_do_not_match_the_split(tmp_path, data, teachers, edit, message):
    export = _corrupt(tmp_path, teachers, edit)
    with pytest.raises(DataError, match=message) as error:
        TeacherLookup(export, data)
    assert str(export.folder) in str(error.value)


# --- DLLM2Rec -------------------------------------------------------------------------------------

def test_position_weights_are_dllm2rec_s():
    expected = [0.6321, 0.2326, 0.0856, 0.0315, 0.0116, 0.0043, 0.0016, 0.0006, 0.0002, 0.0001]
    assert position_weights(10, 1.0).tolist() == pytest.approx(expected, abs=1e-4)


def test_importance_weights_sum_to_one_and_follow_the_students_top_k():
    candidates = torch.tensor([[1, 2, 3], [4, 5, 6]])
    scores = torch.tensor([[0.0, -1.0, -2.0], [0.0, 0.0, 0.0]])
    wp = position_weights(3, 1.0).expand(2, 3)
    wc = torch.softmax(scores, -1)
    gammas = (0.3, 0.5, 0.1)
    top = torch.tensor([[2, 9, 8], [7, 8, 9]])
    wo = student_consistency(candidates, top)
    assert wo.tolist() == [[0.0, 1.0, 0.0], [0.0, 0.0, 0.0]]
    w = importance_weights(wp, wc, wo, gammas)
    torch.testing.assert_close(w.sum(-1), torch.ones(2))
    torch.testing.assert_close(w[0], (0.3 * wp[0] + 0.5 * wc[0] + 0.1 * torch.tensor([0.0, 1.0, 0.0])) / 0.9)
    torch.testing.assert_close(w[1], (0.3 * wp[1] + 0.5 * torch.full((3,), 1 / 3)) / 0.8)
    moved = importance_weights(wp, wc, student_consistency(candidates, torch.tensor([[3, 9, 8], [7, 8, 9]])), gammas)
    assert moved[0, 2] > w[0, 2] and moved[0, 1] < w[0, 1]  # the item the student now ranks gains weight
    torch.testing.assert_close(moved[1], w[1])


def test_negative_term_is_minus_log_sigmoid_of_minus_s():
    for s in (-3.0, 0.5, 4.0):
        loss = ranking_distillation(torch.tensor([[0.0]]), torch.tensor([[s]]), torch.tensor([[1.0]]))
        manual = -math.log(1 - 1 / (1 + math.exp(-s))) - math.log(0.5)
        assert loss.item() == pytest.approx(manual, rel=1e-5)
        assert loss.item() != pytest.approx(-math.log(1 / (1 + math.exp(-(1 - s)))) - math.log(0.5))  # not B1
    huge = ranking_distillation(torch.tensor([[-100.0]]), torch.tensor([[100.0]]), torch.tensor([[1.0]]))
    assert torch.isfinite(huge) and huge.item() == pytest.approx(200.0, rel=1e-4)


def test_per_example_weights_stay_per_example():
    pos = torch.tensor([[2.0, -1.0], [0.0, 3.0]])
    neg = torch.tensor([[0.5], [-2.0]])
    w = torch.tensor([[0.9, 0.1], [0.2, 0.8]])
    per_candidate = -F.logsigmoid(pos) - F.logsigmoid(-neg)  # [2, 2] ℓ_bk
    loss = ranking_distillation(pos, neg, w)
    torch.testing.assert_close(loss, (w * per_candidate).sum(-1))
    b2 = sum(w[:, k].mean() * per_candidate[:, k].mean() for k in range(2))
    assert loss.mean().item() != pytest.approx(b2.item(), rel=1e-3)


def test_sampled_negatives_avoid_the_target_and_the_listed_items():
    forbidden = torch.tensor([[1, 2, 3, 4], [6, 5, 4, 3]])
    neg = sample_negatives(forbidden, 6, 200, torch.Generator().manual_seed(0))
    assert neg.shape == (2, 200) and neg.min() >= 1 and neg.max() <= 6
    assert not (neg[:, :, None] == forbidden[:, None, :]).any()


def test_ced_gradients_reach_the_projector_and_saved_student_keeps_it(tmp_path, small_split, data, teachers):
    model = make_student("sasrec", data.n_items)
    objective = build_distill_objective("dllm2rec", cross_entropy, [teachers["full"]], data, model, ed_weight=0.5)
    adapter = model.item_adapter
    assert isinstance(adapter, ItemAdapter)
    assert {id(p) for p in adapter.parameters()} <= {id(p) for p in trainable_parameters(model, objective)}
    assert "item_adapter.teacher" not in model.state_dict()  # the frozen table is not checkpointed
    history = torch.tensor([[0, 0, 3, 5], [0, 0, 0, 7]])
    assert (adapter(history)[history == 0] == 0).all()
    loss, logs = objective(model.train(), trainer_batch(model, data))
    loss.backward()
    assert adapter.projector.weight.grad.abs().sum() > 0 and logs["teacher_rows"] > 0

    save_student(tmp_path / "s", model.eval(), {"student": {"model": "sasrec", "hidden": 16, "layers": 2,
                                                           "heads": 2, "dropout": 0.1, "max_length": MAX_LENGTH},
                                               "n_items": data.n_items}, small_split / "item_map.parquet")
    served, meta = load_student(tmp_path / "s")
    assert meta["item_adapter"] == [data.n_items + 1, 16]
    with torch.no_grad():
        torch.testing.assert_close(served.user_states(history), model.user_states(history))
        changed = model.user_states(history)
        model.item_adapter = None
        assert not torch.allclose(model.user_states(history), changed)  # the adapter matters when served


# --- PRM-KD -----------------------------------------------------------------------------------------

def test_prmkd_drops_the_teacher_that_disagrees():
    agree = torch.tensor([0.7, 0.1, 0.1, 0.1])
    probs = torch.stack([agree, agree, torch.tensor([0.1, 0.1, 0.1, 0.7])])[None]  # [1, 3 teachers, 4 items]
    defaults = torch.tensor([0.5, 0.3, 0.2])
    everyone = torch.ones(1, 3, dtype=torch.bool)
    weights, dropped = teacher_consistency(probs, everyone, defaults, epsilon=0.1)
    assert dropped.tolist() == [2]
    torch.testing.assert_close(weights, torch.tensor([[0.6, 0.4, 0.0]]))
    weights, dropped = teacher_consistency(probs, everyone, defaults, epsilon=5.0)  # all within ε: defaults
    assert dropped.tolist() == [-1]
    torch.testing.assert_close(weights, defaults[None])
    weights, dropped = teacher_consistency(probs, torch.tensor([[True, False, True]]), defaults, epsilon=0.1)
    assert dropped.tolist() == [-1]  # two teachers: no majority, nothing dropped
    torch.testing.assert_close(weights, torch.tensor([[0.5 / 0.7, 0.0, 0.2 / 0.7]]))


def test_prmkd_drops_the_wrong_export_end_to_end(data, teachers):
    model = make_student("sasrec", data.n_items).eval()
    exports = [teachers["good2"], teachers["wrong"], teachers["full"]]
    objective = build_distill_objective("prmkd", cross_entropy, exports, data, model, use_states=False,
                                        teacher_weights=[0.4, 0.3, 0.3])
    _, logs = objective(model, trainer_batch(model, data, n=16))
    assert logs["prmkd_dropped_wrong"] == 1.0
    assert logs["prmkd_dropped_good2"] == logs["prmkd_dropped_full"] == 0.0


def test_prmkd_in_batch_scores_and_kl():
    columns = torch.tensor([-1, 0, 1, 2, -1])  # in-batch items 1, 2, 3
    scores = topk_scores(torch.tensor([[3, 1, 4]]), torch.tensor([[2.0, 1.5, 1.0]]), columns, 3, floor_margin=1.0)
    assert scores.tolist() == [[1.5, 0.0, 2.0]]  # item 2 unlisted: min(listed) − 1
    q, log_p = torch.tensor([[0.5, 0.5, 0.0]]), torch.log(torch.tensor([[0.25, 0.25, 0.5]]))
    assert kl(q, log_p, "qp").item() == pytest.approx(math.log(2))
    assert kl(q, log_p, "pq").item() == pytest.approx(0.5 * math.log(0.5) + 0.5 * math.log(0.5 / 1e-12), rel=1e-6)


def test_prmkd_refuses_states_and_embeddings_of_different_widths(tmp_path, data, teachers):
    emb = np.zeros((data.n_items, DIM + 1), np.float32)
    examples = select_examples(data.examples, 1)
    topk = teacher_lists(data, examples, 3)
    states = States(topk.users, topk.positions, np.ones((len(topk.users), DIM), np.float32))
    write_export(tmp_path / "odd", ExportTables(topk, emb, states), data.examples, data.n_items, INFO)
    with pytest.raises(DataError, match="dot product"):
        build_distill_objective("prmkd", cross_entropy, [TeacherExport(tmp_path / "odd")], data,
                                make_student("sasrec", data.n_items))


# --- feature and logit KD -----------------------------------------------------------------------------

def test_feature_distance_by_hand():
    student, teacher = torch.tensor([[2.0, 0.0]]), torch.tensor([[0.0, 1.0]])
    assert feature_distance(student, teacher, 1.0, 0.1).item() == pytest.approx(1.0 + 0.1 * math.sqrt(5 / 2))
    assert feature_distance(teacher, teacher, 1.0, 0.1).item() == pytest.approx(0.0, abs=1e-6)


def test_feature_projector_and_multi_block_heads_train(data, teachers):
    model = make_student("sasrec", data.n_items)
    objective = build_distill_objective("feature", sampled_bce(2), [teachers["full"]], data, model,
                                        blocks=[0, -1], multi_block_weight=0.5)
    assert len(objective.projectors) == 2 and len(objective.heads) == 1
    loss, logs = objective(model.train(), trainer_batch(model, data))
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in objective.parameters())
    assert {"feature", "feature_block0", "feature_block1", "multi_block_ce", "bce"} <= set(logs)


def test_logit_kd_by_hand():
    teacher, student = torch.tensor([[2.0, 0.0]]), torch.tensor([[0.0, 0.0]])
    q = torch.softmax(teacher / 2, -1)
    expected = 4 * (q * (q.log() - math.log(0.5))).sum()
    assert softened_kl(teacher, student, 2.0).item() == pytest.approx(expected.item())
    dense = catalogue_scores(torch.tensor([[4, 2]]), torch.tensor([[1.0, 0.5]]), 5, 1.0)
    assert dense.tolist() == [[-0.5, 0.5, -0.5, 1.0, -0.5]]


def test_logit_kd_residual_floor_spreads_the_left_over_probability(data, teachers):
    listed = torch.tensor([[0.5, 0.3]]).log()
    dense = catalogue_scores(torch.tensor([[4, 2]]), listed, 5, 1.0, residual=True)
    assert dense.exp()[0].tolist() == pytest.approx([0.2 / 3, 0.3, 0.2 / 3, 0.5, 0.2 / 3])
    assert dense.exp().sum().item() == pytest.approx(1.0)
    model = make_student("sasrec", data.n_items)
    with pytest.raises(DataError, match="not log-probabilities.*floor: margin"):  # scores 0, -0.5, ...: sum > 1
        build_distill_objective("logit_kd", cross_entropy, [teachers["full"]], data, model,
                                full_catalogue=True, floor="residual")


def test_top_k_above_the_teachers_list_is_used_as_k_with_a_warning(data, teachers, caplog):
    model = make_student("sasrec", data.n_items)
    k = 5   # the fixture's exports list 5 items per example
    for method, top_k in (("logit_kd", 50), ("dllm2rec", 50)):
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            objective = build_distill_objective(method, cross_entropy, [teachers["full"]], data, model, top_k=top_k)
        assert objective.top_k == k and f"not top_k={top_k}" in caplog.text, method


def test_gate_switches_the_teacher_term_off_while_the_student_is_ahead(data, teachers):
    """The gate value is the best teacher's validation metric: the oracle 'full' export ranks every
    validation target first (NDCG 1), the 'wrong' export never lists it (NDCG 0)."""
    params = Params.model_validate({"train": {"select_metric": "ndcg@5"}})
    model = make_student("sasrec", data.n_items).eval()
    objective = build_distill_objective("logit_kd", cross_entropy, [teachers["wrong"]], data, model)
    def valid(*names, k=5):
        return [listed_metrics(teachers[n], data, "valid", [k], False)[1] for n in names]
    assert teacher_gate(Params(), objective, valid("full", k=10)) is None  # K = 5 < 10: undefined, stays on
    assert objective.gate_metric is None
    assert teacher_gate(params, objective, valid("wrong")) == 0.0
    assert teacher_gate(params, objective, valid("wrong", "full")) == 1.0
    objective.enable_gate("ndcg@5", 0.05)
    batch = trainer_batch(model, data, n=20)
    with torch.no_grad():
        gated_on, logs_on = objective(model, batch)
        objective.observe({"ndcg@5": 0.06})          # the student is ahead: no teacher term
        gated_off, logs_off = objective(model, batch)
        base, _ = objective_of(cross_entropy)(model, batch)
        objective.observe({"ndcg@5": 0.05})          # level again: the teacher term is back
        again, _ = objective(model, batch)
    assert logs_on["gate"] == 1.0 and logs_off["gate"] == 0.0
    assert gated_off.item() == pytest.approx(base.item()) and gated_on.item() > base.item()
    assert again.item() == pytest.approx(gated_on.item())
    assert "gate" in dict(objective.named_buffers())  # checkpointed with the loss, so resume keeps it


def test_uncovered_examples_add_only_the_base_loss(data, teachers):
    """Teacher rows for each user's last training example only: the rest are trained without it."""
    model = make_student("gru4rec", data.n_items).eval()
    lookup = TeacherLookup(teachers["last"], data)
    objective = build_distill_objective("logit_kd", cross_entropy, [teachers["last"]], data, model,
                                        weight=0.7, temperature=2.0)
    batch = trainer_batch(model, data, n=30)
    loss, logs = objective(model, batch)
    keep = batch.targets > 0
    rows = lookup.topk_rows(batch.users, batch.positions)[keep]
    covered = rows >= 0
    assert 0 < logs["teacher_rows"] == int(covered.sum()) and logs["no_teacher"] == int((~covered).sum()) > 0
    with torch.no_grad():
        base, _ = objective_of(cross_entropy)(model, batch)
        states = model.encode(batch.inputs).states[keep][covered]
        student = (states[:, None, :] * model.item_embeddings()[lookup.items[rows[covered]]]).sum(-1)
        term = softened_kl(lookup.scores[rows[covered]], student, 2.0).sum() / keep.sum()
    assert loss.item() == pytest.approx((base + 0.7 * term).item(), rel=1e-5)


# --- every loss on every student ------------------------------------------------------------------------

CASES = {
    "dllm2rec": ({"ed_weight": 0.3}, ["full"]),
    "prmkd": ({}, ["full", "good2"]),   # one scored by states · embeddings, one by its list
    "feature": ({"multi_block_weight": 0.5}, ["full"]),
    "logit_kd": ({"full_catalogue": True}, ["full"]),
}


@pytest.mark.parametrize("method", sorted(CASES))
@pytest.mark.parametrize("student", sorted(STUDENTS))
def test_every_loss_trains_every_student(data, teachers, method, student):
    params, names = CASES[method]
    model = make_student(student, data.n_items)
    base = sampled_bce(1) if student == "caser" else cross_entropy
    objective = build_distill_objective(method, base, [teachers[n] for n in names], data, model, **params)
    batch = trainer_batch(model, data, n=8)
    loss, logs = objective(model.train(), batch)
    first_items = int(((batch.targets > 0) & (batch.positions == 0)).sum())  # BERT4Rec only
    assert torch.isfinite(loss) and logs[objective.name] > 0 and logs["no_teacher"] == first_items
    loss.backward()
    assert model.items.weight.grad.abs().sum() > 0
    parameters = trainable_parameters(model, objective)
    assert len({id(p) for p in parameters}) == len(parameters)  # nothing handed to the optimiser twice


def test_base_loss_and_teacher_term_share_one_forward_pass(data, teachers, monkeypatch):
    model = make_student("sasrec", data.n_items)
    objective = build_distill_objective("dllm2rec", cross_entropy, [teachers["full"]], data, model, ed_weight=0.0)
    calls = {"encode": 0, "score": 0}
    for name in calls:
        original = getattr(model, name)

        def counted(*args, _name=name, _original=original):
            calls[_name] += 1
            return _original(*args)

        monkeypatch.setattr(model, name, counted)
    objective(model, trainer_batch(model, data))
    assert calls == {"encode": 1, "score": 1}  # RD's top-K reuses the CE logits


def test_batches_without_teacher_rows_add_nothing(tmp_path, data):
    examples = select_examples(data.examples, 1).filter(pl.col("user_idx") == 1)
    write_export(tmp_path / "one", ExportTables(teacher_lists(data, examples, 3), None,
                                                States(examples["user_idx"].to_numpy(), examples["position"].to_numpy(),
                                                       np.ones((examples.height, DIM), np.float32))),
                 data.examples, data.n_items, INFO)
    model = make_student("sasrec", data.n_items).eval()
    batch = trainer_batch(model, data, n=8)
    batch.users[:] = 2  # keys of a user the teacher does not cover (the inputs do not matter here)
    base, _ = objective_of(cross_entropy)(model, batch)
    for method in ("dllm2rec", "prmkd", "feature", "logit_kd"):
        params = {"ed_weight": 0.0} if method == "dllm2rec" else {}
        objective = build_distill_objective(method, cross_entropy, [TeacherExport(tmp_path / "one")], data, model,
                                            **params)
        loss, logs = objective(model, batch)
        assert logs["teacher_rows"] == 0 and logs[objective.name] == 0.0
        assert loss.item() == pytest.approx(base.item(), rel=1e-6), method


def test_registry_refuses_bad_requests(data, teachers):
    model = make_student("sasrec", data.n_items)
    assert set(METHODS) == {"none", "dllm2rec", "prmkd", "feature", "logit_kd"}
    batch = trainer_batch(model, data, n=4)
    none = build_distill_objective("none", cross_entropy, [], data, model)(model.eval(), batch)
    assert torch.equal(none[0], objective_of(cross_entropy)(model, batch)[0])  # the base loss alone
    with pytest.raises(ParamsError, match="unknown distillation method"):
        build_distill_objective("pod", cross_entropy, [teachers["full"]], data, model)
    with pytest.raises(ParamsError, match="unknown parameter"):
        build_distill_objective("logit_kd", cross_entropy, [teachers["full"]], data, model, lam=1.0)
    with pytest.raises(ParamsError, match="one teacher"):
        build_distill_objective("dllm2rec", cross_entropy, [teachers["full"], teachers["last"]], data, model)
    with pytest.raises(ParamsError, match="direction"):
        build_distill_objective("prmkd", cross_entropy, [teachers["full"]], data, model, direction="xx")
    with pytest.raises(DataError, match="no item embeddings"):
        build_distill_objective("dllm2rec", cross_entropy, [teachers["last"]], data, model, ed_weight=0.2)
    with pytest.raises(DataError, match="no sequence states"):
        build_distill_objective("feature", cross_entropy, [teachers["last"]], data, model)
    assert model.item_adapter is None
