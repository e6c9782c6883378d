"""The release's README.md: a model card in the Hugging Face convention (YAML front matter, then
what a team needs before deploying: data, quality with its uncertainty, provenance, cost, limits)."""

from __future__ import annotations

import platform
from pathlib import Path
from typing import Any

from distillrec.params import Params


NAMES = {"sasrec": "SASRec", "gru4rec": "GRU4Rec", "caser": "Caser", "bert4rec": "BERT4Rec"}


def _pct(value: float) -> str:
    return f"{100 * value:+.1f} %"


def _quality(details: dict[str, Any], row: str, seed: int, metric: str) -> list[str]:
    """Test HR/NDCG/MRR at the K of `metric` (evaluate.compare_metric): this seed, the row's mean, the baseline."""
    info, base, k = details[row], details["baseline"], metric.split("@")[1]
    names = [f"hr@{k}", f"ndcg@{k}", f"mrr@{k}"]
    run = info["runs"][f"seed{seed}"]["test"]
    lines = [f"| | HR@{k} | NDCG@{k} | MRR@{k} |", "|---|---|---|---|",
             f"| this model ({row}, seed {seed}) | " + " | ".join(f"{run[m]:.4f}" for m in names) + " |"]
    if len(info["runs"]) > 1:
        mean, std = info["test"], info["test_std"]
        lines.append(f"| {row}, mean ± std over {len(info['runs'])} seeds | "
                     + " | ".join(f"{mean[m]:.4f} ± {std[m]:.4f}" for m in names) + " |")
    lines.append("| baseline (same student, no teacher) | " + " | ".join(f"{base['test'][m]:.4f}" for m in names) + " |")
    vs = info.get("vs_baseline")
    if vs:
        lines += ["", f"Gain in test {vs['metric']} over the baseline: **{_pct(vs['gain'])}** (95 % interval "
                      f"{_pct(vs['ci_low'])} … {_pct(vs['ci_high'])}; paired t-test over users p = {vs['p_value']:.2g}, "
                      f"Holm-adjusted over the table's rows p = {vs['p_holm']:.2g}, sign-flip permutation p = "
                      f"{vs.get('p_perm', float('nan')):.2g})."]
    return lines


def _selection(details: dict[str, Any], row: str, params: Params) -> str:
    if params.release.row != "best":
        return f"Row `{row}` was named in params (`release.row`), not chosen."
    sel = details["auto"]["selection"]
    ranked = sorted(sel["candidates"].items(), key=lambda kv: -kv[1])
    listed = ", ".join(f"{name} {value:.4f}" for name, value in ranked)
    return (f"Chosen on **validation** {params.evaluate.compare_metric} among the distilled rows ({listed}); "
            "no test figure took part in the choice.")


