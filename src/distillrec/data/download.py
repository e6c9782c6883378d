"""Fetching public raw datasets, or saying exactly which files to provide when we cannot.

Downloads go to a temporary sibling and are renamed only once complete and verified, so an
interrupted or corrupted transfer is never mistaken for the dataset on the next run.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import shutil
import tempfile
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


def unpack(archive: Path, into: Path) -> list[Path]:
    """Extract a .zip into `into` without deleting or overwriting anything that is already there.

    The archive is extracted into a fresh hidden folder inside `into` first, so entries appear only
    after the whole archive extracted cleanly; then each file is moved in only where no file or
    folder of that name exists (folders are merged). A user's files are never replaced: those the
    archive also holds are kept as they are, listed in a warning, and returned.
    """
    into.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".unpack-{archive.name}-", dir=into))  # ours alone
    kept: list[Path] = []
    try:
        with zipfile.ZipFile(archive) as bundle:
            broken = bundle.testzip()
            if broken is not None:
                raise DataError(f"{archive}: member {broken} fails its CRC check")
            bundle.extractall(staging)  # zipfile strips absolute paths and '..' components
        _merge(staging, into, kept)
    except zipfile.BadZipFile as exc:
        raise DataError(f"{archive} is not a valid zip archive: {exc}") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # what is left in it was extracted by us
    if kept:
        shown = ", ".join(str(path) for path in kept[:5]) + (", ..." if len(kept) > 5 else "")
        log.warning("unpacking %s: kept %d existing file(s) that the archive also holds, not "
                    "overwritten: %s (remove them to take the archive's version)", archive, len(kept), shown)
    log.info("unpacked %s into %s", archive, into)
    return kept


def _merge(source: Path, target: Path, kept: list[Path]) -> None:
    """Move the entries of `source` into `target` where nothing of that name exists; merge folders."""
    for entry in sorted(source.iterdir()):
        destination = target / entry.name
        if entry.is_dir() and destination.is_dir() and not destination.is_symlink():
            _merge(entry, destination, kept)
        elif destination.exists() or destination.is_symlink():
            kept.append(destination)
        else:
            entry.rename(destination)


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
