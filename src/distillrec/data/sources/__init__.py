"""Raw-data sources by name: `load_source` finds the module of `dataset.source` in SOURCES.

Every source module implements `Source.load`. Modules are imported on use so that reading one
source never pays for another's imports.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Protocol, get_args

from distillrec.data.sources.base import RawData
from distillrec.params import DatasetParams, IngestParams

# dataset.source -> the module that reads it (every value of the params' `source` field has one)
SOURCES: dict[str, str] = {name: f"distillrec.data.sources.{name}"
                           for name in get_args(DatasetParams.model_fields["source"].annotation)}


class Source(Protocol):
    """What a source module provides."""

    def load(self, dataset: DatasetParams, ingest: IngestParams, raw_dir: Path, workdir: Path) -> RawData:
        """The dataset's interactions and items from its raw files in `raw_dir` (scratch in `workdir`);
        bad input raises DataError naming the file and line."""


def load_source(dataset: DatasetParams, ingest: IngestParams, workdir: Path) -> RawData:
    """Dispatch on `dataset.source` (validated by params to be one of SOURCES)."""
    source: Source = importlib.import_module(SOURCES[dataset.source])  # type: ignore[assignment]
    return source.load(dataset, ingest, dataset.raw_dir, workdir)
