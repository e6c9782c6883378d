"""`python -m distillrec tune`: the same tuning budget for every row, through DVC's experiment queue.

A gain over a baseline whose settings were never searched overstates the method, so each row
(the baseline and every distilled row) is searched over the same number of settings and each
picks its own on validation; the test split is read only by `report`, after every choice is made.

* `queue`: one experiment per point of `tune` (params.yaml): point (g, j) sets the g-th combination
  of the shared `grid` and the j-th value of every row's own axis (`own`, zipped), with
  `train.seeds = tune.seeds`. Every point is checked against the params schema before anything
  is queued. Then `dvc queue start` (or `dvc exp run --run-all`) trains them.
* `collect`: every finished point's validation metric per row (`metrics/rows/<row>.json`,
  `valid_<compare_metric>`), and each row's chosen point: the best validation value (ties: the
  first point) -> `<out>/chosen.yaml`.
* `final`: one experiment per row at its chosen point, with `train.seeds = tune.final_seeds`,
  training that row (and the baseline the DAG always trains).
* `report`: each row's test ranks from its final experiment against the baseline's from its own,
  paired tests over users, Holm over the rows, and row `auto` (the distilled row with the best
  final validation) -> `<out>/report.md`, `<out>/tuned.json`.
"""

from __future__ import annotations

import argparse
import copy
import io
import itertools
import json
import logging
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import yaml

from distillrec.data.splitdata import SplitData
from distillrec.errors import DistillrecError, ParamsError
from distillrec.evaluate.buckets import assign_buckets
from distillrec.evaluate.compare import holm, paired_comparison, per_user
from distillrec.io import atomic_file, setup_logging, write_json
from distillrec.params import PARAMS_FILE, Params, parse_params

log = logging.getLogger("distillrec.tune")

SEARCH, FINAL = "tune", "tuned"  # experiment name prefixes: tune-<g>-<j>, tuned-<row>


def yaml_value(value: Any) -> str:
    """A value as DVC's `-S key=value` reads it (YAML); floats always carry a '.' (YAML 1.1 reads
    1e-05 as a string)."""
    if isinstance(value, float):
        text = repr(value)
        mantissa, e, exponent = text.partition("e")
        return f"{mantissa}.0e{exponent}" if e and "." not in mantissa else text
    return json.dumps(value)


def with_overrides(raw: dict[str, Any], overrides: dict[str, Any], origin: str) -> Params:
    """The params of one experiment: `raw` with each dotted key replaced, validated as a whole."""
    raw = copy.deepcopy(raw)
    for key, value in overrides.items():
        node = raw
        *parents, last = key.split(".")
        for part in parents:
            if not isinstance(node.get(part), dict):
                raise ParamsError(f"{origin}: {key} is not a key of params.yaml (no section {part!r})")
            node = node[part]
        if last not in node:
            raise ParamsError(f"{origin}: {key} is not a key of params.yaml")
        node[last] = value
    return parse_params(raw, origin)


def rows_of(params: Params) -> list[str]:
    return ["baseline", *params.distill.runs]


def search_points(raw: dict[str, Any], params: Params) -> dict[str, dict[str, Any]]:
    """Experiment name -> its `-S` overrides, for every (grid combination, own-axis index)."""
    tune = params.tune
    untuned = [row for row in rows_of(params) if row not in tune.own]
    if untuned:  # checked here, not at every stage start: a DAG may train rows nobody searches
        raise ParamsError(f"tune.own has no axis for rows {untuned} that the DAG trains: give each row an own "
                          "axis (params.yaml `tune`; the same budget for every row)")
    keys = sorted(tune.grid)
    combos = list(itertools.product(*(tune.grid[key] for key in keys)))
    axes = {key: values for row in rows_of(params) for key, values in tune.own[row].items()}
    width = len(next(iter(axes.values())))
    points = {}
    for g, combo in enumerate(combos):
        for j in range(width):
            overrides = {**dict(zip(keys, combo)), **{key: values[j] for key, values in axes.items()},
                         "train.seeds": list(tune.seeds)}
            name = f"{SEARCH}-{g}-{j}"
            with_overrides(raw, overrides, f"{PARAMS_FILE} with the overrides of {name}")
            points[name] = overrides
    return points


