import typing
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel

from distillrec.errors import ParamsError
from distillrec.params import Params, load_params, parse_params

REPO = Path(__file__).resolve().parents[1]


def unspelled(model: type[BaseModel], raw: dict, path: str = "") -> list[str]:
    """Dotted keys of `model`'s fields (nested sections and named entries included) absent from `raw`."""
    missing = []
    for name, field in model.model_fields.items():
        key = f"{path}{name}"
        if name not in raw:
            missing.append(key)
            continue
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            missing += unspelled(annotation, raw[name], f"{key}.")
        elif typing.get_origin(annotation) is dict:
            entry = typing.get_args(annotation)[1]
            if isinstance(entry, type) and issubclass(entry, BaseModel):
                for child, value in raw[name].items():
                    missing += unspelled(entry, value, f"{key}.{child}.")
    return missing


def test_repository_params_file_is_valid_and_spells_out_every_field():
    load_params(REPO / "params.yaml")
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    assert unspelled(Params, raw) == []  # users see every knob, in every section and entry


def test_the_walk_finds_a_missing_nested_field():
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    del raw["teachers"]["fusion"]["train"]["negatives"], raw["dataset"]["synthetic"]["seed"]
    assert unspelled(Params, raw) == ["dataset.synthetic.seed", "teachers.fusion.train.negatives"]


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        ({"split": {"usr_core": 3}}, "unknown key 'split.usr_core'; allowed keys here: min_rating"),
        ({"dataset": {"source": "imdb"}}, "'dataset.source': Input should be 'synthetic'"),
        ({"split": {"user_core": -1}}, "'split.user_core': Input should be greater than or equal to 0"),
        ({"dataset": {"synthetic": {"n_users": "many"}}}, "'dataset.synthetic.n_users'"),
        ({"ingest": {"on_bad_line": "ignore"}}, "'ingest.on_bad_line': Input should be 'error' or 'skip'"),
        ({"ingest": {"download": 1}}, "'ingest.download': Input should be a valid boolean"),
        ({"bogus_section": {}}, "unknown key 'bogus_section'"),
        ({"dataset": {"synthetic": {"min_length": 30, "max_length": 10}}}, "min_length must be <= max_length"),
        ({"student": {"hidden": 30, "heads": 4}}, "must be divisible by heads"),
        ({"train": {"window_stride": 60}}, "train.window_stride (60) must be <= student.max_length (50)"),
        ({"teachers": {"pod": {"train": {"lrr": 1}}}}, "unknown key 'teachers.pod.train.lrr'; allowed keys here: objective, negatives, sampler, gbce_t, batching, lr,"),
        ({"teachers": {"pod": {"family": "gpt"}}}, "'teachers.pod.family': Input should be 'seq2seq', 'causal', 'id', 'import', 'text' or 'fusion'"),
        ({"teachers": {"a b": {}}}, "teacher name 'a b'"),
        ({"teachers": {"t": {"config": {"d_model": 30, "heads": 4}}}}, "d_model (30) must be divisible by heads"),
        ({"teachers": {"t": {"causal": {"lm_weight": 0.0, "scoring_weight": 0.0}}}}, "cannot both be 0"),
        ({"teachers": {"t": {"export": {"train_positions": "some"}}}}, "teachers.t.export.train_positions"),
    ],
)
def test_bad_params_name_the_key_and_allowed_values(raw, fragment):
    with pytest.raises(ParamsError) as info:
        parse_params(raw)
    assert fragment in str(info.value)


def test_all_errors_are_reported_together():
    with pytest.raises(ParamsError) as info:
        parse_params({"split": {"user_core": -1, "item_core": "x"}})
    assert "split.user_core" in str(info.value) and "split.item_core" in str(info.value)


def test_load_params_errors(tmp_path):
    with pytest.raises(ParamsError, match="not found"):
        load_params(tmp_path / "params.yaml")
    (tmp_path / "params.yaml").write_text("dataset: [unclosed")
    with pytest.raises(ParamsError, match="not valid YAML"):
        load_params(tmp_path / "params.yaml")


def test_default_raw_dir_follows_name():
    assert parse_params({"dataset": {"name": "ml-1m"}}).dataset.raw_dir == Path("data/raw/ml-1m")
    assert parse_params({"dataset": {"path": "/x/y"}}).dataset.raw_dir == Path("/x/y")
