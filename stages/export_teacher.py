"""DVC stage `export_teacher@<name>`: teacher <name>'s top-K, embeddings, states → data/teacher/<name>
(streamed exports checkpoint their parts in models/checkpoints/export-<name> and resume there)."""

from distillrec.stage import stage
from distillrec.teachers.run import export_teacher


@stage
def main(params, name):
    export_teacher(params, name, "data/processed", f"models/teachers/{name}", f"data/teacher/{name}",
                   f"models/checkpoints/export-{name}")


if __name__ == "__main__":
    main()
