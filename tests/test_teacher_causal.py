"""The BIGRec-style causal-LM teacher on a tiny LLaMA: prompts, one-pass scoring, grounding, save/load."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from distillrec.errors import DataError
from distillrec.params import CausalTeacherParams, validate_teacher
from distillrec.teachers.bigrec import PromptPieces, context_start
from distillrec.teachers.causal import CausalTeacher
from distillrec.teachers.data import TeacherData
from distillrec.teachers.export import TeacherExport, select_examples, write_export
from distillrec.teachers import grounding
from distillrec.teachers.scoring import WindowPlan, prefix_states, window_states

SMOLLM = Path(__file__).resolve().parents[2] / "shared" / "models" / "smollm2-135m-instruct"


def tiny(**model) -> CausalTeacherParams:
    return validate_teacher({
        "family": "causal",
        "model": {"finetune": "lora", "config": {"d_model": 32, "layers": 1, "heads": 2, "d_ff": 64, "vocab_size": 300},
                  "max_history": 4, "max_title_tokens": 8} | model,
        "train": {"epochs": 1, "batch_size": 32, "sample": 96, "valid_examples": 32, "lr": 0.005, "device": "cpu"},
        "export": {"top_k": 5, "train_positions": 2, "batch_size": 64, "grounding_beams": 2}})


def with_ranking(cfg: CausalTeacherParams, ranking: str) -> CausalTeacherParams:
    return cfg.model_copy(update={"export": cfg.export.model_copy(update={"ranking": ranking})})


@pytest.fixture(scope="module")
def data(small_split) -> TeacherData:
    return TeacherData.load(small_split)


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory) -> tuple[CausalTeacher, Path]:
    """A tiny LoRA-tuned LLaMA teacher, fitted one epoch and saved."""
    root = tmp_path_factory.mktemp("causal")
    teacher = CausalTeacher.create(tiny(), data)
    state = teacher.fit(data, root / "ckpt", root / "live", "run")
    assert state.epoch == 1 and np.isfinite(state.best_metric)
    assert {"valid_loss", "valid_lm_loss", "valid_scoring_loss"} <= set(state.history[0])
    folder = root / "model"
    folder.mkdir()
    teacher.save(folder)
    return teacher, folder


def test_prefix_ids_are_prefixes(trained, data):
    teacher_tok = trained[0].tokenizer
    pieces = PromptPieces.build(teacher_tok, data.require_titles("causal"), 8)
    items = data.sequence(1)[:6].tolist()
    full, ends = pieces.history(items)
    assert full[:len(pieces.head)] == pieces.head and full[0] == teacher_tok.bos_token_id
    for j in range(1, len(items) + 1):
        shorter, shorter_ends = pieces.history(items[:j])
        assert full[:len(shorter)] == shorter and shorter_ends == ends[:j]
        assert teacher_tok.decode(shorter[shorter_ends[-1]]) == ","
    assert pieces.prompt(items) == full + pieces.marker
    assert all(len(t) <= 8 for t in pieces.titles)
    assert pieces.targets[items[0]][-1] == teacher_tok.eos_token_id


@pytest.mark.skipif(not SMOLLM.is_dir(), reason=f"{SMOLLM} is absent (shared pretrained model folder)")
def test_prefix_ids_with_a_pretrained_bpe_tokenizer(data):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(SMOLLM, gguf_file=next(SMOLLM.glob("*.gguf")).name)
    pieces = PromptPieces.build(tok, data.require_titles("causal"), 32)
    items = data.sequence(2)[:5].tolist()
    full, ends = pieces.history(items)
    for j in range(1, len(items) + 1):
        assert full[:len(pieces.history(items[:j])[0])] == pieces.history(items[:j])[0]
    # the pieces tokenise as the concatenated text would: separate tokenisation costs nothing here
    text = tok.decode(full[len(pieces.head):])
    assert tok(text, add_special_tokens=False)["input_ids"] == full[len(pieces.head):]


def test_context_is_deterministic_and_bounded():
    positions = np.arange(1, 40)
    for window in (1, 4, 5, 10):
        start = context_start(positions, window)
        stride = -(-window // 2)
        context = positions - start
        assert (start % stride == 0).all() and (context <= window).all() and (context >= 1).all()
        assert ((context >= window - stride + 1) | (start == 0)).all()
        assert (start[positions <= window] == 0).all()


def test_window_plan_serves_every_example():
    users = np.array([3, 3, 3, 3, 7, 7])
    positions = np.array([1, 4, 5, 9, 2, 3])
    plan = WindowPlan.of(users, positions, 4)
    assert len(plan.users) == 4  # (3, s=0) for 1 and 4; (3, 2) for 5; (3, 6) for 9; (7, 0) for 2 and 3
    starts = plan.starts[plan.window]
    assert (plan.users[plan.window] == users).all() and (starts == context_start(positions, 4)).all()
    assert (plan.offset == positions - 1 - starts).all() and (plan.ends[plan.window] >= positions).all()


def test_one_pass_scoring_equals_per_prefix_reference(trained, data):
    teacher, _ = trained
    long_users = np.nonzero(data.split.lengths >= 12)[0][:3] + 1
    rows = data.split.examples.filter(data.split.examples["user_idx"].is_in(long_users.tolist()))
    users, positions = rows["user_idx"].to_numpy().astype(np.int64), rows["position"].to_numpy().astype(np.int64)
    pieces, window = teacher.prompt_pieces(data), teacher.cfg.model.max_history
    with torch.no_grad():
        plan = WindowPlan.of(users, positions, window)
        fast, passes = window_states(teacher.module.encode, pieces, data.split, plan, 4, teacher.device)
        slow, slow_passes = prefix_states(teacher.module.encode, pieces, data.split, users, positions, window,
                                          teacher.device)
        assert passes == len(plan.users) and slow_passes == len(users) and passes * 2 <= slow_passes
        torch.testing.assert_close(fast, slow, atol=1e-4, rtol=1e-4)
        fast_items, fast_scores, _ = teacher.rank_states(fast, 10, 16)
        slow_items, slow_scores, _ = teacher.rank_states(slow, 10, 16)
    np.testing.assert_array_equal(fast_items, slow_items)
    np.testing.assert_allclose(fast_scores, slow_scores, atol=1e-4)


def test_end_to_end_scoring_export(trained, data, tmp_path):
    _, folder = trained
    cfg = tiny()
    teacher = CausalTeacher.load(folder, cfg)
    examples = select_examples(data.split.examples, cfg.export.train_positions)
    tables = teacher.export(data, examples, cfg.export)
    meta = write_export(tmp_path / "export", tables, data.split.examples, data.n_items, {"name": "tiny"})
    assert meta["family"] == "causal" and meta["ranking"] == "scoring" and "log-probability" in meta["score"]
    assert 0 < meta["forward_passes"] < examples.height
    exported = TeacherExport(tmp_path / "export")
    topk = exported.topk()
    assert len(topk.users) == examples.height and topk.items.shape == (examples.height, 5)
    assert (topk.scores <= 0).all()  # log-probabilities
    assert exported.item_embeddings().shape == (data.n_items, 32)
    np.testing.assert_allclose(exported.item_embeddings(), teacher.module.items.weight[1:].detach().numpy())
    assert exported.states().states.shape == (examples.height, 32)


def test_saved_lora_reloads_to_identical_outputs(trained, data):
    teacher, folder = trained
    lora_b = [p for n, p in teacher.module.named_parameters() if "lora_B" in n]
    assert lora_b and any(p.abs().sum() > 0 for p in lora_b)  # the adapter did train
    examples = select_examples(data.split.examples, 1).head(50)
    before = teacher.export(data, examples, teacher.cfg.export)
    after = CausalTeacher.load(folder, teacher.cfg).export(data, examples, teacher.cfg.export)
    np.testing.assert_array_equal(before.topk.items, after.topk.items)
    np.testing.assert_allclose(before.topk.scores, after.topk.scores, atol=1e-5)
    np.testing.assert_allclose(before.states.states, after.states.states, atol=1e-5)


def test_grounding_export(trained, data, tmp_path):
    teacher, folder = trained
    cfg = with_ranking(tiny(), "grounding")
    grounded = CausalTeacher.load(folder, cfg)
    examples = select_examples(data.split.examples, 1).head(24)
    tables = grounded.export(data, examples, cfg.export)
    items, scores = tables.topk.items, tables.topk.scores
    assert items.shape == (24, 5) and items.min() >= 1 and items.max() <= data.n_items
    assert all(len(set(row)) == 5 for row in items.tolist())
    assert np.isfinite(scores).all() and (scores[:, 0] > 0).all()  # nearest items lie above the row mean
    info = tables.info
    assert info["ranking"] == "grounding" and "z-score" in info["score"]
    assert info["forward_passes"] >= 24 * 3 and info["catalogue_passes"] == data.n_items
    assert len(info["distance"]["nearest"]) == 5 and info["distance"]["row_std"][0] > 0
    write_export(tmp_path / "export", tables, data.split.examples, data.n_items, {})
    assert tables.item_embeddings.shape == (data.n_items, 32) and tables.states.states.shape == (24, 32)
    # the scoring mode needs far fewer passes for the same examples
    scored = teacher.export(data, select_examples(data.split.examples, "all"), teacher.cfg.export).info
    assert scored["passes_per_example"] * 10 < info["passes_per_example"]


def test_grounding_ties_and_scale():
    items = torch.tensor([[0.0, 0.0], [1.0, 0.0], [1.0, 0.0], [3.0, 0.0], [1.0, 0.0]])
    popularity = np.array([5, 1, 7, 0, 7])   # items 2, 3, 5 share a title; 3 and 5 equally popular
    top, scores, dist = grounding.rank(torch.tensor([[1.0, 0.0]]), items, grounding.tie_order(popularity), 4)
    assert top.tolist() == [[3, 5, 2, 1]]
    assert scores[0, 0] == scores[0, 1] == scores[0, 2] > scores[0, 3]
    z = -(dist - dist.mean()) / dist.std(unbiased=False)
    torch.testing.assert_close(scores[0], z[0, [2, 4, 1, 0]].float())
    summary = grounding.distance_summary(grounding.row_stats(dist))
    assert summary["exact_match_rate"] == 1.0 and summary["nearest"][2] == 0.0


def test_full_finetune_round_trip(data, tmp_path):
    raw = tiny(finetune="full").model_dump()
    raw["train"]["gradient_checkpointing"] = True
    cfg = validate_teacher(raw)
    teacher = CausalTeacher.create(cfg, data)
    teacher.fit(data, tmp_path / "ckpt", tmp_path / "live", "run")
    teacher.save(tmp_path)
    assert (tmp_path / "backbone").is_dir() and not (tmp_path / "adapter").exists()
    examples = select_examples(data.split.examples, 1).head(20)
    before = teacher.export(data, examples, cfg.export)
    after = CausalTeacher.load(tmp_path, cfg).export(data, examples, cfg.export)
    np.testing.assert_array_equal(before.topk.items, after.topk.items)
    np.testing.assert_allclose(before.topk.scores, after.topk.scores, atol=1e-5)


def test_missing_titles_are_a_data_error(data):
    untitled = dataclasses.replace(data, titles=[None] + [None] * data.n_items)
    with pytest.raises(DataError, match="have no title.*causal teacher lists items by title"):
        CausalTeacher.create(tiny(), untitled)


@pytest.mark.parametrize("base", ["/nonexistent/llama", "/nonexistent/model.gguf"])
def test_unknown_base_model_is_a_data_error(data, base):
    cfg = tiny(base_model=base)
    with pytest.raises(DataError, match="no such"):
        CausalTeacher.create(cfg, data)


def test_corrupted_extras_is_a_data_error(trained, tmp_path):
    _, folder = trained
    copy = tmp_path / "model"
    shutil.copytree(folder, copy)
    (copy / "extras.pt").write_bytes(b"not a torch file")
    with pytest.raises(DataError, match="extras.pt is unreadable"):
        CausalTeacher.load(copy, tiny())
