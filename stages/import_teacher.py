"""DVC stage `import_teacher@<name>`: another system's teacher files (`imports.<name>.path`) → data/teacher/<name>."""

from distillrec.stage import stage
from distillrec.teachers.imported import import_teacher


@stage
def main(params, name):
    import_teacher(params, name, "data/processed", f"data/teacher/{name}")


if __name__ == "__main__":
    main()
