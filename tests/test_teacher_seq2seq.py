"""The POD-style T5 teacher: whole-word ids, prompts, constrained decoding, train/save/load/export."""

import numpy as np
import polars as pl
import pytest
import torch

from distillrec.errors import DataError
from distillrec.params import Seq2SeqModelParams, Seq2SeqTeacherParams, validate_teacher
from distillrec.teachers.data import TeacherData
from distillrec.teachers.export import TeacherExport, select_examples, write_export
from distillrec.teachers.pod import IGNORE, Codec, TaskExamples, whole_word_ids
from distillrec.teachers.seq2seq import Seq2SeqTeacher, _task_examples
from distillrec.tokenizer import train_tokenizer
from distillrec.teachers.trie import ItemTrie, beam_search


def config(**overrides) -> Seq2SeqTeacherParams:
    base = {"family": "seq2seq",
            "model": {"finetune": "full", "config": {"d_model": 32, "layers": 1, "heads": 2, "d_ff": 64, "vocab_size": 300},
                      "prompts_per_task": 3, "max_history": 6, "explanation_tokens": 8},
            "train": {"epochs": 2, "patience": 2, "batch_size": 16, "lr": 5e-3, "sample": 48, "valid_examples": 32,
                      "seed": 1},
            "export": {"top_k": 5, "batch_size": 16, "train_positions": 1, "explanation_beams": 2}}
    for key, value in overrides.items():
        part = base["model"] if key in Seq2SeqModelParams.model_fields else base
        part[key] = part.get(key, {}) | value if isinstance(value, dict) else value
    return validate_teacher(base)



@pytest.fixture(scope="module")
def data(small_split) -> TeacherData:
    return TeacherData.load(small_split)


@pytest.fixture(scope="module")
def untrained(data) -> Seq2SeqTeacher:
    teacher = Seq2SeqTeacher.create(config(), data)
    teacher.module.eval()
    return teacher


def sequential_batch(teacher, data, n=4, split="valid"):
    examples = _task_examples(data, "sequential", split)
    return examples, teacher.batch(data.split, examples, np.arange(n), None, teacher.device)


def test_whole_word_ids_with_our_tokenizer():
    texts = ["user_1 item_2 item_345", "Given the history of user_7: item_8, predict the next item."]
    tok = train_tokenizer(texts, 200, "<pad>", "</s>", "<unk>")
    tokens = tok.tokenize("Given user_12: item_345 item_7, the item")
    assert tokens[:11] == ["Given", "user", "_", "1", "2", ":", "item", "_", "3", "4", "5"]
    assert whole_word_ids(tokens) == [0, 1, 1, 1, 1, 0, 2, 2, 2, 2, 2, 3, 3, 3, 0, 0, 0]
    codec = Codec(tok)  # the batched path gives the same ids, 0 on pads and eos
    batch = codec.inputs(["Given user_12: item_345 item_7, the item", "user_3"])
    assert batch.whole_word_ids[0, :17].tolist() == whole_word_ids(tokens)
    assert batch.whole_word_ids[1].tolist() == [1, 1, 1] + [0] * (batch.input_ids.shape[1] - 3)


def test_whole_word_ids_with_sentencepiece_tokens():
    # how t5-small cuts ids (`▁` starts a word), plus other cuts a vocabulary could make
    tokens = ["▁Given", "▁user", "_", "23", "▁item", "_", "34", "5", "▁item", "_7", "▁item_", "12", "▁item_9",
              "▁the", "▁item", "▁user", "_", "▁5", "▁items", "_", "1"]
    assert whole_word_ids(tokens) == [0, 1, 1, 1, 2, 2, 2, 2, 3, 3, 4, 4, 5, 0, 0, 0, 0, 0, 0, 0, 0]


def test_tokenizer_that_cannot_split_id_words_is_rejected():
    tok = train_tokenizer(["a b c d e f g h i j k l m n o p q r s t u v w x y z _ 0 1 2 3 4 5 6 7 8 9"] * 3,
                          64, "<pad>", "</s>", "<unk>")
    with pytest.raises(DataError, match="vocab_size"):
        Codec(tok)


def test_continuous_prompts_lengthen_the_encoder_input_by_p(untrained, data):
    _, (inputs, _) = sequential_batch(untrained, data)
    p = untrained.cfg.model.prompts_per_task
    with torch.no_grad():
        hidden, mask = untrained.module.encode(inputs, untrained.task_index("sequential"))
    assert hidden.shape[1] == inputs.input_ids.shape[1] + p
    assert mask[:, :p].eq(1).all() and torch.equal(mask[:, p:], inputs.attention_mask)
    # the sequential and explanation tasks use different prompt vectors for the same text
    with torch.no_grad():
        other, _ = untrained.module.encode(inputs, untrained.task_index("explanation"))
    assert not torch.allclose(hidden, other)


