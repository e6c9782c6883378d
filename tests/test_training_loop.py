"""The shared epoch loop: a finished run's checkpoint never stands in for training ("forced means
forced"), an interrupted one is resumed, and every trainer logs its epochs in one shape."""

from __future__ import annotations

import json
import re
import shutil

import pytest
import torch

from distillrec.params import Params, StudentParams, TrainParams
from distillrec.train import loop as loop_module
from distillrec.train.loop import CHECKPOINT, Loop, LoopConfig, metric_label
from distillrec.train.run import train_student
from distillrec.train.trainer import Trainer

WALL_TIME = {"seconds", "seconds_to_best", "seconds_per_epoch"}
# `epoch 7/200: train loss 5.1230 | valid ndcg@10 0.1234 (best 0.1250 at epoch 5, patience 3/5 left)`
NUMBER = r"(-?\d+\.\d{4}|nan)"
EPOCH_LINE = re.compile(rf"epoch (\d+)/(\d+): train loss {NUMBER} \| valid (\S+) {NUMBER} "
                        rf"\(best {NUMBER} at epoch (\d+), patience (\d+)/(\d+) left\)")


def epoch_lines(caplog) -> list[re.Match]:
    lines = [r.getMessage() for r in caplog.records if r.name == "distillrec.train.loop"
             and r.getMessage().startswith("epoch ")]
    matches = [EPOCH_LINE.fullmatch(line) for line in lines]
    assert all(matches), lines
    return matches


# --- a scripted task: the loop's bookkeeping without a model worth training ----------------------

class Scripted:
    """An EpochTask whose validation returns the next of `values` under `metric`."""

    def __init__(self, values: list[float], metric: str = "ndcg@10"):
        self.module = torch.nn.Linear(2, 1)
        self.optimizer = torch.optim.SGD(self.module.parameters(), lr=0.1)
        self.values, self.metric, self.trained = values, metric, []

    def train_epoch(self, epoch: int) -> float:
        self.trained.append(epoch)
        return 5.0 - epoch / 10

    def validate(self) -> dict[str, float]:
        return {self.metric: self.values[self.trained[-1] - 1]}


def scripted_run(tmp_path, values, epochs=10, patience=2, metric="ndcg@10", higher=True):
    task = Scripted(values, metric)
    loop = Loop(task, LoopConfig(epochs, patience, metric, seed=1, higher_is_better=higher),
                tmp_path / "ckpt", tmp_path / "live", "run")
    return task, loop, loop.run()


def test_epoch_lines_name_the_metric_and_count_the_patience_window(tmp_path, caplog):
    with caplog.at_level("INFO", logger="distillrec.train.loop"):
        _, loop, state = scripted_run(tmp_path, [0.1, 0.3, 0.2, 0.25, 0.9], epochs=10, patience=2)
    lines = epoch_lines(caplog)
    assert [m.group(0) for m in lines] == [
        "epoch 1/10: train loss 4.9000 | valid ndcg@10 0.1000 (best 0.1000 at epoch 1, patience 2/2 left)",
        "epoch 2/10: train loss 4.8000 | valid ndcg@10 0.3000 (best 0.3000 at epoch 2, patience 2/2 left)",
        "epoch 3/10: train loss 4.7000 | valid ndcg@10 0.2000 (best 0.3000 at epoch 2, patience 1/2 left)",
        "epoch 4/10: train loss 4.6000 | valid ndcg@10 0.2500 (best 0.3000 at epoch 2, patience 0/2 left)"]
    assert state.epoch == 4 and state.best_epoch == 2
    assert ("stopped early at epoch 4 of 10: no improvement in valid ndcg@10 for 2 epochs; "
            "best epoch 2 (valid ndcg@10 0.3000)") in caplog.text
    assert "valid valid" not in caplog.text
    assert loop._window() == "ndcg@10 0.2500, best 2, stop in 0"


def test_a_loss_selected_run_says_valid_loss_and_a_full_run_says_so(tmp_path, caplog):
    with caplog.at_level("INFO", logger="distillrec.train.loop"):
        _, loop, _ = scripted_run(tmp_path, [3.0, 2.5, 2.75], epochs=3, patience=5, metric="valid_loss",
                                  higher=False)
    lines = epoch_lines(caplog)
    assert {m.group(4) for m in lines} == {"loss"} and "valid valid_loss" not in caplog.text
    assert lines[-1].group(0) == ("epoch 3/3: train loss 4.7000 | valid loss 2.7500 "
                                  "(best 2.5000 at epoch 2, patience 4/5 left)")
    assert "trained all 3 epochs; best epoch 2 (valid loss 2.5000)" in caplog.text
    assert loop._window() == "loss 2.7500, best 2, stop in 4"
    assert metric_label("valid_loss") == "loss" and metric_label("ndcg@10") == "ndcg@10"


