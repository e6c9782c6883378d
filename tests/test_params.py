import typing
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel

from distillrec.errors import ParamsError
from distillrec.params import (TEACHER_FAMILIES, CausalTeacherParams, FusionTeacherParams, IdTeacherParams,
                               ImportParams, Params, Seq2SeqTeacherParams, TextTeacherParams, load_params, parse_params)

REPO = Path(__file__).resolve().parents[1]


def _entry_model(annotation, value) -> type[BaseModel] | None:
    """The section class `value` is validated as: a model, or the member of a union discriminated
    on `family` (the teachers) that `value` names."""
    if typing.get_origin(annotation) is typing.Annotated:
        annotation = typing.get_args(annotation)[0]
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    members = [m for m in typing.get_args(annotation) if isinstance(m, type) and issubclass(m, BaseModel)]
    if members and all("family" in m.model_fields for m in members):
        chosen = [m for m in members if typing.get_args(m.model_fields["family"].annotation) == (value["family"],)]
        assert len(chosen) == 1, f"family {value['family']!r} names no member"
        return chosen[0]
    return None


def unspelled(model: type[BaseModel], raw: dict, path: str = "") -> list[str]:
    """Dotted keys of `model`'s fields (nested sections, named entries and the member of a discriminated
    union that an entry's `family` picks) absent from `raw`."""
    missing = []
    for name, field in model.model_fields.items():
        key = f"{path}{name}"
        if name not in raw:
            missing.append(key)
            continue
        annotation = field.annotation
        if typing.get_origin(annotation) is dict:
            for child, value in raw[name].items():
                entry = _entry_model(typing.get_args(annotation)[1], value)
                if entry is not None:
                    missing += unspelled(entry, value, f"{key}.{child}.")
        elif (section := _entry_model(annotation, raw[name])) is not None:
            missing += unspelled(section, raw[name], f"{key}.")
    return missing


def test_repository_params_file_is_valid_and_spells_out_every_field():
    load_params(REPO / "params.yaml")
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    assert unspelled(Params, raw) == []  # users see every knob, in every section and entry


def test_the_walk_finds_a_missing_nested_field():
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    del raw["teachers"]["fusion"]["train"]["negatives"], raw["dataset"]["synthetic"]["seed"]
    del raw["teachers"]["llm"]["model"]["lora"]["r"], raw["teachers"]["llm"]["export"]["ranking"]
    assert unspelled(Params, raw) == ["dataset.synthetic.seed", "teachers.fusion.train.negatives",
                                      "teachers.llm.model.lora.r", "teachers.llm.export.ranking"]


def test_the_walk_follows_each_teachers_family_and_the_imports():
    """Each family's own fields, not another's: an entry of every family and an import, spelled out."""
    full = {"seq2seq": Seq2SeqTeacherParams(), "causal": CausalTeacherParams(), "id": IdTeacherParams(),
            "text": TextTeacherParams(model={"base_model": "m"}),
            "fusion": FusionTeacherParams(model={"embedding": "lm"})}
    raw = {"teachers": {name: cfg.model_dump(mode="json") for name, cfg in full.items()},
           "imports": {"ext": ImportParams(format="dllm2rec", path="ext", rows="rows.csv").model_dump(mode="json")},
           "embed": {"lm": {}}}
    assert [k for k in unspelled(Params, raw) if k.startswith(("teachers", "imports"))] == []
    del raw["teachers"]["seq2seq"]["model"]["tasks"], raw["teachers"]["text"]["train"]["encoder_lr"]
    del raw["imports"]["ext"]["item_ids"]
    assert [k for k in unspelled(Params, raw) if k.startswith(("teachers", "imports"))] == [
        "teachers.seq2seq.model.tasks", "teachers.text.train.encoder_lr", "imports.ext.item_ids"]


def _defaults(model: type[BaseModel], path: str = "") -> dict[str, object]:
    """Dotted key -> default of every field with a default (nested sections walked)."""
    found = {}
    for name, field in model.model_fields.items():
        section = _entry_model(field.annotation, {})
        if section is not None:
            found |= _defaults(section, f"{path}{name}.")
        elif not field.is_required():
            found[f"{path}{name}"] = field.get_default(call_default_factory=True)
    return found


