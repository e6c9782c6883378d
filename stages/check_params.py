"""DVC stage `check_params`: params.yaml is validated before any other stage runs.

DVC deletes a stage's outputs right before it runs that stage, so a bad value given to
`dvc exp run -S` (or written into params.yaml) used to cost the outputs of the first stage that
read it. Every stage depends on this one's output (through `ingest`), so DVC runs it first: a bad
value stops the run here, every earlier output intact. Its output never changes, so a good value
re-runs nothing downstream that does not read it.
"""

from pathlib import Path

from distillrec.io import atomic_file
from distillrec.stage import stage

STAMP = "params.yaml passed validation (stages/check_params.py); ingest depends on this file\n"


@stage
def main(params):  # the @stage shell has loaded and validated params.yaml: any error exits 1 before this
    with atomic_file(Path("data/params.ok")) as tmp:
        tmp.write_text(STAMP)


if __name__ == "__main__":
    main()
