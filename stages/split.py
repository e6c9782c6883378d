"""DVC stage `split`: data/interim → data/processed (sequences, examples, id maps) + metrics."""

from distillrec.data.split import run_split
from distillrec.stage import stage


@stage
def main(params):
    run_split(params, "data/interim", "data/processed", "metrics/data.json")


if __name__ == "__main__":
    main()
