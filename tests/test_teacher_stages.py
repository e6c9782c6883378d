"""The teacher stage scripts as DVC runs them, including data-parallel training in 2 processes."""

import json
import subprocess
import sys

import pytest
import yaml

from tests.conftest import REPO

pytestmark = pytest.mark.slow

TINY = {"family": "seq2seq",
        "model": {"finetune": "lora", "config": {"d_model": 32, "layers": 1, "heads": 2, "d_ff": 64, "vocab_size": 300},
                  "max_history": 6, "explanation_tokens": 8},
        "train": {"epochs": 1, "batch_size": 16, "sample": 64, "valid_examples": 16, "threads": 1},
        "export": {"top_k": 5, "train_positions": 1, "batch_size": 32, "explanation_beams": 2}}


# the trainable families, each tiny; what each leaves besides its weights
PARALLEL = {
    "seq2seq": (TINY, "adapter"),
    "causal": ({"family": "causal",
                "model": {"finetune": "lora", "config": {"d_model": 32, "layers": 1, "heads": 2, "d_ff": 64,
                                                         "vocab_size": 300},
                          "max_history": 4, "max_title_tokens": 8},
                "train": {"epochs": 1, "batch_size": 32, "sample": 96, "valid_examples": 32, "threads": 1},
                "export": {"top_k": 5, "train_positions": 1, "batch_size": 64}}, "adapter"),
    "id": ({"family": "id", "train": {"epochs": 2, "batch_size": 16, "threads": 1, "objective": "sampled_softmax",
                                       "negatives": 16},
            "export": {"top_k": 5, "train_positions": 1},
            "model": {"hidden": 16, "layers": 1, "heads": 1, "max_length": 20}}, "model"),
    "text": ({"family": "text",
              "model": {"finetune": "lora", "base_model": "bert", "hidden": 16, "layers": 1, "heads": 1,
                        "max_length": 20, "max_text_tokens": 16, "grad_items": 16, "encode_batch_size": 32},
              "train": {"epochs": 1, "batch_size": 16, "threads": 1},
              "export": {"top_k": 5, "train_positions": 1}}, "adapter"),
}


@pytest.fixture
def workdir(tmp_path, small_split):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "processed").symlink_to(small_split)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"teachers": {"tiny": TINY}}))
    return tmp_path


def _run(cmd, cwd):
    result = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=600)
    return result.returncode, result.stdout + result.stderr


def tiny_bert(folder, small_split) -> None:
    """A tiny BERT and a WordPiece tokenizer of the catalogue's words, saved like a hub model."""
    from transformers import BertConfig, BertModel

    from distillrec.data.splitdata import SplitData
    from distillrec.teachers.itemtext import item_texts
    from distillrec.tokenizer import train_tokenizer

    texts = item_texts(SplitData.load(small_split).item_map, ["title", "categories"])
    tokenizer = train_tokenizer(texts, 300, pad="[PAD]", eos="[SEP]", unk="[UNK]", bos="[CLS]")
    tokenizer.save_pretrained(folder)
    BertModel(BertConfig(vocab_size=len(tokenizer), hidden_size=16, num_hidden_layers=1, num_attention_heads=1,
                         intermediate_size=32, max_position_embeddings=32)).save_pretrained(folder)


@pytest.mark.parametrize("family", list(PARALLEL))
def test_two_process_training_then_export(workdir, small_split, family):
    cfg, saved = PARALLEL[family]
    if family == "text":
        tiny_bert(workdir / "bert", small_split)
    (workdir / "params.yaml").write_text(yaml.safe_dump({"teachers": {"tiny": cfg}}))
    code, out = _run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                      str(REPO / "stages" / "train_teacher.py"), "tiny"], workdir)
    assert code == 0, out
    summary = json.loads((workdir / "models" / "teachers" / "tiny" / "trained.json").read_text())
    assert summary["fit"]["epochs"] == cfg["train"]["epochs"] and summary["family"] == family
    assert (workdir / "models" / "teachers" / "tiny" / saved).exists()
    code, out = _run([sys.executable, str(REPO / "stages" / "export_teacher.py"), "tiny"], workdir)
    assert code == 0, out
    info = json.loads((workdir / "data" / "teacher" / "tiny" / "teacher.json").read_text())
    assert info["top_k"] == 5 and info["counts"]["topk_examples"]["test"] > 0


def test_unknown_teacher_and_bad_base_model_fail_cleanly(workdir):
    code, out = _run([sys.executable, str(REPO / "stages" / "train_teacher.py"), "nope"], workdir)
    assert code == 1 and "no teacher named 'nope'" in out and "Traceback" not in out
    params = {"teachers": {"tiny": TINY | {"model": TINY["model"] | {"base_model": "./no/such/model"}}}}
    (workdir / "params.yaml").write_text(yaml.safe_dump(params))
    code, out = _run([sys.executable, str(REPO / "stages" / "train_teacher.py"), "tiny"], workdir)
    assert code == 1 and "no such folder" in out and "Traceback" not in out
    assert not (workdir / "models" / "teachers" / "tiny").exists()
