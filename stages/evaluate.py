"""DVC stage `evaluate`: full-ranking test metrics and inference cost of every row → metrics/.

Rows: popularity, each teacher, the baseline student and each distilled student (mean ± std over
`train.seeds`), each with its gain over the baseline and a paired test over users, overall and
within buckets of test users (tail/head target items, short/long histories: `evaluate.buckets`).
Headline: eval.json and rows/ (DVC metrics); everything: details.json, report.md, figures/.
"""

from pathlib import Path

from distillrec.evaluate.evaluation import Evaluator
from distillrec.evaluate.report import write_reports
from distillrec.stage import stage


@stage
def main(params):
    cfg = params.evaluate
    evaluator = Evaluator("data/processed", cfg, params.train.device)
    evaluator.add_popularity()
    teachers = [f"teacher-{name}" for name in params.teacher_names]  # trained, then imported
    for name, row in zip(params.teacher_names, teachers):
        evaluator.add_teacher(row, f"data/teacher/{name}")
    curves = {}
    for method in ["none", *params.distill.runs]:
        run = f"{params.student.model}-{method}"
        row = "baseline" if method == "none" else method
        evaluator.add_runs(row, {f"seed{seed}": Path("models/students") / run / f"seed{seed}"
                                 for seed in params.train.seeds})
        curves[row] = (Path("dvclive") / run / f"seed{params.train.seeds[0]}" / "plots" / "metrics" / "valid"
                       / f"{params.train.select_metric}.tsv")
    evaluator.compare("baseline", cfg.compare_metric)
    buckets = evaluator.by_bucket("baseline", cfg.compare_metric)
    if params.distill.runs:  # the distilled student a user should take, chosen on validation only
        evaluator.add_auto(params.auto_candidates, cfg.compare_metric, buckets)
    protocol = ("Full ranking over all items, chronological leave-one-out, ties counted against the "
                f"model; history items {'excluded' if cfg.exclude_history else 'not excluded'}. Students: mean "
                f"± std over seeds {params.train.seeds}; gain and p (paired t-test over users) on "
                f"{cfg.compare_metric} against the baseline, p Holm: Holm–Bonferroni over the table's rows, "
                f"p perm: a paired sign-flip permutation test ({cfg.permutation_resamples} flips) as a check. "
                f"Row auto: the distilled row with the best validation {cfg.compare_metric} "
                f"(candidates: {', '.join(params.auto_candidates)}); test never chooses.")
    write_reports(evaluator.table, evaluator.rank_table(), cfg.ks, protocol, "metrics", buckets,
                  teachers=teachers, curve_files=curves)


if __name__ == "__main__":
    main()
