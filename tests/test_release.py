"""The release folder: rebuilt from safetensors + config.json exactly, ONNX faithful to torch, a
teacher folded into a plain SASRec scores as the teacher does, the row and seed chosen on
validation, and `distillrec.load` working in a fresh process with only the folder."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import polars as pl
import pytest
import torch
from safetensors.torch import load_file, save_file

import distillrec
from distillrec.errors import DataError
from distillrec.params import Params, StudentParams
from distillrec.serving.artifact import load_module, onnx_parity, write_model
from distillrec.serving.files import read_config
from distillrec.serving.release import chosen_row, fold_teacher
from distillrec.students import build_student
from distillrec.students.base import ItemOffsets
from tests.conftest import make_release


def _histories(n_items: int, max_length: int, count: int = 300, seed: int = 0) -> np.ndarray:
    """Random left-padded histories of every length from 1 to max_length."""
    rng = np.random.default_rng(seed)
    out = np.zeros((count, max_length), dtype=np.int64)
    for row in range(count):
        length = 1 + row % max_length
        out[row, max_length - length:] = rng.integers(1, n_items + 1, length)
    return out


def test_safetensors_and_config_rebuild_the_same_student(tmp_path):
    torch.manual_seed(0)
    arch = StudentParams(model="gru4rec", hidden=16, layers=1, max_length=6)
    model = build_student(arch, 30).eval()
    model.item_adapter = ItemOffsets(torch.randn(31, 16))
    write_model(tmp_path, model, arch.model_dump(), {"row": "x"})
    config = read_config(tmp_path)
    assert config["item_offsets"] == [31, 16] and config["n_items"] == 30 and config["row"] == "x"
    rebuilt = load_module(tmp_path, config)
    history = torch.from_numpy(_histories(30, 6))
    with torch.no_grad():
        assert torch.equal(model.score(model.user_states(history)), rebuilt.score(rebuilt.user_states(history)))


def test_weights_holding_nan_are_refused(release_dir, tmp_path):
    folder = tmp_path / "r"
    shutil.copytree(release_dir, folder)
    state = load_file(str(folder / "model.safetensors"))
    name = sorted(state)[0]
    state[name][..., 0] = float("nan")
    save_file(state, str(folder / "model.safetensors"))
    with pytest.raises(DataError, match=f"non-finite weights.*{name}"):
        distillrec.load(folder, backend="torch")


def test_truncated_weights_and_broken_config_are_errors_naming_the_file(release_dir, tmp_path):
    folder = tmp_path / "r"
    shutil.copytree(release_dir, folder)
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="model.safetensors: cannot be read"):
        distillrec.load(folder, backend="torch")
    (folder / "config.json").write_text('{"n_items": 40}')
    with pytest.raises(DataError, match="config.json: not a release's config: the key 'architecture'"):
        distillrec.load(folder, backend="onnx")
    (folder / "model.onnx").write_bytes(b"not onnx")
    shutil.copy2(release_dir / "config.json", folder / "config.json")
    with pytest.raises(DataError, match="model.onnx: cannot be loaded by ONNX Runtime"):
        distillrec.load(folder, backend="onnx")


def test_onnx_parity_holds_and_catches_a_foreign_export(release_dir, tmp_path):
    config = read_config(release_dir)
    model = load_module(release_dir, config)
    histories = _histories(40, 8, count=1000)
    result = onnx_parity(model, release_dir / "model.onnx", histories, 1e-4)
    assert result["same_top10"] == result["histories"] == 2000 and result["max_abs_diff"] < 1e-4
    other = make_release(tmp_path / "other", seed=5)
    with pytest.raises(DataError, match="ONNX Runtime disagrees with torch"):
        onnx_parity(model, other / "model.onnx", histories, 1e-4)


def test_both_backends_give_the_same_lists_never_padding_nor_seen(release_dir):
    histories = [[f"i{i:03d}" for i in range(1, n + 1)] for n in (1, 3, 8, 20)]
    onnx = distillrec.load(release_dir, backend="onnx").recommend(histories, k=12)
    torch_ = distillrec.load(release_dir, backend="torch").recommend(histories, k=12)
    assert [r.item_ids for r in onnx] == [r.item_ids for r in torch_]
    assert np.allclose([r.scores for r in onnx], [r.scores for r in torch_], atol=1e-4)
    for history, rec in zip(histories, onnx):
        assert not set(history) & set(rec.item_ids) and len(rec.item_ids) == 12
        assert rec.scores == sorted(rec.scores, reverse=True)
    everything = [f"i{i:03d}" for i in range(1, 41)]
    assert distillrec.load(release_dir).recommend([everything[:35]], k=10)[0].item_ids.__len__() == 5
    kept = distillrec.load(release_dir).recommend([everything[:35]], k=10, exclude_seen=False)[0]
    assert len(kept.item_ids) == 10


def test_load_needs_only_the_folder_in_a_fresh_process(release_dir, tmp_path):
    folder = tmp_path / "shipped"
    shutil.copytree(release_dir, folder)
    script = ("import json, sys, distillrec\n"
              "m = distillrec.load(sys.argv[1])\n"
              "r = m.recommend([['i001', 'i002']], k=5)[0]\n"
              "print(json.dumps({'backend': m.backend, 'ids': r.item_ids, 'scores': r.scores,\n"
              "                  'torch': 'torch' in sys.modules, 'polars': 'polars' in sys.modules}))\n")
    out = subprocess.run([sys.executable, "-c", script, str(folder)], cwd=tmp_path, capture_output=True,
                         text=True, timeout=120, check=True)
    answer = json.loads(out.stdout)
    here = distillrec.load(release_dir, backend="onnx").recommend([["i001", "i002"]], k=5)[0]
    assert answer == {"backend": "onnx", "ids": here.item_ids, "scores": here.scores, "torch": False,
                      "polars": False}


def test_a_fusion_teacher_folded_into_a_sasrec_scores_as_the_teacher(tmp_path):
    from distillrec.teachers.fusion import FusionTeacher

    torch.manual_seed(0)
    cfg = Params.model_validate({"teachers": {"f": {"family": "fusion", "model": {
        "embedding": "e", "hidden": 16, "layers": 1, "heads": 2, "max_length": 8, "adaptor_experts": 2}}},
        "embed": {"e": {}}}).teachers["f"]
    item_map = pl.DataFrame({"item_idx": range(1, 31), "item_id": [str(i) for i in range(1, 31)],
                             "title": ["t"] * 30})
    teacher = FusionTeacher._build(cfg, torch.randn(31, 12), item_map)
    teacher.module.items.ids.weight.data.normal_()          # trained-looking weights, not the init
    teacher.save(tmp_path)
    folded, architecture = fold_teacher(cfg, tmp_path)
    assert architecture["model"] == "sasrec" and architecture["hidden"] == 16
    history = torch.from_numpy(_histories(30, 8))
    with torch.no_grad():
        original = teacher.module.eval()
        expected = original.score(original.user_states(history))
        assert torch.allclose(folded.score(folded.user_states(history)), expected, atol=1e-5)


DETAILS = {"auto": {"selection": {"chosen": "logit_kd"}},
           "baseline": {"runs": {"seed1": {"valid": {"ndcg@10": 0.3}}}},
           "logit_kd": {"runs": {"seed1": {"valid": {"ndcg@10": 0.2}}, "seed2": {"valid": {"ndcg@10": 0.25}},
                                 "seed3": {"valid": {"ndcg@10": 0.21}}}}}


@pytest.mark.parametrize(("release", "expected"), [
    ({}, ("logit_kd", 2)),                                   # evaluate's validation choice, its best seed
    ({"row": "baseline"}, ("baseline", 1)),
    ({"row": "logit_kd", "seed": 3}, ("logit_kd", 3)),
])
def test_the_row_and_seed_are_chosen_on_validation(release, expected):
    params = Params.model_validate({"train": {"seeds": [1, 2, 3]}, "distill": {"methods": ["logit_kd"],
                                    "teachers": ["t"]}, "teachers": {"t": {"family": "id"}}, "release": release})
    assert chosen_row(params, DETAILS) == expected


@pytest.mark.parametrize(("release", "message"), [
    ({"row": "prmkd"}, "release.row 'prmkd'"),
    ({"seed": 7}, "release.seed 7"),
    ({"teacher": "nope"}, "release.teacher 'nope'"),
    ({"parity_tolerance": float("inf")}, "parity_tolerance"),
])
def test_release_params_are_checked(release, message):
    from distillrec.errors import ParamsError
    from distillrec.params import parse_params

    with pytest.raises(ParamsError, match=message):
        parse_params({"release": release})


def test_a_saved_student_holding_nan_is_refused(tmp_path):
    from distillrec.students.saved import load_student, save_student

    arch = StudentParams(model="sasrec", hidden=8, layers=1, heads=2, max_length=4)
    model = build_student(arch, 10)
    with torch.no_grad():
        model.items.weight[3, 0] = float("inf")
    item_map = tmp_path / "items.parquet"
    pl.DataFrame({"item_idx": range(1, 11), "item_id": [str(i) for i in range(1, 11)],
                  "title": ["t"] * 10}).write_parquet(item_map)
    save_student(tmp_path / "s", model, {"student": arch.model_dump(), "n_items": 10}, item_map)
    with pytest.raises(DataError, match="model.pt: refused: non-finite weights.*items.weight"):
        load_student(tmp_path / "s")
