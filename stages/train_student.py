"""DVC stage `train_student`: the baseline student (no teacher) → models/students/<model>-none."""

from distillrec.stage import stage
from distillrec.train.run import train_student


@stage
def main(params):
    name = f"{params.student.model}-none"
    train_student(params, "data/processed", f"models/students/{name}", f"models/checkpoints/{name}",
                  f"dvclive/{name}")


if __name__ == "__main__":
    main()
