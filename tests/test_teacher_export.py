"""The teacher export contract, teacher rows in the evaluation, and explanation metrics."""

import json

import numpy as np
import polars as pl
import pyarrow.parquet as pq
import pytest

from distillrec.data.splitdata import SplitData
from distillrec.errors import DataError
from distillrec.evaluate.evaluation import Evaluator
from distillrec.evaluate.listed import listed_ranks
from distillrec.evaluate.report import markdown_table
from distillrec.evaluate.text_metrics import bleu, explanation_metrics, rouge_f1
from distillrec.params import EvaluateParams
from distillrec.teachers import export as export_module
from distillrec.teachers.export import (ExportTables, Rows, States, TeacherExport, TopK, select_examples,
                                        write_export)

INFO = {"parameters": 10, "trainable_parameters": 5, "size_mb": 0.1, "train_seconds": 1.0,
        "export": {"ms_per_example": 2.0, "ms_per_user": 2.0, "threads": 1}}


def oracle_topk(data: SplitData, examples: pl.DataFrame, k: int, rank_of_target: int = 1) -> TopK:
    """Lists with the true target at `rank_of_target` and other items filling the rest."""
    users = examples["user_idx"].to_numpy().copy()
    positions = examples["position"].to_numpy().copy()
    targets = examples["item_idx"].to_numpy()
    fill = (targets[:, None] + np.arange(1, k + 1)[None, :] - 1) % data.n_items + 1  # distinct, != target
    fill = np.where(fill == targets[:, None], (fill % data.n_items) + 1, fill)
    items = np.concatenate([fill[:, :rank_of_target - 1], targets[:, None], fill[:, rank_of_target:]], axis=1)[:, :k]
    scores = -np.arange(k, dtype=np.float32)[None, :].repeat(len(users), 0)
    return TopK(users, positions, items, scores)


@pytest.fixture(scope="module")
def data(small_split):
    return SplitData.load(small_split)


def test_select_examples_all_or_last_n_training_positions(data):
    assert select_examples(data.examples, "all").height == data.examples.height
    last2 = select_examples(data.examples, 2)
    train = last2.filter(pl.col("split") == "train")
    assert train.group_by("user_idx").len()["len"].max() == 2
    assert last2.filter(pl.col("split") != "train").height == 2 * data.n_users
    # the kept training rows are each user's latest
    latest = data.examples.filter(pl.col("split") == "train").group_by("user_idx").agg(pl.col("position").max())
    assert train.join(latest, on=["user_idx", "position"]).height == data.n_users


def test_export_round_trip_keeps_keys_splits_and_vectors(tmp_path, data):
    examples = select_examples(data.examples, 3)
    topk = oracle_topk(data, examples, 5)
    emb = np.random.default_rng(0).normal(size=(data.n_items, 4)).astype(np.float32)
    states = States(topk.users, topk.positions, np.ones((len(topk.users), 3), np.float32))
    test = examples.filter(pl.col("split") == "test").head(4)
    expl = test.select("user_idx", "position", "item_idx").with_columns(
        generated=pl.lit("good"), reference=pl.lit("good fit"))
    meta = write_export(tmp_path / "t", ExportTables(topk, emb, states, expl, {"score": "test"}), data.examples,
                        data.n_items, INFO)
    assert meta["counts"]["topk_examples"]["test"] == data.n_users
    assert json.loads((tmp_path / "t" / "teacher.json").read_text())["top_k"] == 5
    export = TeacherExport(tmp_path / "t")
    back = export.topk("test")
    order = np.lexsort((topk.positions, topk.users))
    rows = np.isin(np.arange(len(order)), np.nonzero(examples["split"].to_numpy() == "test")[0])
    assert np.array_equal(back.items, topk.items[order][rows[order]])
    assert np.allclose(export.item_embeddings(), emb)
    assert export.states().states.shape == (len(topk.users), 3)
    table = pl.read_parquet(tmp_path / "t" / "topk.parquet")
    assert table.columns == ["user_idx", "position", "split", "items", "scores"]
    assert table.schema["items"] == pl.Array(pl.Int32, 5) and table.schema["scores"] == pl.Array(pl.Float32, 5)
    assert table.select("user_idx", "position").is_duplicated().sum() == 0
    assert table.join(data.examples, on=["user_idx", "position"], how="anti").height == 0
    assert export.explanations()["split"].to_list() == ["test"] * 4


