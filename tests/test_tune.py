"""The equal-budget search: its points, the overrides DVC gets, the choice on validation, the tuned table."""

import copy

import numpy as np
import polars as pl
import pytest
import yaml

from distillrec.errors import DistillrecError, ParamsError
from distillrec.evaluate.compare import holm, paired_comparison
from distillrec.params import parse_params
from distillrec.tune import (choose, experiments, final_overrides, markdown, search_points, tuned_table,
                             with_overrides, yaml_value)
from tests.conftest import REPO


def _raw(**tune):
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["distill"]["methods"] = ["logit_kd", "llm_init"]
    raw["distill"]["llm_init"]["combine"] = ["logit_kd"]
    raw["tune"] = {"grid": {"student.dropout": [0.2, 0.5], "train.lr": [0.001, 0.003, 0.01]},
                   "own": {"baseline": {"train.weight_decay": [0.0, 0.01]},
                           "logit_kd": {"distill.logit_kd.weight": [0.5, 1.0]},
                           "llm_init": {"distill.llm_init.scale": [0.02, 0.05]},
                           "llm_init+logit_kd": {"distill.logit_kd.weight": [0.5, 1.0]}},
                   "seeds": [7], "final_seeds": [1, 2, 3]} | tune
    return raw


def test_every_row_gets_the_same_number_of_points_and_each_point_is_valid():
    raw = _raw()
    points = search_points(raw, parse_params(raw))
    assert len(points) == 2 * 3 * 2 and list(points)[:3] == ["tune-0-0", "tune-0-1", "tune-1-0"]
    assert points["tune-0-1"] == {"student.dropout": 0.2, "train.lr": 0.001, "train.weight_decay": 0.01,
                                  "distill.logit_kd.weight": 1.0, "distill.llm_init.scale": 0.05, "train.seeds": [7]}
    # each row sees every grid combination with each of its own values: 12 distinct settings per row
    for key in ("train.weight_decay", "distill.logit_kd.weight", "distill.llm_init.scale"):
        assert len({(p["student.dropout"], p["train.lr"], p[key]) for p in points.values()}) == 12
    params = with_overrides(raw, points["tune-5-1"], "x")
    assert (params.student.dropout, params.train.lr, params.train.weight_decay) == (0.5, 0.01, 0.01)


@pytest.mark.parametrize(("tune", "fragment"), [
    ({"own": {"baseline": {"train.weight_decay": [0.0]}, "logit_kd": {"distill.logit_kd.weight": [0.5, 1.0]}}},
     "every row's axis needs the same number of values (the rows' budgets are equal), got lengths [1, 2]"),
    ({"grid": {"train.lr": [0.001, 0.001]}}, "tune.grid.train.lr: give distinct values"),
    ({"own": {"baseline": {"train.lr": [0.1, 0.2]}}, "grid": {"train.lr": [0.001]}}, "tune.own.baseline.train.lr is also a grid axis"),
])
def test_bad_tune_params_are_named(tune, fragment):
    with pytest.raises(ParamsError) as info:
        parse_params(_raw(**tune))
    assert fragment in str(info.value)


def test_a_point_that_breaks_the_schema_or_names_no_key_fails_before_anything_is_queued():
    raw = _raw(own={"baseline": {"train.weight_decay": [0.0, 0.01]}})  # valid params: the search refuses
    with pytest.raises(ParamsError, match=r"tune.own has no axis for rows \['logit_kd', 'llm_init', "
                                          r"'llm_init\+logit_kd'\] that the DAG trains"):
        search_points(raw, parse_params(raw))
    raw = _raw(grid={"student.dropout": [0.2, 1.5]})
    with pytest.raises(ParamsError, match="overrides of tune-1-0 is invalid:\n  'student.dropout'"):
        search_points(raw, parse_params(raw))
    raw = _raw(grid={"student.dropuot": [0.2, 0.5]})
    with pytest.raises(ParamsError, match="student.dropuot is not a key of params.yaml"):
        search_points(raw, parse_params(raw))


def test_overrides_are_yaml_that_dvc_reads_back_as_the_same_values():
    for value in (0.001, 1e-05, 3e-4, 2.0, 5, True, None, [1, 2, 3], [], "minilm"):
        assert yaml.safe_load(yaml_value(value)) == value, value  # PyYAML is YAML 1.1, the stricter reader
    assert yaml_value(1e-05) == "1.0e-05"


def test_final_run_trains_the_row_at_its_point_with_the_final_seeds():
    params = parse_params(_raw())
    point = {"train.lr": 0.01, "train.seeds": [7]}
    assert final_overrides(params, "llm_init+logit_kd", point) == {
        "train.lr": 0.01, "train.seeds": [1, 2, 3], "distill.methods": [], "distill.llm_init.combine": ["logit_kd"],
        "evaluate.auto": None}
    assert final_overrides(params, "logit_kd", point)["distill.methods"] == ["logit_kd"]
    assert final_overrides(params, "baseline", point)["distill.methods"] == []
    raw = _raw()
    for row in ("baseline", "logit_kd", "llm_init", "llm_init+logit_kd"):  # each final run is a valid params file
        with_overrides(raw, final_overrides(params, row, point), row)


