"""DVC stage `evaluate`: full-ranking test metrics and inference cost of every row → metrics/."""

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
    evaluator.add_student("baseline", f"models/students/{params.student.model}-none")
    protocol = ("Full ranking over all items, chronological leave-one-out, ties counted against the "
                f"model; history items {'excluded' if cfg.exclude_history else 'not excluded'}.")
    write_reports(evaluator.table, evaluator.rank_table(), cfg.ks, protocol, "metrics")


if __name__ == "__main__":
    main()
