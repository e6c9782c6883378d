import json
import shutil

import polars as pl
import pytest
import torch

from distillrec.evaluate.evaluation import Evaluator, popularity_scores
from distillrec.evaluate.report import write_reports
from distillrec.errors import DataError
from distillrec.params import EvaluateParams, Params, StudentParams, TrainParams
from distillrec.train import loop as loop_module
from distillrec.students.saved import load_student
from distillrec.train.run import train_student



def params(**train) -> Params:
    return Params(student=StudentParams(hidden=32, layers=1, heads=1, max_length=20, dropout=0.2),
                  train=TrainParams(**({"epochs": 4, "batch_size": 16, "lr": 3e-3, "seeds": [3]} | train)))


def fit(tmp_path, name, small_split, **train):
    summary = train_student(params(**train), small_split, tmp_path / name, tmp_path / f"ckpt-{name}",
                            tmp_path / f"live-{name}")
    return summary, load_student(tmp_path / name)[0]


def test_loss_decreases_and_sasrec_beats_popularity(tmp_path, small_split):
    summary, _ = fit(tmp_path, "m", small_split, epochs=25, patience=25)
    history = summary["fit"]
    evaluator = Evaluator(small_split, EvaluateParams(latency_repeats=5))
    evaluator.add_popularity()
    evaluator.add_student("baseline", tmp_path / "m")
    table = evaluator.table
    assert table["baseline"]["test"]["ndcg@10"] > 1.5 * table["popularity"]["test"]["ndcg@10"]
    assert table["baseline"]["test"]["hr@10"] > table["popularity"]["test"]["hr@10"] + 0.1
    live = json.loads((tmp_path / "live-m" / "metrics.json").read_text())
    assert live["step"] == history["epochs"] - 1 and "loss" in live["train"]
    losses = pl.read_csv(tmp_path / "live-m" / "plots" / "metrics" / "train" / "loss.tsv", separator="\t")["loss"]
    assert losses[-1] < 0.8 * losses[0]
    write_reports(table, evaluator.rank_table(), [5, 10, 20], "protocol", tmp_path / "metrics")
    report = (tmp_path / "metrics" / "report.md").read_text()
    assert "| baseline |" in report and "| popularity |" in report
    assert pl.read_parquet(tmp_path / "metrics" / "ranks.parquet").columns == ["user_idx", "popularity", "baseline"]


def test_best_epoch_is_selected_on_validation(tmp_path, small_split):
    summary, _ = fit(tmp_path, "m", small_split, epochs=6, patience=2)
    history = torch.load(tmp_path / "ckpt-m" / "checkpoint.pt", weights_only=True)["state"]["history"]
    best = max(range(len(history)), key=lambda i: history[i]["ndcg@10"])
    assert summary["fit"]["best_epoch"] == best + 1
    assert summary["fit"]["best_valid"] == history[best]
    assert len(history) == 6 or len(history) - (best + 1) == 2  # stopped by patience or epochs


def test_same_seed_same_model_and_bce_objective_trains(tmp_path, small_split):
    _, a = fit(tmp_path, "a", small_split)
    _, b = fit(tmp_path, "b", small_split)
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(x, y), name
    summary, _ = fit(tmp_path, "bce", small_split, objective="bce", negatives=4)
    history = torch.load(tmp_path / "ckpt-bce" / "checkpoint.pt", weights_only=True)["state"]["history"]
    assert history[-1]["loss"] < history[0]["loss"]