def test_a_finished_checkpoint_is_not_resumed_but_an_interrupted_one_is(tmp_path, monkeypatch, caplog):
    values = [0.1, 0.2, 0.3]
    first, _, _ = scripted_run(tmp_path, values, epochs=3)
    saved = torch.load(tmp_path / "ckpt" / CHECKPOINT, weights_only=True)["state"]
    assert saved["finished"] and saved["epoch"] == 3   # the file stays: it is a persist output
    with caplog.at_level("INFO", logger="distillrec.train.loop"):
        again, _, state = scripted_run(tmp_path, values, epochs=3)   # `dvc repro -f`: trains again
    assert again.trained == [1, 2, 3] and state.epoch == 3 and "holds a finished run" in caplog.text
    assert "resuming from" not in caplog.text

    original_save = Loop._save

    def crash_after_two(self):
        original_save(self)
        if self.state.epoch == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(Loop, "_save", crash_after_two)
    shutil.rmtree(tmp_path / "ckpt")
    with pytest.raises(KeyboardInterrupt):
        scripted_run(tmp_path, values, epochs=3)
    monkeypatch.setattr(Loop, "_save", original_save)
    caplog.clear()
    with caplog.at_level("INFO", logger="distillrec.train.loop"):
        resumed, _, state = scripted_run(tmp_path, values, epochs=3)   # killed: resumed after epoch 2
    assert resumed.trained == [3] and state.epoch == 3 and "resuming from" in caplog.text


# --- a tiny student, end to end ------------------------------------------------------------------

def student_params() -> Params:
    return Params(student=StudentParams(hidden=16, layers=1, heads=1, max_length=10, dropout=0.2),
                  train=TrainParams(epochs=3, patience=3, batch_size=32, lr=3e-3, seeds=[3]))


def test_a_forced_rerun_of_a_finished_student_trains_again_to_the_same_bytes(tmp_path, small_split, monkeypatch,
                                                                             caplog):
    out, ckpt, live = tmp_path / "out", tmp_path / "ckpt", tmp_path / "live"
    trained: list[int] = []
    original = Trainer.train_epoch

    def spy(self, epoch):
        trained.append(epoch)
        return original(self, epoch)

    monkeypatch.setattr(Trainer, "train_epoch", spy)
    with caplog.at_level("INFO", logger="distillrec.train.loop"):
        first = train_student(student_params(), small_split, out, ckpt, live)
    first_lines = [m.group(0) for m in epoch_lines(caplog)]
    model, meta = (out / "model.pt").read_bytes(), json.loads((out / "student.json").read_text())
    assert trained == [1, 2, 3] and first["fit"]["epochs"] == 3
    assert [m.group(4) for m in epoch_lines(caplog)] == ["ndcg@10"] * 3
    assert "trained all 3 epochs; best epoch" in caplog.text

    for output in (out, live):   # what `dvc repro -f` removes; the checkpoint folder persists
        shutil.rmtree(output)
    caplog.clear()
    trained.clear()
    with caplog.at_level("INFO", logger="distillrec.train.loop"):
        second = train_student(student_params(), small_split, out, ckpt, live)
    assert trained == [1, 2, 3], "the finished checkpoint stood in for training"
    assert "holds a finished run" in caplog.text and "resuming from" not in caplog.text
    assert [m.group(0) for m in epoch_lines(caplog)] == first_lines   # CPU training is deterministic
    assert (out / "model.pt").read_bytes() == model
    again = json.loads((out / "student.json").read_text())
    assert {k: v for k, v in again["fit"].items() if k not in WALL_TIME} == \
        {k: v for k, v in meta["fit"].items() if k not in WALL_TIME}
    assert second["fit"]["best_valid"] == first["fit"]["best_valid"]
    # the checkpoint folder is left as after the first run: the finished checkpoint, no lock
    assert sorted(p.name for p in ckpt.iterdir()) == [CHECKPOINT]


# --- a teacher family that selects on its validation loss ----------------------------------------

def test_a_causal_teachers_epochs_log_valid_loss_and_a_rerun_trains_again(tmp_path, small_split, caplog):
    from distillrec.teachers.causal import CausalTeacher
    from distillrec.teachers.data import TeacherData
    from tests.test_teacher_causal import tiny

    data = TeacherData.load(small_split)
    cfg = tiny()
    cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"epochs": 2, "patience": 2})})
    with caplog.at_level("INFO", logger="distillrec.train.loop"):
        CausalTeacher.create(cfg, data).fit(data, tmp_path / "ckpt", tmp_path / "live", "run")
        CausalTeacher.create(cfg, data).fit(data, tmp_path / "ckpt", tmp_path / "live", "run")
    lines = epoch_lines(caplog)
    assert [(m.group(1), m.group(2), m.group(4)) for m in lines] == [("1", "2", "loss"), ("2", "2", "loss")] * 2
    assert "valid valid_loss" not in caplog.text and "holds a finished run" in caplog.text
    assert [m.group(0) for m in lines[:2]] == [m.group(0) for m in lines[2:]]
    assert caplog.text.count("trained all 2 epochs; best epoch") == 2
