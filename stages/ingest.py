"""DVC stage `ingest`: raw dataset → data/interim/{interactions,items}.parquet + manifest.json."""

from distillrec.data.ingest import run_ingest
from distillrec.stage import stage


@stage
def main(params):
    run_ingest(params, "data/interim")


if __name__ == "__main__":
    main()