def _show(values: dict[str, dict[str, float]]) -> list:
    """`dvc exp show --json` as DVC 3 writes it: the workspace, then a baseline commit with experiments."""
    exps = [{"revs": [{"rev": f"sha-{name}", "name": name, "experiments": None,
                       "data": {"params": {"params.yaml": {"data": {}}},
                                "metrics": {f"metrics/rows/{row}.json": {"data": {"valid_ndcg@10": v, "ndcg@10": 0.9}}
                                            for row, v in rows.items()}}}],
             "name": name, "executor": {"state": "success"}} for name, rows in values.items()]
    stale = {"metrics": {"metrics/rows/baseline.json": {"data": {"valid_ndcg@10": 0.99}}}}  # the baseline commit's
    for state in ("queued", "running", "failed"):  # DVC fills their data with their baseline commit's metrics
        exps.append({"revs": [{"rev": f"sha-{state}", "name": f"tune-{state}", "data": stale, "experiments": None}],
                     "name": f"tune-{state}", "executor": {"state": state}})
    return [{"rev": "workspace", "name": None, "data": {"metrics": {}}, "experiments": None},
            {"rev": "abc", "name": "main", "data": {"metrics": {}}, "experiments": exps}]


def test_each_row_is_chosen_on_validation_only_and_unfinished_points_are_skipped(caplog):
    raw = _raw(grid={"train.lr": [0.001, 0.003]})
    params = parse_params(raw)
    points = search_points(raw, params)
    valid = {"tune-0-0": {"baseline": 0.20, "logit_kd": 0.30, "llm_init": 0.21, "llm_init+logit_kd": 0.31},
             "tune-0-1": {"baseline": 0.22, "logit_kd": 0.30, "llm_init": 0.25, "llm_init+logit_kd": 0.29},
             "tune-1-0": {"baseline": 0.21, "logit_kd": 0.33, "llm_init": 0.20, "llm_init+logit_kd": 0.30}}
    found = experiments(_show(valid))
    assert set(found) == set(valid) and found["tune-0-1"]["rev"] == "sha-tune-0-1"  # finished ones only
    chosen, lines = choose(params, points, found)
    assert {row: entry["point"] for row, entry in chosen.items()} == {
        "baseline": "tune-0-1", "logit_kd": "tune-1-0", "llm_init": "tune-0-1", "llm_init+logit_kd": "tune-0-0"}
    assert chosen["logit_kd"]["overrides"] == points["tune-1-0"] and chosen["baseline"]["points"] == 3
    assert "1 of 4 points have no results yet" in caplog.text and "tune-1-1" in caplog.text
    assert "| tune-0-1 | 0.001 | 0.2200 * | 0.3000 | 0.2500 * | 0.2900 |" in lines
    # a tie keeps the first point
    tied = copy.deepcopy(valid)
    tied["tune-1-0"]["logit_kd"] = 0.30
    assert choose(params, points, experiments(_show(tied)))[0]["logit_kd"]["point"] == "tune-0-0"
    with pytest.raises(DistillrecError, match="no finished experiment named tune-"):
        choose(params, points, {})


def test_tuned_table_pairs_each_row_with_the_baseline_at_its_own_point(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    if not (REPO / "data" / "processed").is_dir():
        pytest.skip("needs the default split (data/processed): run `dvc repro split`")
    from distillrec.data.splitdata import SplitData

    users = SplitData.load("data/processed").targets("test")[0]
    rng = np.random.default_rng(0)
    raw = _raw(grid={"train.lr": [0.001]})
    params = parse_params(raw)
    rows = ["baseline", "logit_kd", "llm_init", "llm_init+logit_kd"]
    ranks = {row: {f"{row}/seed{s}": rng.integers(1, 40 - 8 * i, len(users)) for s in (1, 2, 3)}
             for i, row in enumerate(rows)}
    frames = {f"sha-tuned-{row}": pl.DataFrame({"user_idx": users, **ranks[row]}) for row in rows}
    chosen = {row: {"point": "tune-0-0", "valid": 0.3, "points": 2, "overrides": {"train.lr": 0.001}} for row in rows}
    found = experiments(_show({f"tuned-{row}": {row: 0.1 + 0.01 * i} for i, row in enumerate(rows)}))
    result = tuned_table(params, chosen, found, ranks_of=frames.__getitem__)
    table = result["rows"]
    base = list(ranks["baseline"].values())
    expected = paired_comparison(base, list(ranks["logit_kd"].values()), "ndcg@10", resamples=9999)
    assert table["logit_kd"]["vs_baseline"]["p_value"] == expected["p_value"]
    assert table["logit_kd"]["vs_baseline"]["gain"] == pytest.approx(expected["gain"])
    adjusted = holm({row: table[row]["vs_baseline"]["p_value"] for row in rows[1:]})
    assert {row: table[row]["vs_baseline"]["p_holm"] for row in rows[1:]} == adjusted
    assert result["auto"] == "llm_init+logit_kd" and "vs_baseline" not in table["baseline"]
    assert table["baseline"]["seeds"] == 3 and table["logit_kd"]["valid"] == 0.11
    text = markdown(result, ["", "", "", "", "| tune-0-0 |"], params)
    assert "| auto → llm_init+logit_kd | tune-0-0: train.lr=0.001 | 3 | 0.1300 |" in text
    with pytest.raises(DistillrecError, match="experiment tuned-baseline has not finished"):
        tuned_table(params, chosen, {}, ranks_of=frames.__getitem__)
    # a row whose final run has not finished is left out, and the report says so
    partial = {name: entry for name, entry in found.items() if name != "tuned-llm_init"}
    result = tuned_table(params, chosen, partial, ranks_of=frames.__getitem__)
    assert result["missing"] == ["llm_init"] and "llm_init" not in result["rows"]
    assert "Not in this table (no finished final experiment): llm_init" in markdown(result, ["", "", "", ""], params)