def test_pad_labels_are_ignored(untrained, data):
    examples = _task_examples(data, "sequential", "valid")  # targets item_<1 or 2 digits> + eos
    index = np.concatenate([np.nonzero(examples.items < 10)[0][:2], np.nonzero(examples.items >= 10)[0][:2]])
    inputs, labels = untrained.batch(data.split, examples, index, None, untrained.device)
    lengths = (labels != IGNORE).sum(1)
    assert lengths.min() < lengths.max() and (labels[:, -1] == IGNORE).any()
    assert (labels.gather(1, lengths[:, None] - 1) == untrained.codec.eos).all()  # eos ends every target
    task = untrained.task_index("sequential")
    with torch.no_grad():
        batch_loss = untrained.module(inputs.input_ids, inputs.attention_mask, inputs.whole_word_ids, labels, task)
        single = []
        for i in index:
            one, lab = untrained.batch(data.split, examples, np.array([i]), None, untrained.device)
            single.append(untrained.module(one.input_ids, one.attention_mask, one.whole_word_ids, lab, task))
    expected = (torch.stack(single) * lengths).sum() / lengths.sum()
    torch.testing.assert_close(batch_loss, expected, rtol=1e-4, atol=1e-5)


def exact_item_logprobs(teacher, inputs, n_items):
    """log P(item_i + eos | input) of every item by teacher forcing: the brute-force reference."""
    words = teacher.codec.labels([f"item_{i}" for i in range(1, n_items + 1)])
    task = teacher.task_index("sequential")
    rows = []
    with torch.no_grad():
        hidden, mask = teacher.module.encode(inputs, task)
        for b in range(hidden.shape[0]):
            out = teacher.module.backbone(encoder_outputs=(hidden[b:b + 1].expand(n_items, -1, -1),),
                                          attention_mask=mask[b:b + 1].expand(n_items, -1), labels=words)
            logp = torch.log_softmax(out.logits, -1).gather(2, words.clamp(min=0)[..., None])[..., 0]
            rows.append((logp * (words != IGNORE)).sum(1))
    return torch.stack(rows)


def test_constrained_beam_search_returns_valid_distinct_items_with_exact_scores(untrained, data):
    _, (inputs, _) = sequential_batch(untrained, data, n=3)
    n, k = data.n_items, 5
    exact = exact_item_logprobs(untrained, inputs, n)
    trie = untrained.item_trie(n)
    task = untrained.task_index("sequential")
    start = untrained.module.backbone.config.decoder_start_token_id
    with torch.no_grad():
        hidden, mask = untrained.module.encode(inputs, task)
        # as many beams as items: the search is exhaustive and must equal brute force
        items, scores = beam_search(untrained.decoder_step(hidden, mask, n), trie, 3, n, k, start)
        best, order = exact.topk(k)
        assert torch.equal(items, order + 1)
        torch.testing.assert_close(scores, best, rtol=1e-4, atol=1e-4)
        items, scores = beam_search(untrained.decoder_step(hidden, mask, k), trie, 3, k, k, start)
    assert ((items >= 1) & (items <= n)).all()
    assert all(len(set(row)) == k for row in items.tolist())
    assert (scores[:, 1:] <= scores[:, :-1]).all()
    torch.testing.assert_close(scores, exact.gather(1, items - 1), rtol=1e-4, atol=1e-4)


def test_trie_rejects_items_with_the_same_tokens():
    with pytest.raises(DataError, match="same tokens"):
        ItemTrie.build([[5, 6, 1], [5, 6, 1]], [1, 2])


def test_training_steps_lower_the_loss(data):
    teacher = Seq2SeqTeacher.create(config(), data)
    examples, (inputs, labels) = sequential_batch(teacher, data, n=16, split="train")
    module, task = teacher.module, teacher.task_index("sequential")
    optimizer = torch.optim.AdamW(module.parameters(), lr=1e-2)
    losses = []
    for _ in range(8):
        loss = module(inputs.input_ids, inputs.attention_mask, inputs.whole_word_ids, labels, task)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]


def logits_of(teacher, data):
    _, (inputs, labels) = sequential_batch(teacher, data)
    embeds, mask = teacher.module.embed(inputs, teacher.task_index("sequential"))
    with torch.no_grad():
        return teacher.module.backbone(inputs_embeds=embeds, attention_mask=mask, labels=labels).logits


