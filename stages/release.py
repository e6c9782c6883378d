"""DVC stage `release`: one row's student as models/release/ (safetensors, ONNX, model card).

`python stages/release.py` → models/release/ (row: params `release.row`, `best` = chosen on
validation by evaluate). The code: src/distillrec/serving/release.py.
"""

from pathlib import Path

from distillrec.serving.release import build_release
from distillrec.stage import stage


@stage
def main(params):
    build_release(params, Path("models/release"))


if __name__ == "__main__":
    main()
