"""Raw-data sources by name; each module exposes `load(dataset, ingest, raw_dir, workdir)`.

Modules are imported on use so that reading one source never pays for another's imports.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import get_args

from distillrec.data.sources.base import RawData
from distillrec.params import DatasetParams, IngestParams

SOURCES: tuple[str, ...] = get_args(DatasetParams.model_fields["source"].annotation)


def load_source(dataset: DatasetParams, ingest: IngestParams, workdir: Path) -> RawData:
    """Dispatch on `dataset.source` (validated by params to be one of SOURCES)."""
    module = importlib.import_module(f"distillrec.data.sources.{dataset.source}")
    return module.load(dataset, ingest, dataset.raw_dir, workdir)