@pytest.mark.parametrize("finetune, train", [("lora", {"gradient_checkpointing": True}),
                                             ("full", {"precision": "bf16"})])
def test_create_fit_save_load_export(tmp_path, data, finetune, train):
    cfg = config(finetune=finetune, lora={"r": 4, "alpha": 8}, train=train)
    teacher = Seq2SeqTeacher.create(cfg, data)
    state = teacher.fit(data, tmp_path / "ckpt", tmp_path / "live", "run")
    assert state.epoch == 2 and {"valid_loss", "valid_loss_sequential", "valid_loss_explanation"} <= set(
        state.history[-1])
    assert (tmp_path / "ckpt" / "checkpoint.pt").exists()
    if finetune == "lora":
        trainable = {n for n, p in teacher.module.named_parameters() if p.requires_grad}
        assert trainable and all("lora_" in n or not n.startswith("backbone.") for n in trainable)
    teacher.save(tmp_path / "model")
    loaded = Seq2SeqTeacher.load(tmp_path / "model", cfg)
    torch.testing.assert_close(logits_of(loaded, data), logits_of(teacher, data), rtol=0, atol=0)

    examples = select_examples(data.split.examples, cfg.export.train_positions)
    tables = loaded.export(data, examples, cfg.export)
    meta = write_export(tmp_path / "export", tables, data.split.examples, data.n_items, {})
    assert meta["counts"]["topk_examples"] == {s: int(c) for s, c in examples.group_by("split").len().iter_rows()}
    exported = TeacherExport(tmp_path / "export")
    topk = exported.topk()
    assert topk.items.shape == (examples.height, cfg.export.top_k)
    assert exported.item_embeddings().shape == (data.n_items, cfg.model.config.d_model)
    assert exported.states().states.shape == (examples.height, cfg.model.config.d_model)
    explanations = exported.explanations()
    assert explanations.height == data.explanations.filter(pl.col("split") == "test").height
    assert explanations["split"].cast(pl.String).unique().to_list() == ["test"]
    assert explanations["reference"].str.len_chars().min() > 0
    assert "log-probabilities" in meta["score"] and meta["family"] == "seq2seq"


def test_pretrained_folder_as_base_model(tmp_path, data):
    """base_model names a saved T5 + tokenizer; a LoRA teacher then saves only its adapter."""
    source = Seq2SeqTeacher.create(config(), data)
    source.module.backbone.save_pretrained(tmp_path / "t5")
    source.tokenizer.save_pretrained(tmp_path / "t5")
    cfg = config(finetune="lora", base_model=str(tmp_path / "t5"))
    teacher = Seq2SeqTeacher.create(cfg, data)
    (tmp_path / "model").mkdir()
    teacher.save(tmp_path / "model")
    assert not (tmp_path / "model" / "backbone").exists()
    loaded = Seq2SeqTeacher.load(tmp_path / "model", cfg)
    teacher.module.eval()
    torch.testing.assert_close(logits_of(loaded, data), logits_of(teacher, data), rtol=0, atol=0)


def test_corrupted_extras_and_unknown_base_model(tmp_path, data, untrained):
    (tmp_path / "model").mkdir()
    untrained.save(tmp_path / "model")
    (tmp_path / "model" / "extras.pt").write_bytes(b"not a torch file")
    with pytest.raises(DataError, match="extras.pt"):
        Seq2SeqTeacher.load(tmp_path / "model", untrained.cfg)
    with pytest.raises(DataError, match="no such folder"):
        Seq2SeqTeacher.create(config(base_model=str(tmp_path / "missing")), data)


def test_export_rejects_top_k_above_catalogue(untrained, data):
    examples = select_examples(data.split.examples, 1).head(2)
    cfg = config(export={"top_k": data.n_items + 1})
    with pytest.raises(DataError, match="top_k"):
        untrained.export(data, examples, cfg.export)


def test_histories_have_no_look_ahead(untrained, data):
    """The input of example (u, p) lists exactly the max_history items before position p."""
    u, p = 5, 7
    rows = TaskExamples("sequential", np.array([u]), np.array([p]), np.array([0]))
    inputs = untrained.inputs(data.split, rows, np.array([0]), None)
    text = untrained.tokenizer.decode(inputs.input_ids[0], skip_special_tokens=True).replace(" ", "")
    expected = f"user_{u}" + "".join(f"item_{i}" for i in data.sequence(u)[max(0, p - 6):p])
    assert text == expected