def _flat(raw: dict, path: str = "") -> dict[str, object]:
    return {k: v for name, value in raw.items()
            for k, v in (_flat(value, f"{path}{name}.") if isinstance(value, dict) and value else
                         {f"{path}{name}": value}).items()}


def test_teacher_defaults_are_the_default_runs_values():
    """One source of defaults: each family the default run trains has params.yaml's values as its defaults
    (a field the default run leaves at null, or that names another entry, aside)."""
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    for name, entry in raw["teachers"].items():
        cls = TEACHER_FAMILIES[entry["family"]]
        written, defaults = _flat(entry), _defaults(cls)
        differ = {k: (v, defaults[k]) for k, v in written.items() if k in defaults and defaults[k] != v}
        assert differ == {}, f"teachers.{name}: params.yaml value vs params.py default"
        assert set(written) - set(defaults) <= {"model.embedding"}, name  # required: names an `embed` entry


# what params.yaml fills in on purpose: the default run's named entries and the names that point at them
NAMED = {"embed", "teachers", "imports", "distill.methods", "distill.teachers", "distill.dllm2rec.ed_table",
         "distill.llm_init.embedding", "tune.own"}  # tune.own: an axis per row of distill.methods


def test_every_other_default_is_the_default_runs_value():
    """params.py and params.yaml agree on every setting outside the named entries."""
    written = _flat({k: v for k, v in yaml.safe_load((REPO / "params.yaml").read_text()).items()})
    defaults = _flat(Params().model_dump(mode="json"))
    differ = {k: (v, defaults.get(k)) for k, v in written.items()
              if not any(k == n or k.startswith(n + ".") for n in NAMED) and defaults.get(k) != v}
    assert differ == {}, "params.yaml value vs params.py default"


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
        ({"train": {"lr_schedule": "linear"}}, "'train.lr_schedule': Input should be 'constant' or 'cosine'"),
        ({"teachers": {"pod": {"family": "id", "train": {"lrr": 1}}}}, "unknown key 'teachers.pod.train.lrr'; allowed keys here: lr, weight_decay, batch_size, epochs, patience, seed, device, threads, objective,"),
        ({"teachers": {"pod": {"family": "seq2seq", "train": {"lrr": 1}}}}, "unknown key 'teachers.pod.train.lrr'; allowed keys here: lr, weight_decay,"),
        ({"teachers": {"pod": {"family": "gpt"}}}, "'teachers.pod.family': 'gpt' is not a teacher family; expected one of seq2seq, causal, id, text, fusion"),
        ({"teachers": {"pod": {}}}, "'teachers.pod': no `family`"),
        ({"teachers": {"ext": {"family": "import"}}}, "'teachers.ext.family': import is no longer a teacher family: another system's teacher files go under `imports.ext`"),
        ({"teachers": {"a b": {"family": "id"}}}, "teachers name 'a b'"),
        ({"teachers": {"t": {"family": "causal", "model": {"config": {"d_model": 30, "heads": 4}}}}}, "d_model (30) must be divisible by heads"),
        ({"teachers": {"t": {"family": "causal", "model": {"lm_weight": 0.0, "scoring_weight": 0.0}}}}, "cannot both be 0"),
        ({"teachers": {"t": {"family": "seq2seq", "model": {"tasks": ["explanation"]}}}}, "tasks must include 'sequential'"),
        ({"teachers": {"t": {"family": "seq2seq", "export": {"top_k": 10, "beams": 5}}}}, "beams (5) must be >= top_k (10)"),
        ({"teachers": {"t": {"family": "id", "export": {"train_positions": "some"}}}}, "teachers.t.export.train_positions"),
        ({"teachers": {"t": {"family": "id", "model": {"max_length": 10}, "train": {"window_stride": 11}}}}, "train.window_stride (11) must be <= model.max_length (10)"),
        # another family's key, or the old layout's, is an error naming it
        ({"teachers": {"t": {"family": "fusion", "model": {"embedding": "lm", "max_history": 3}}}, "embed": {"lm": {}}},
         "unknown key 'teachers.t.model.max_history'; allowed keys here: hidden, layers, heads, dropout, max_length, embedding"),
        ({"teachers": {"t": {"family": "seq2seq", "export": {"ranking": "scoring"}}}},
         "unknown key 'teachers.t.export.ranking'; allowed keys here: top_k, train_positions, batch_size, beams, explanation_beams"),
        ({"teachers": {"t": {"family": "causal", "train": {"objective": "ce"}}}}, "unknown key 'teachers.t.train.objective'"),
        ({"teachers": {"t": {"family": "id", "model": {"hidden": 64}, "train": {"sample": 10}}}}, "unknown key 'teachers.t.train.sample'"),
        ({"teachers": {"t": {"family": "fusion", "model": {"embedding": "lm"}, "causal": {}}}, "embed": {"lm": {}}},
         "unknown key 'teachers.t.causal'; allowed keys here: family, model, train, export"),
        ({"teachers": {"t": {"family": "causal", "base_model": "x"}}}, "unknown key 'teachers.t.base_model'"),
        # imports
        ({"imports": {"x": {"format": "dllm2rec", "path": "ext"}}}, "format dllm2rec needs rows"),
        ({"imports": {"x": {"format": "dllm2rec", "path": "ext", "rows": "/abs/rows.csv"}}}, "must be a file name inside `path`"),
        ({"imports": {"x": {"format": "dllm2rec", "path": "ext", "rows": "r.csv", "item_ids": "../ids.csv"}}}, "item_ids '../ids.csv' must be a file name inside `path`"),
        ({"imports": {"x": {"format": "parquet", "path": "ext", "rows": "r.csv"}}}, "rows applies to format dllm2rec only"),
        ({"imports": {"x": {"format": "parquet"}}}, "'imports.x.path': Field required"),
        ({"imports": {"x": {"path": "ext", "bogus": 1}}}, "unknown key 'imports.x.bogus'; allowed keys here: format, path, rows, item_ids"),
        ({"imports": {"t": {"path": "ext"}}, "teachers": {"t": {"family": "id"}}}, "t: named under both teachers and imports"),
        ({"evaluate": {"auto": ["prmkd"]}, "distill": {"methods": ["logit_kd"], "teachers": ["t"]},
          "imports": {"t": {"path": "ext"}}}, "evaluate.auto ['prmkd']: name rows the DAG trains (distill.methods and "
                                              "llm_init+<combine>: logit_kd), or null for all of them"),
        ({"evaluate": {"auto": []}}, "evaluate.auto []: name rows the DAG trains"),
        ({"evaluate": {"permutation_resamples": -1}}, "'evaluate.permutation_resamples': Input should be greater than or equal to 0"),
        ({"distill": {"methods": ["prmkd"], "teachers": ["t", "nope"]}, "imports": {"t": {"path": "ext"}}},
         "distill.teachers ['nope'] are not configured under teachers or imports (configured: t)"),
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


def test_distill_teachers_may_name_an_import():
    params = parse_params({"distill": {"methods": ["prmkd"], "teachers": ["fusion", "ext"]},
                           "teachers": {"fusion": {"family": "id"}},
                           "imports": {"ext": {"format": "dllm2rec", "path": "ext", "rows": "rows.csv"}}})
    assert params.teacher_names == ["fusion", "ext"]


def test_teacher_lr_schedule_reaches_the_students_trainer():
    from distillrec.teachers.studentbacked import train_params
    params = parse_params({"teachers": {"t": {"family": "id", "train": {"window_stride": 50, "lr_schedule": "cosine"}}}})
    train = train_params(params.teachers["t"])
    assert (train.window_stride, train.lr_schedule) == (50, "cosine")


@pytest.mark.parametrize("raw", [{"train": {"lr": float("inf")}}, {"distill": {"logit_kd": {"weight": float("inf")}}},
                                 {"evaluate": {"buckets": {"tail_share": float("nan")}}}])
def test_non_finite_numbers_are_refused_in_every_section(raw):
    from distillrec.errors import ParamsError
    from distillrec.params import parse_params

    with pytest.raises(ParamsError, match="Input should be a finite number"):
        parse_params(raw)