@pytest.mark.parametrize("schedule", ["constant", "cosine"])
def test_resume_after_interruption_equals_uninterrupted(tmp_path, small_split, monkeypatch, schedule):
    fit_ = lambda name: fit(tmp_path, name, small_split, lr_schedule=schedule)  # noqa: E731
    _, reference = fit_("full")
    original_save = loop_module.Loop._save
    calls = []

    def crash_after_two(self):
        original_save(self)
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(loop_module.Loop, "_save", crash_after_two)
    with pytest.raises(KeyboardInterrupt):
        fit_("resumed")
    assert not (tmp_path / "resumed").exists()
    monkeypatch.setattr(loop_module.Loop, "_save", original_save)
    summary, resumed = fit_("resumed")
    assert summary["fit"]["epochs"] == 4
    for (name, x), y in zip(reference.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(x, y), name


def test_checkpoint_of_other_params_is_not_resumed(tmp_path, small_split):
    fit(tmp_path, "m", small_split, epochs=2)
    summary, _ = fit(tmp_path, "m", small_split, epochs=3, lr=1e-3)
    assert summary["fit"]["epochs"] == 3


def test_an_interrupted_checkpoint_is_resumed_only_by_the_same_code(tmp_path, small_split, monkeypatch, caplog):
    original_save = loop_module.Loop._save

    def crash_after_one(self):
        original_save(self)
        raise KeyboardInterrupt

    monkeypatch.setattr(loop_module.Loop, "_save", crash_after_one)
    with pytest.raises(KeyboardInterrupt):
        fit(tmp_path, "m", small_split, epochs=2)
    monkeypatch.setattr(loop_module.Loop, "_save", original_save)
    with caplog.at_level("INFO", logger="distillrec.train.loop"):
        monkeypatch.setattr(loop_module, "code_digest", lambda: "the digest of edited code")
        summary, _ = fit(tmp_path, "m", small_split, epochs=2)
    assert "written with other params, data or code" in caplog.text and "resuming from" not in caplog.text
    assert summary["fit"]["epochs"] == 2


def test_the_code_digest_follows_every_source_file_under_the_package(tmp_path):
    from distillrec.io import code_digest
    (tmp_path / "pkg" / "sub").mkdir(parents=True)
    (tmp_path / "pkg" / "a.py").write_text("x = 1\n")
    (tmp_path / "pkg" / "sub" / "b.py").write_text("y = 2\n")
    first = code_digest.__wrapped__(tmp_path / "pkg")
    (tmp_path / "pkg" / "notes.txt").write_text("not code")
    assert code_digest.__wrapped__(tmp_path / "pkg") == first
    (tmp_path / "pkg" / "sub" / "b.py").write_text("y = 3\n")
    assert code_digest.__wrapped__(tmp_path / "pkg") != first
    assert len(code_digest()) == 64 and code_digest() == code_digest()


def test_fused_adamw_marks_its_parameters_written_so_weight_keyed_caches_see_each_step():
    from distillrec.teachers.itemtext import weights_key
    from distillrec.train.trainer import adamw
    table, frozen = torch.nn.Parameter(torch.randn(5, 3)), torch.nn.Parameter(torch.randn(2))
    optimizer = adamw([table, frozen], 0.01, 0.0)
    before, values, unwritten = weights_key([table]), table.detach().clone(), weights_key([frozen])
    table.square().sum().backward()
    optimizer.step()
    assert not torch.equal(table.detach(), values) and weights_key([table]) != before
    assert weights_key([frozen]) == unwritten   # no gradient, not stepped: its caches stay valid


def test_popularity_counts_only_training_part(small_split):
    from distillrec.data.splitdata import SplitData
    data = SplitData.load(small_split)
    scores = popularity_scores(data)
    assert scores[1:].sum().item() == (data.lengths - 2).sum()


def test_corrupted_checkpoint_is_a_clear_error(tmp_path, small_split):
    (tmp_path / "ckpt-m").mkdir()
    (tmp_path / "ckpt-m" / "checkpoint.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(DataError, match="checkpoint .* is unreadable"):
        fit(tmp_path, "m", small_split, epochs=1)
    assert not (tmp_path / "m").exists()


def test_finished_run_rewrites_its_curves_when_dvc_deleted_them(tmp_path, small_split):
    summary, _ = fit(tmp_path, "m", small_split, epochs=3, patience=3)
    shutil.rmtree(tmp_path / "live-m")  # what `dvc repro` does to a stage's outputs before running it
    again, _ = fit(tmp_path, "m", small_split, epochs=3, patience=3)   # trained again: a finished run is not resumed
    untimed = lambda fit: {k: v for k, v in fit.items() if not k.startswith("seconds")}  # noqa: E731
    assert untimed(again["fit"]) == untimed(summary["fit"])
    losses = pl.read_csv(tmp_path / "live-m" / "plots" / "metrics" / "train" / "loss.tsv", separator="\t")
    assert losses.height == 3
    assert json.loads((tmp_path / "live-m" / "metrics.json").read_text())["step"] == 2


def test_after_validation_sees_every_epochs_validation_metrics(tmp_path, small_split):
    from distillrec.train.objectives import build_objective
    from distillrec.train.run import Plan

    seen = []
    p = params(epochs=3, patience=3)
    summary = train_student(p, small_split, tmp_path / "m", tmp_path / "ckpt", tmp_path / "live",
                            plan=lambda _, data: Plan(build_objective(p.train, data), {}, seen.append))
    history = torch.load(tmp_path / "ckpt" / "checkpoint.pt", weights_only=True)["state"]["history"]
    assert summary["fit"]["epochs"] == 3 and [m["ndcg@10"] for m in seen] == [h["ndcg@10"] for h in history]


def test_cosine_schedule_scales_each_groups_configured_lr_and_survives_a_resume():
    from distillrec.train.trainer import cosine_factor, schedule_lr
    assert [round(cosine_factor(done, 4), 4) for done in (0, 1, 2, 3, 4, 5)] == [1.0, 0.8536, 0.5, 0.1464, 0.0, 0.0]
    weights = [torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(2))]
    optimizer = torch.optim.AdamW([{"params": weights[:1]}, {"params": weights[1:], "lr": 0.1}], lr=1.0)
    schedule_lr(optimizer, 0.5)
    schedule_lr(optimizer, 0.25)  # from the configured lr, not compounded
    assert [g["lr"] for g in optimizer.param_groups] == [0.25, 0.025]
    resumed = torch.optim.AdamW([{"params": weights[:1]}, {"params": weights[1:], "lr": 0.1}], lr=1.0)
    resumed.load_state_dict(optimizer.state_dict())  # a checkpoint holds the decayed lr
    schedule_lr(resumed, 1.0)
    assert [g["lr"] for g in resumed.param_groups] == [1.0, 0.1]


def test_a_diverging_run_stops_at_the_first_non_finite_loss_and_saves_nothing(tmp_path, small_split):
    from distillrec.errors import TrainingDiverged

    with pytest.raises(TrainingDiverged, match=r"the loss is (nan|inf) at epoch \d+, step \d+ of \d+; nothing is saved"):
        fit(tmp_path, "diverged", small_split, lr=1e12, epochs=3)
    assert not (tmp_path / "diverged").exists()
