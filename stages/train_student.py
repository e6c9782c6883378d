"""DVC stage `train_student@<seed>`: the baseline student, no teacher.

`python stages/train_student.py <seed>` → models/students/<model>-none/seed<seed>.
Data-parallel: `torchrun --nproc_per_node N stages/train_student.py <seed>` (GPUs or CPU processes).
"""

from distillrec.stage import stage
from distillrec.train.run import train_student


@stage
def main(params, seed):
    run = f"{params.student.model}-none/seed{seed}"
    train_student(params, "data/processed", f"models/students/{run}", f"models/checkpoints/{run}",
                  f"dvclive/{run}", int(seed))


if __name__ == "__main__":
    main()
