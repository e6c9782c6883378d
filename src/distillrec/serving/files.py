"""The release folder's file names and its config.json reader: what every serving module shares
(torch-free, so the ONNX backend starts without torch)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from distillrec.errors import DataError

CONFIG, WEIGHTS, ITEMS, ONNX = "config.json", "model.safetensors", "item_map.parquet", "model.onnx"


def read_config(folder: Path) -> dict[str, Any]:
    """config.json of a release folder: architecture, catalogue size, folded offsets, provenance."""
    path = folder / CONFIG
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(config, dict):
            raise TypeError(f"expected a JSON object, found {type(config).__name__}")
        n_items, architecture = config["n_items"], config["architecture"]
        if isinstance(n_items, bool) or not isinstance(n_items, int) or n_items < 1:
            raise ValueError(f"n_items must be a positive integer, found {n_items!r}")
        int(architecture["max_length"])
    except KeyError as exc:
        raise DataError(f"{path}: not a release's config: the key {exc} is missing") from None
    except (OSError, UnicodeDecodeError, ValueError, TypeError) as exc:
        raise DataError(f"{path}: not a release's config ({exc})") from None
    return config
