"""DVC stages `distill@<method>-<seed>` and `distill_llm_init@<method>-<seed>`: a student trained with
teacher knowledge (docs/methods.md §4).

`python stages/distill.py <method> <seed>` → models/students/<model>-<method>/seed<seed>; <method> is one
of distill.methods, or llm_init+<method>. Data-parallel like `train_student.py` (torchrun).
"""

from distillrec.distill.run import distill_student
from distillrec.stage import stage


@stage
def main(params, method, seed):
    run = f"{params.student.model}-{method}/seed{seed}"
    distill_student(params, "data/processed", f"models/students/{run}", f"models/checkpoints/{run}",
                    f"dvclive/{run}", method, int(seed))


if __name__ == "__main__":
    main()
