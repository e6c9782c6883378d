"""Fetching public raw datasets, or saying exactly which files to provide when we cannot.

Downloads go to a temporary sibling and are renamed only once complete and verified, so an
interrupted or corrupted transfer is never mistaken for the dataset on the next run.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import shutil
import urllib.request
import zipfile
from collections.abc import Callable
from pathlib import Path

from tqdm import tqdm

from distillrec.errors import DataError, MissingFilesError
from distillrec.io import atomic_file

log = logging.getLogger(__name__)

_CHUNK = 1 << 20

# (url, archive file name, sha256 or None)
Download = tuple[str, str, str | None]


def fetch(url: str, dest: Path, sha256: str | None = None, size: int | None = None) -> Path:
    """Stream `url` to `dest`; DataError if its size or sha256 is not what was expected."""
    dest = Path(dest)
    log.info("downloading %s -> %s", url, dest)
    digest = hashlib.sha256()
    with atomic_file(dest) as tmp:
        with urllib.request.urlopen(url, timeout=60) as response, open(tmp, "wb") as out:
            announced = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(
                total=announced or size, unit="B", unit_scale=True, desc=dest.name, disable=None
            ) as bar:
                while block := response.read(_CHUNK):
                    out.write(block)
                    digest.update(block)
                    bar.update(len(block))
        got = tmp.stat().st_size
        for label, want in (("announced by the server", announced), ("expected", size)):
            if want is not None and got != want:
                raise DataError(f"download of {url} is incomplete: {got} bytes, {want} {label}")
        if sha256 is not None and digest.hexdigest() != sha256.lower():
            raise DataError(
                f"download of {url} is corrupt: sha256 {digest.hexdigest()}, expected {sha256}"
            )
    return dest


def unpack(archive: Path, into: Path) -> None:
    """Extract a .zip into `into`; entries appear only after the whole archive extracted cleanly."""
    into.mkdir(parents=True, exist_ok=True)
    staging = into / f".unpack-{archive.name}"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        with zipfile.ZipFile(archive) as bundle:
            broken = bundle.testzip()
            if broken is not None:
                raise DataError(f"{archive}: member {broken} fails its CRC check")
            bundle.extractall(staging)  # zipfile strips absolute paths and '..' components
        for entry in staging.iterdir():
            target = into / entry.name
            if target.is_dir():
                shutil.rmtree(target)
            os.replace(entry, target)
    except zipfile.BadZipFile as exc:
        raise DataError(f"{archive} is not a valid zip archive: {exc}") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.info("unpacked %s into %s", archive, into)


def ensure_raw_files(
    raw_dir: Path,
    expected: list[str],
    downloads: list[Download],
    allow: bool,
    hint: str = "",
    present: Callable[[], bool] | None = None,
) -> None:
    """Return once the raw files are present, downloading them first when allowed and possible.

    `present` overrides the default check (every `expected` file, plain or .gz, in raw_dir) for
    sources that accept several layouts. Any failure raises MissingFilesError naming the files.
    """
    if present is None:
        present = lambda: all(  # noqa: E731
            (raw_dir / name).is_file() or (raw_dir / f"{name}.gz").is_file() for name in expected
        )
    if present():
        return
    urls = "".join(f"\n  public source: {url}" for url, _, _ in downloads)
    if not downloads:
        raise MissingFilesError(raw_dir, expected, hint)
    if not allow:
        raise MissingFilesError(
            raw_dir,
            expected,
            f"{hint}\ningest.download is false: download and unpack into {raw_dir} yourself,"
            f" or set it to true.{urls}".strip(),
        )
    for url, archive_name, sha256 in downloads:
        archive = raw_dir / archive_name
        try:
            if not archive.is_file():
                fetch(url, archive, sha256)
            unpack(archive, raw_dir)
        except (OSError, http.client.HTTPException) as exc:  # URLError is an OSError
            raise MissingFilesError(
                raw_dir,
                expected,
                f"{hint}\ndownloading {url} failed ({exc}); fetch it on a connected machine and"
                f" unpack it into {raw_dir}.".strip(),
            ) from exc
    if not present():
        raise MissingFilesError(
            raw_dir,
            expected,
            f"{hint}\nthe downloaded archives did not contain them.{urls}".strip(),
        )
