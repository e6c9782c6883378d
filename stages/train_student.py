"""DVC stages `train_student@<seed>` (baseline, no teacher) and `distill@<method>-<seed>`.

`python stages/train_student.py <method> <seed>` → models/students/<model>-<method>/seed<seed>.
"""

from distillrec.stage import stage
from distillrec.train.run import train_student


@stage
def main(params, method, seed):
    run = f"{params.student.model}-{method}/seed{seed}"
    train_student(params, "data/processed", f"models/students/{run}", f"models/checkpoints/{run}",
                  f"dvclive/{run}", method, int(seed))


if __name__ == "__main__":
    main()