@pytest.mark.parametrize("corrupt, message", [
    (lambda t: t.users.__setitem__(1, t.users[0]) or t.positions.__setitem__(1, t.positions[0]), "duplicate key"),
    (lambda t: t.positions.__setitem__(0, 10_000), "not examples of the split"),
    (lambda t: t.items.__setitem__((0, 0), 0), "item ids must be in"),
    (lambda t: t.items.__setitem__((0, 1), t.items[0, 0]), "repeats"),
    (lambda t: t.scores.__setitem__((0, 2), np.nan), "non-finite"),
    (lambda t: t.scores.__setitem__((0, 3), 5.0), "must not increase"),
])
def test_bad_exports_are_refused_and_leave_no_folder(tmp_path, data, corrupt, message):
    examples = select_examples(data.examples, 1)
    topk = oracle_topk(data, examples, 5)
    corrupt(topk)
    with pytest.raises(DataError, match=message):
        write_export(tmp_path / "t", ExportTables(topk), data.examples, data.n_items, INFO)
    assert not (tmp_path / "t").exists()


def chunked(topk: TopK, states: States | None, size: int):
    """The same rows as a generator of chunks, as a streaming teacher yields them."""
    for start in range(0, len(topk.users), size):
        part = slice(start, start + size)
        yield Rows(TopK(topk.users[part], topk.positions[part], topk.items[part], topk.scores[part]),
                   None if states is None else States(states.users[part], states.positions[part], states.states[part]))


