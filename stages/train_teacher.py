"""DVC stage `train_teacher@<name>`: LoRA/full fine-tuning of teacher <name> → models/teachers/<name>.

Data-parallel: `torchrun --nproc_per_node N stages/train_teacher.py <name>` (GPUs or CPU processes), or
`accelerate launch --multi_gpu --num_processes N stages/train_teacher.py <name>` on GPUs.
"""

from distillrec.stage import stage
from distillrec.teachers.run import train_teacher


@stage
def main(params, name):
    train_teacher(params, name, "data/processed", f"models/teachers/{name}", f"models/checkpoints/teacher-{name}",
                  f"dvclive/teacher-{name}")


if __name__ == "__main__":
    main()