def model_card(*, row: str, seed: int, details: dict[str, Any], data: dict[str, Any], params: Params,
               written: dict[str, Any], latency: dict[str, dict[str, float]], example: list[str],
               folder: Path) -> str:
    """The card's markdown; `written` holds the config and ONNX parity of the student (and teacher)."""
    config, parity = written["config"], written["parity"]
    arch = config["architecture"]
    size = sum(f.stat().st_size for f in folder.glob("model.*")) / 2**20
    distill = config.get("distill") or {}
    teachers = ", ".join(distill.get("teachers", [])) if isinstance(distill, dict) else ""
    sizes = data
    dataset = params.dataset
    history = ",".join(example[-3:])
    teacher_note = (f"`teacher/` holds teacher `{written['teacher']['config']['teacher']}` "
                    f"({written['teacher']['config']['family']} family) folded into the same format, for "
                    "side-by-side lists on the page." if "teacher" in written else "No teacher is shipped beside it.")
    lines = [
        "---",
        "library_name: distillrec",
        "tags: [recommendation, sequential-recommendation, knowledge-distillation, onnx]",
        f"datasets: [{dataset.name}]",
        "metrics: [ndcg, hit-rate, mrr]",
        "---",
        "",
        f"# distillrec student: {arch['model']} ({row})",
        "",
        f"A {NAMES[arch['model']]} sequential recommender with "
        f"{written['params']:,} parameters ({size:.2f} MiB of weights per format) that ranks the "
        f"{config['n_items']:,} items of its catalogue after a history of item ids. "
        + (f"Trained with the `{row}` distillation recipe from teacher(s) {teachers}: what the teacher knows is "
           "in its weights; serving needs no teacher or language model." if row != "baseline" else
           "Trained without a teacher (the baseline)."),
        "",
        "## Data and split",
        "",
        f"- Dataset: `{dataset.name}` (source `{dataset.source}`): {sizes['users']:,} users, {sizes['items']:,} items, "
        f"{sizes['interactions']:,} interactions in the split.",
        "- Split: leave-one-out by time: each user's last item is the test target, the one before it the "
        "validation target, the rest train. Ranking is over the full catalogue (no sampled negatives).",
        "",
        "## Quality (test split, every user)",
        "",
        *_quality(details, row, seed, params.evaluate.compare_metric),
        "",
        _selection(details, row, params),
        "",
        "## Provenance",
        "",
        f"- Row `{row}`, method `{config['method']}`, seed {seed}; weights from `{config['source']}`.",
        f"- Architecture: {', '.join(f'{k}={v}' for k, v in sorted(arch.items()) if not isinstance(v, dict) or k == arch['model'])}; histories longer than "
        f"{arch['max_length']} items are cut to the most recent {arch['max_length']}.",
        (f"- Input item offsets of embedding distillation are folded in ({config['item_offsets'][0]:,} x "
         f"{config['item_offsets'][1]})." if config.get("item_offsets") else "- No input item offsets."),
        f"- {teacher_note}",
        "",
        "## Use",
        "",
        "```python",
        "import distillrec",
        "model = distillrec.load(\"models/release\", backend=\"onnx\")   # or backend=\"torch\"",
        f"print(model.recommend([{example[-3:]!r}], k=10)[0].item_ids)",
        "```",
        "",
        "```bash",
        "distillrec serve --model models/release --port 8000          # POST /recommend, GET / (a page)",
        f"distillrec recommend --model models/release --history {history} --k 10",
        "```",
        "",
        "## Cost",
        "",
        f"One history, k = 10, one thread, on {platform.machine()} ({platform.system()}), measured by the "
        "release stage (`release.latency_repeats` calls after a warm-up):",
        "",
        "| backend | p50 ms | p99 ms |",
        "|---|---|---|",
        *(f"| {b} | {v['p50']:.3f} | {v['p99']:.3f} |" for b, v in latency.items()),
        "",
        f"ONNX parity: on {parity['histories']:,} histories (full windows and the same cut to 5 items, padding "
        f"included) ONNX Runtime gives torch's top-10 on {parity['same_top10']:,}, max |score difference| "
        f"{parity['max_abs_diff']:.1e} (tolerance {parity['tolerance']:g}).",
        "",
        "## Intended use and limitations",
        "",
        "- Next-item recommendation for histories of items **from this catalogue** (ID-only model: an item "
        "unseen in training has no learnt vector and cannot be given or recommended; titles are shown, never read).",
        "- Items no training sequence held keep near-random vectors; users with no history get no list.",
        "- Quality figures are from one offline split of one dataset; they say nothing about other catalogues "
        "or about online metrics. Popular items are easier: see the evaluation report's tail-item bucket.",
        "- Scores are unnormalised logits, comparable within one list only.",
        "",
        "## Files",
        "",
        "`model.safetensors` + `config.json` (rebuild with no pickle), `model.onnx` (history [batch, length] "
        "int64, left-padded with 0 -> scores [batch, n_items + 1]; column 0 is padding), `item_map.parquet` "
        "(item_idx, item_id, title), this card.",
        "",
    ]
    return "\n".join(lines)