def test_a_streamed_export_writes_row_groups_and_reads_back_what_a_whole_one_does(tmp_path, data, monkeypatch):
    monkeypatch.setattr(export_module, "ROW_GROUP", 16)
    examples = select_examples(data.examples, "all")
    topk = oracle_topk(data, examples, 4)
    states = States(topk.users, topk.positions, np.arange(len(topk.users) * 2, dtype=np.float32).reshape(-1, 2))
    whole = write_export(tmp_path / "whole", ExportTables(topk, None, states), data.examples, data.n_items, INFO)
    streamed = write_export(tmp_path / "streamed", ExportTables(chunks=chunked(topk, states, 5)), data.examples,
                            data.n_items, INFO)
    assert whole["counts"] == streamed["counts"] and streamed["state_dim"] == 2
    assert pq.ParquetFile(tmp_path / "streamed" / "topk.parquet").num_row_groups == -(-len(topk.users) // 16)
    one, other = TeacherExport(tmp_path / "whole"), TeacherExport(tmp_path / "streamed")
    for split in ("train", "test", None):
        a, b = one.topk(split), other.topk(split)
        assert all(np.array_equal(getattr(a, f), getattr(b, f)) for f in ("users", "positions", "items", "scores"))
    assert np.array_equal(one.states().states, other.states().states)
    assert sum(len(c.users) for c in other.iter_topk()) == len(topk.users)
    assert max(len(c.users) for c in other.iter_topk()) == 16   # read back a row group at a time


def interrupted(chunks, after: int):
    """The chunks, then the failure of a killed run after `after` of them."""
    for i, chunk in enumerate(chunks):
        if i == after:
            raise KeyboardInterrupt("killed")
        yield chunk


def test_an_interrupted_streamed_export_resumes_after_its_last_part(tmp_path, data, monkeypatch):
    monkeypatch.setattr(export_module, "ROW_GROUP", 16)
    examples = select_examples(data.examples, "all")
    topk = oracle_topk(data, examples, 4)
    states = States(topk.users, topk.positions, np.arange(len(topk.users) * 2, dtype=np.float32).reshape(-1, 2))
    starts = []

    def resume_from(start):
        starts.append(start)
        return chunked(TopK(*(getattr(topk, f)[start:] for f in ("users", "positions", "items", "scores"))),
                       States(states.users[start:], states.positions[start:], states.states[start:]), 5)

    whole = write_export(tmp_path / "whole", ExportTables(topk, None, states), data.examples, data.n_items, INFO)
    checkpoint = tmp_path / "ckpt"
    with pytest.raises(KeyboardInterrupt):   # killed after 8 chunks = 40 examples: two parts of 20 on disk
        write_export(tmp_path / "t", ExportTables(chunks=interrupted(chunked(topk, states, 5), 8),
                                                  resume_from=resume_from), data.examples, data.n_items, INFO,
                     checkpoint, "same")
    assert not (tmp_path / "t").exists()
    assert json.loads((checkpoint / "progress.json").read_text())["parts"] == [{"topk": 20, "states": 20}] * 2
    # a duplicate key in the resumed rows is still caught against the parts written before the kill
    with pytest.raises(DataError, match="duplicate key"):
        write_export(tmp_path / "t", ExportTables(chunks=iter([]), resume_from=lambda start: chunked(topk, states, 5)),
                     data.examples, data.n_items, INFO, checkpoint, "same")
    meta = write_export(tmp_path / "t", ExportTables(chunks=iter([]), resume_from=resume_from), data.examples,
                        data.n_items, INFO, checkpoint, "same")
    assert starts == [40] and meta["counts"] == whole["counts"]
    one, other = TeacherExport(tmp_path / "whole"), TeacherExport(tmp_path / "t")
    a, b = one.topk(), other.topk()
    assert all(np.array_equal(getattr(a, f), getattr(b, f)) for f in ("users", "positions", "items", "scores"))
    assert np.array_equal(one.states().states, other.states().states)
    assert pq.ParquetFile(tmp_path / "t" / "topk.parquet").num_row_groups == -(-len(topk.users) // 16)
    assert not list(checkpoint.glob("*.parquet")) and json.loads((checkpoint / "progress.json").read_text())["complete"]
    # parts of another teacher (fingerprint) are discarded: the export starts from the first example
    with pytest.raises(KeyboardInterrupt):
        write_export(tmp_path / "u", ExportTables(chunks=interrupted(chunked(topk, states, 5), 8),
                                                  resume_from=resume_from), data.examples, data.n_items, INFO,
                     checkpoint, "same")
    write_export(tmp_path / "u", ExportTables(chunks=chunked(topk, states, 5), resume_from=resume_from),
                 data.examples, data.n_items, INFO, checkpoint, "retrained")
    assert starts == [40] and TeacherExport(tmp_path / "u").content_id() == other.content_id()


def test_a_key_repeated_in_a_later_chunk_is_refused(tmp_path, data):
    topk = oracle_topk(data, select_examples(data.examples, 1), 3)
    first = Rows(TopK(topk.users[:4], topk.positions[:4], topk.items[:4], topk.scores[:4]))
    again = Rows(TopK(topk.users[2:3], topk.positions[2:3], topk.items[2:3], topk.scores[2:3]))
    with pytest.raises(DataError, match=rf"duplicate key .*\({topk.users[2]}, {topk.positions[2]}\)"):
        write_export(tmp_path / "t", ExportTables(chunks=iter([first, again])), data.examples, data.n_items, INFO)
    assert not (tmp_path / "t").exists()


def test_an_export_in_the_old_long_layout_is_refused_with_a_clear_error(tmp_path, data):
    write_export(tmp_path / "t", ExportTables(oracle_topk(data, select_examples(data.examples, 1), 3)),
                 data.examples, data.n_items, INFO)
    pl.DataFrame({"user_idx": [1], "position": [1], "split": ["train"], "rank": [1], "item_idx": [2],
                  "score": [0.0]}).write_parquet(tmp_path / "t" / "topk.parquet")
    with pytest.raises(DataError, match="not the list layout .* re-run export_teacher"):
        TeacherExport(tmp_path / "t").topk()


def test_wrong_embedding_shape_is_refused(tmp_path, data):
    topk = oracle_topk(data, select_examples(data.examples, 1), 3)
    with pytest.raises(DataError, match=r"expected \[\d+, D\]"):
        write_export(tmp_path / "t", ExportTables(topk, np.zeros((3, 2))), data.examples, data.n_items, INFO)


def test_listed_ranks_count_ties_against_and_drop_excluded():
    items = np.array([[5, 3, 9], [1, 2, 4], [7, 8, 6]])
    scores = np.array([[3.0, 2.0, 1.0], [2.0, 2.0, 1.0], [3.0, 2.0, 1.0]])
    targets = np.array([9, 2, 42])
    assert listed_ranks(items, scores, targets).tolist() == [3, 2, 0]
    excluded = np.array([[True, False, False], [False, False, False], [False, False, False]])
    assert listed_ranks(items, scores, targets, excluded).tolist() == [2, 2, 0]


def test_teacher_row_metrics_are_exact_up_to_k_and_undefined_beyond(tmp_path, small_split, data):
    examples = select_examples(data.examples, 1)
    write_export(tmp_path / "rank2", ExportTables(oracle_topk(data, examples, 10, rank_of_target=2)),
                 data.examples, data.n_items, INFO)
    evaluator = Evaluator(small_split, EvaluateParams(ks=[1, 5, 20], latency_repeats=2))
    evaluator.add_teacher("teacher-x", tmp_path / "rank2")
    row = evaluator.table["teacher-x"]
    assert row["test"]["hr@1"] == 0.0 and row["test"]["hr@5"] == 1.0
    assert row["test"]["ndcg@5"] == pytest.approx(1 / np.log2(3))
    assert row["test"]["mrr@5"] == pytest.approx(0.5)
    assert row["test"]["ndcg@20"] is None
    assert evaluator.rank_table()["teacher-x"].to_list() == [2] * data.n_users
    report = markdown_table(evaluator.table, [1, 5, 20], "protocol")
    assert "teacher-x" in report and "–" in report


def test_teacher_row_refuses_an_export_missing_test_rows(tmp_path, small_split, data):
    examples = select_examples(data.examples, 1).filter(
        ~((pl.col("split") == "test") & (pl.col("user_idx") == 1)))
    write_export(tmp_path / "t", ExportTables(oracle_topk(data, examples, 5)), data.examples, data.n_items, INFO)
    evaluator = Evaluator(small_split, EvaluateParams(ks=[5], latency_repeats=2))
    with pytest.raises(DataError, match="does not cover the test examples"):
        evaluator.add_teacher("t", tmp_path / "t")


def test_bleu_and_rouge_on_known_strings():
    assert bleu(["the cat sat on the mat"], ["the cat sat on the mat"], 4) == pytest.approx(100.0)
    # unigram precision 5/6, no brevity penalty; no 4-gram match and no smoothing -> BLEU-4 = 0
    assert bleu(["the cat is on the mat"], ["the cat sat on the mat"], 1) == pytest.approx(500 / 6)
    assert bleu(["the cat is on the mat"], ["the cat sat on the mat"], 4) == 0.0
    rouge = rouge_f1(["the cat is on the mat"], ["the cat sat on the mat"])
    assert rouge["rouge1"] == pytest.approx(500 / 6)
    assert rouge["rouge2"] == pytest.approx(60.0)  # 3 of 5 bigrams shared
    assert explanation_metrics(["a b"], ["c d"])["rougeL"] == 0.0
    with pytest.raises(ValueError):
        explanation_metrics(["a"], [])


def test_the_export_fingerprint_follows_the_teacher_files_the_split_and_the_export_params(tmp_path):
    from distillrec.teachers.run import export_fingerprint
    model, processed = tmp_path / "model", tmp_path / "processed"
    (model / "sub").mkdir(parents=True)
    processed.mkdir()
    (model / "sub" / "weights.safetensors").write_bytes(b"w1")
    (processed / "sequences.parquet").write_bytes(b"s1")
    first = export_fingerprint(model, processed, {"top_k": 10})
    assert export_fingerprint(model, processed, {"top_k": 10}) == first
    assert export_fingerprint(model, processed, {"top_k": 20}) != first
    (model / "sub" / "weights.safetensors").write_bytes(b"w2")
    retrained = export_fingerprint(model, processed, {"top_k": 10})
    (processed / "sequences.parquet").write_bytes(b"s2")
    assert len({first, retrained, export_fingerprint(model, processed, {"top_k": 10})}) == 3


def test_a_chunk_whose_k_differs_from_the_first_is_refused(tmp_path, data):
    examples = select_examples(data.examples, 1)
    three, four = oracle_topk(data, examples, 3), oracle_topk(data, examples, 4)
    first = Rows(TopK(three.users[:4], three.positions[:4], three.items[:4], three.scores[:4]))
    wider = Rows(TopK(four.users[4:8], four.positions[4:8], four.items[4:8], four.scores[4:8]))
    with pytest.raises(DataError, match="K or the state width changed between chunks"):
        write_export(tmp_path / "t", ExportTables(chunks=iter([first, wider])), data.examples, data.n_items, INFO)
    assert not (tmp_path / "t").exists()
