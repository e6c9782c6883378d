"""dvc.yaml's top-level plots: their data (evaluate/plotdata.py), their templates (.dvc/plots/) and
the offline rendering of DVC's `--json` output (src/distillrec/plots.py)."""

from __future__ import annotations

import csv

import pytest
import yaml
from dvc_render import VegaRenderer

from distillrec.errors import DistillrecError
from distillrec import plots as render
from distillrec.evaluate.plotdata import valid_curves, write_plot_data
from tests.conftest import REPO

TEMPLATES = REPO / ".dvc" / "plots"


def _table() -> dict:
    def test(scale: float) -> dict:
        return {"test": {"ndcg@5": 0.1 * scale, "ndcg@10": 0.2 * scale}}
    return {"popularity": test(0.5),
            "baseline": test(1.0),
            "logit_kd": test(1.2) | {"vs_baseline": {"metric": "ndcg@10", "gain": 0.2, "ci_low": -0.05,
                                                    "ci_high": 0.4, "p_value": 0.01}},
            "prmkd": test(1.0) | {"vs_baseline": {"metric": "ndcg@10", "gain": None, "ci_low": None,
                                                 "ci_high": None, "p_value": None}}}


def _read(path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture
def plot_data(tmp_path):
    tsv = tmp_path / "ndcg@10.tsv"
    tsv.write_text("step\tndcg@10\n0\t0.05\n1\t0.07\n")
    write_plot_data(tmp_path / "plots", _table(), [5, 10], "ndcg@10",
                    valid_curves({"baseline": tsv, "logit_kd": tmp_path / "missing.tsv"}))
    return tmp_path / "plots"


def test_plot_data_is_one_long_file_per_chart_in_table_order(plot_data):
    assert sorted(p.name for p in plot_data.iterdir()) == ["gains.csv", "ndcg_at_k.csv", "valid_curves.csv"]
    ndcg = _read(plot_data / "ndcg_at_k.csv")
    assert [(r["row"], r["k"]) for r in ndcg] == [(row, k) for row in _table() for k in ("5", "10")]
    assert float(ndcg[-1]["ndcg"]) == pytest.approx(0.2)
    assert _read(plot_data / "gains.csv") == [{"row": "logit_kd", "metric": "ndcg@10", "gain": "20.0",
                                               "ci_low": "-5.0", "ci_high": "40.0"}]
    # dvclive's step 0 is epoch 1; a row without a curve file is left out
    assert _read(plot_data / "valid_curves.csv") == [{"row": "baseline", "epoch": "1", "value": "0.05"},
                                                     {"row": "baseline", "epoch": "2", "value": "0.07"}]


def test_dvc_yaml_plots_read_only_what_plotdata_writes(plot_data):
    dvc = yaml.safe_load((REPO / "dvc.yaml").read_text())
    stage_plots = [name for name, stage in dvc["stages"].items() if "plots" in stage.get("do", stage)]
    assert stage_plots == [], "stage-level plots make `dvc plots show` draw every dvclive metric"
    assert "metrics/plots" in [next(iter(o)) if isinstance(o, dict) else o for o in dvc["stages"]["evaluate"]["outs"]]
    for entry in dvc["plots"]:
        (plot_id, plot), = entry.items()
        (path, y), = plot["y"].items()
        assert path.startswith("metrics/plots/"), plot_id
        columns = _read(plot_data / path.removeprefix("metrics/plots/"))[0]
        assert {plot["x"], y, "row"} <= set(columns), plot_id
        assert (TEMPLATES / f"{plot['template']}.json").is_file(), plot_id


def _spec(template: str, path, x: str, y: str, title: str) -> dict:
    """What `dvc plots show --json` returns as an entry's content: the template, filled."""
    points = [row | {"rev": "workspace"} for row in _read(path)]
    return VegaRenderer(points, "plot", template=str(TEMPLATES / f"{template}.json"), title=title,
                        x=x, y=y).get_filled_template()


def test_a_dvc_spec_renders_offline_to_svg_png_and_a_page_without_scripts(plot_data, tmp_path):
    curves = _spec("rows", plot_data / "ndcg_at_k.csv", "k", "ndcg", "Test NDCG@K")
    gains = _spec("gain_interval", plot_data / "gains.csv", "gain", "row", "Gain over the baseline")
    picture = render.svg(curves)
    assert picture.startswith("<svg") and "Test NDCG@K" in picture
    assert all(f">{row}<" in picture for row in _table())  # the legend: one line per row
    result = {"data": {"ndcg_at_k": [{"type": "vega", "revisions": ["workspace"], "content": curves}],
                       "gains": [{"type": "vega", "revisions": ["workspace"], "content": gains}]}}
    index = render.render(result, tmp_path / "out", "dvc plots show")
    page = index.read_text()
    assert page.count("<svg") == 2 and "<script" not in page and "http" not in page.replace(
        'xmlns="http://www.w3.org/2000/svg"', "").replace('xmlns:xlink="http://www.w3.org/1999/xlink"', "")
    assert (tmp_path / "out" / "gains.png").read_bytes().startswith(b"\x89PNG")


def test_a_spec_that_would_fetch_data_fails_instead(tmp_path):
    with pytest.raises(ValueError, match="not allowed"):
        render.svg({"data": {"url": "https://example.com/data.csv"}, "mark": "point"})
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(DistillrecError, match="not a folder this command wrote"):
        render.render({"data": {}}, tmp_path, "dvc plots show")
    assert (tmp_path / "notes.txt").exists()
