"""DVC stage `evaluate`: full-ranking test metrics and inference cost of every row → metrics/.

Rows: popularity, each teacher, the baseline student and each distilled student (mean ± std over
`train.seeds`, with the gain over the baseline and a paired test over users), overall and within
buckets of test users (tail/head target items, short/long histories: `evaluate.buckets`).
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
    for name in params.teachers:
        evaluator.add_teacher(f"teacher-{name}", f"data/teacher/{name}")
    for method in ["none", *params.distill.runs]:
        folder = Path("models/students") / f"{params.student.model}-{method}"
        evaluator.add_runs("baseline" if method == "none" else method,
                           {f"seed{seed}": folder / f"seed{seed}" for seed in params.train.seeds})
    evaluator.compare("baseline", cfg.compare_metric)
    buckets = evaluator.by_bucket("baseline", cfg.compare_metric)
    protocol = ("Full ranking over all items, chronological leave-one-out, ties counted against the "
                f"model; history items {'excluded' if cfg.exclude_history else 'not excluded'}. Students: mean "
                f"± std over seeds {params.train.seeds}; gain and p (paired t-test over users) on "
                f"{cfg.compare_metric} against the baseline.")
    write_reports(evaluator.table, evaluator.rank_table(), cfg.ks, protocol, "metrics", buckets)


if __name__ == "__main__":
    main()
