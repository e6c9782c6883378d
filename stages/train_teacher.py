"""DVC stage `train_teacher@<name>`: LoRA/full fine-tuning of teacher <name> → models/teachers/<name>.

Multi-GPU (or multi-process CPU): `accelerate launch --num_processes 2 stages/train_teacher.py <name>`.
"""

from distillrec.stage import stage
from distillrec.teachers.run import train_teacher


@stage
def main(params, name):
    train_teacher(params, name, "data/processed", f"models/teachers/{name}", f"models/checkpoints/teacher-{name}",
                  f"dvclive/teacher-{name}")


if __name__ == "__main__":
    main()