def final_overrides(params: Params, row: str, point: dict[str, Any]) -> dict[str, Any]:
    """A row's chosen point with the final seeds, training only that row (and the baseline)."""
    methods, combine = [], []
    if row.startswith("llm_init+"):
        combine = [row.removeprefix("llm_init+")]
    elif row != "baseline":
        methods = [row]
    return {**point, "train.seeds": list(params.tune.final_seeds), "distill.methods": methods,
            "distill.llm_init.combine": combine, "evaluate.auto": None}


def queue(points: dict[str, dict[str, Any]], dry: bool) -> None:
    """`dvc exp run --queue` for each point (printed only with `dry`)."""
    for name, point in points.items():
        command = ["dvc", "exp", "run", "--queue", "-n", name,
                   *[arg for key, value in point.items() for arg in ("-S", f"{key}={yaml_value(value)}")]]
        print(" ".join(command))
        if not dry and subprocess.run(command).returncode:
            raise DistillrecError(f"dvc could not queue {name} (its message is above)")


def experiments(show: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """`dvc exp show --json` -> finished experiment name -> {rev, metrics}. A queued, running
    or failed one is left out: DVC fills their data with their baseline commit's metrics. DVC lists
    the newest commit first: a name run again on a later commit is that later run."""
    found: dict[str, dict[str, Any]] = {}
    for commit in show:
        for experiment in commit.get("experiments") or []:
            if (experiment.get("executor") or {}).get("state", "success") != "success":
                continue
            for rev in experiment.get("revs") or []:
                name, data = rev.get("name") or experiment.get("name"), rev.get("data") or {}
                if name and data.get("metrics") and name not in found:
                    found[name] = {"rev": rev.get("rev"),
                                   "metrics": {path: entry.get("data", {}) for path, entry in data["metrics"].items()}}
    return found


def dvc_experiments(commits: int) -> dict[str, dict[str, Any]]:
    """The experiments of the last `commits` commits (an experiment belongs to the commit it was
    queued on; later commits would hide it from a plain `dvc exp show`)."""
    result = subprocess.run(["dvc", "exp", "show", "--json", "-n", str(commits)], capture_output=True, text=True)
    if result.returncode:
        raise DistillrecError(f"dvc exp show --json failed: {result.stderr.strip()}")
    return experiments(json.loads(result.stdout))


def valid_value(experiment: dict[str, Any], row: str, metric: str) -> float | None:
    return experiment["metrics"].get(f"metrics/rows/{row}.json", {}).get(f"valid_{metric}")


def choose(params: Params, points: dict[str, dict[str, Any]], found: dict[str, dict[str, Any]]
           ) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """Each row's chosen point on validation only, and the table of every point's values (lines)."""
    metric, rows = params.evaluate.compare_metric, rows_of(params)
    missing = [name for name in points if name not in found]
    if missing:
        log.warning("%d of %d points have no results yet (queued, running or failed): %s", len(missing),
                    len(points), ", ".join(missing))
    done = [name for name in points if name in found]
    if not done:
        raise DistillrecError(f"no finished experiment named {SEARCH}-*: run `python -m distillrec tune queue`, "
                              "then `dvc queue start`, and wait for `dvc queue status` to show them done")
    values = {name: {row: valid_value(found[name], row, metric) for row in rows} for name in done}
    chosen = {}
    for row in rows:
        scored = [(values[name][row], name) for name in done if values[name][row] is not None]
        if not scored:
            raise DistillrecError(f"no finished point has a validation {metric} for row {row}")
        best = max(scored, key=lambda item: item[0])  # max keeps the first of equal values
        chosen[row] = {"point": best[1], "valid": best[0], "points": len(scored),
                       "overrides": points[best[1]]}
    head = ["point", *sorted(params.tune.grid), *rows]
    lines = [f"Validation {metric} of every searched point (seeds {params.tune.seeds}); * = the row's choice", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name in done:
        cells = [name, *[yaml_value(points[name][key]) for key in sorted(params.tune.grid)]]
        cells += ["–" if values[name][row] is None else
                  f"{values[name][row]:.4f}{' *' if chosen[row]['point'] == name else ''}" for row in rows]
        lines.append("| " + " | ".join(cells) + " |")
    return chosen, lines


def experiment_ranks(rev: str) -> pl.DataFrame:
    """metrics/ranks.parquet of an experiment, read from DVC's cache."""
    import dvc.api

    with dvc.api.open("metrics/ranks.parquet", rev=rev, mode="rb") as handle:
        return pl.read_parquet(io.BytesIO(handle.read()))


def run_ranks(frame: pl.DataFrame, row: str) -> list[np.ndarray]:
    runs = [column for column in frame.columns if column.startswith(f"{row}/")]
    return [np.array(frame[column].to_numpy()) for column in runs]  # writable: torch reads it


def tuned_table(params: Params, chosen: dict[str, dict[str, Any]], found: dict[str, dict[str, Any]],
                ranks_of=experiment_ranks) -> dict[str, Any]:
    """Every row at its own chosen point (final seeds) against the baseline at its own: test mean ±
    std over seeds, gain, 95 % interval, p, Holm's p, the permutation check and the tail bucket."""
    cfg, metric = params.evaluate, params.evaluate.compare_metric
    data = SplitData.load("data/processed")
    masks, _ = assign_buckets(data, cfg.buckets)
    frames, table = {}, {}
    missing = [row for row in chosen if f"{FINAL}-{row}" not in found]
    if "baseline" in missing:
        raise DistillrecError(f"experiment {FINAL}-baseline has not finished: run `python -m distillrec tune final`, "
                              "then `dvc queue start`")
    if missing:
        log.warning("rows without a finished final experiment, left out of the table: %s", ", ".join(missing))
    for row in chosen:
        if row not in missing:
            frames[row] = ranks_of(found[f"{FINAL}-{row}"]["rev"])
    users = frames["baseline"]["user_idx"].to_numpy()
    if len(users) != len(masks["tail"]):
        raise DistillrecError("the experiments were ranked on another split than data/processed: run "
                              "`dvc repro split` with the same params first")
    base = run_ranks(frames["baseline"], "baseline")
    for row, frame in frames.items():
        if not np.array_equal(frame["user_idx"].to_numpy(), users):
            raise DistillrecError(f"{FINAL}-{row} ranked other test users than {FINAL}-baseline")
        runs = run_ranks(frame, row)
        per_seed = [float(per_user([r], metric).mean()) for r in runs]
        entry = {"point": chosen[row]["point"], "overrides": chosen[row]["overrides"],
                 "search_valid": chosen[row]["valid"], "seeds": len(runs),
                 "valid": valid_value(found[f"{FINAL}-{row}"], row, metric),
                 "test": float(np.mean(per_seed)), "test_std": float(np.std(per_seed, ddof=1)) if len(runs) > 1 else 0.0}
        if row != "baseline":
            entry["vs_baseline"] = paired_comparison(base, runs, metric, resamples=cfg.permutation_resamples)
            entry["tail"] = paired_comparison(base, runs, metric, masks["tail"])
        table[row] = entry
    adjusted = holm({row: entry["vs_baseline"]["p_value"] for row, entry in table.items() if "vs_baseline" in entry})
    for row, p in adjusted.items():
        table[row]["vs_baseline"]["p_holm"] = p
    distilled = [row for row in table if row != "baseline" and table[row]["valid"] is not None]
    return {"metric": metric, "rows": table, "missing": missing, "points": chosen["baseline"]["points"],
            "auto": max(distilled, key=lambda row: table[row]["valid"]) if distilled else None}


def markdown(result: dict[str, Any], search_lines: list[str], params: Params) -> str:
    metric, rows = result["metric"], result["rows"]

    def pct(value: float | None) -> str:
        return "" if value is None else f"{100 * value:+.1f}%"

    def p(value: float | None) -> str:
        return "" if value is None else f"{value:.2g}"

    head = ["row", "chosen point (validation)", "seeds", f"valid {metric}", f"test {metric}", "gain", "95 % CI",
            "p", "p Holm", "p perm", "tail gain", "tail p"]
    lines = [f"# Each row tuned: test {metric} at its own validation-chosen point", "",
             f"Search: {result['points']} points per row (seeds {params.tune.seeds}), each row chosen on "
             f"validation {metric}; then each row at its point with seeds {params.tune.final_seeds}, against the "
             "baseline at its own point (paired tests over users; Holm over the rows).", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row, entry in rows.items():
        versus, tail = entry.get("vs_baseline", {}), entry.get("tail", {})
        ci = "" if versus.get("ci_low") is None else f"{pct(versus['ci_low'])} … {pct(versus['ci_high'])}"
        label = f"auto → {row}" if row == result["auto"] else row
        point = ", ".join(f"{key}={yaml_value(value)}" for key, value in entry["overrides"].items()
                          if key != "train.seeds")
        lines.append("| " + " | ".join([
            label, f"{entry['point']}: {point}", str(entry["seeds"]),
            "" if entry["valid"] is None else f"{entry['valid']:.4f}", f"{entry['test']:.4f} ± {entry['test_std']:.4f}",
            pct(versus.get("gain")), ci, p(versus.get("p_value")), p(versus.get("p_holm")), p(versus.get("p_perm")),
            pct(tail.get("gain")), p(tail.get("p_value"))]) + " |")
    if result["missing"]:
        lines += ["", f"Not in this table (no finished final experiment): {', '.join(result['missing'])}; Holm "
                  "and auto cover the rows above only."]
    return "\n".join([*lines, "", "## The search", "", *search_lines]) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m distillrec tune", description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["queue", "collect", "final", "report"])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out/tune"),
                        help="where collect and report write (chosen.yaml, report.md, tuned.json)")
    parser.add_argument("--dry", action="store_true", help="queue/final: print the dvc commands only")
    parser.add_argument("--commits", type=int, default=10,
                        help="collect/final/report: read the experiments of the last N commits")
    args = parser.parse_args(argv)
    setup_logging(logging.INFO)
    try:
        raw = yaml.safe_load(Path(PARAMS_FILE).read_text())
        params = parse_params(raw)
        points = search_points(raw, params)
        if args.command == "queue":
            queue(points, args.dry)
            return
        found = dvc_experiments(args.commits)
        chosen, search_lines = choose(params, points, found)
        if args.command == "collect":
            print("\n".join(search_lines))
            with atomic_file(args.out / "chosen.yaml") as tmp:
                tmp.write_text(yaml.safe_dump(chosen, sort_keys=False))
            return
        if args.command == "final":
            finals = {f"{FINAL}-{row}": final_overrides(params, row, entry["overrides"])
                      for row, entry in chosen.items()}
            for name, overrides in finals.items():
                with_overrides(raw, overrides, f"{PARAMS_FILE} with the overrides of {name}")
            queue(finals, args.dry)
            return
        result = tuned_table(params, chosen, found)
        text = markdown(result, search_lines, params)
        print(text)
        write_json(args.out / "tuned.json", result)
        with atomic_file(args.out / "report.md") as tmp:
            tmp.write_text(text)
    except DistillrecError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
