"""Atomic outputs, hashing and logging shared by every stage.

Stages write to a temporary sibling and rename when complete, so a failed or interrupted run
never leaves a half-written output that DVC or a later stage could mistake for a result. A run
killed outright (SIGKILL, out of memory) cannot clean its temporary sibling up; the next write of
the same output removes it.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from distillrec.errors import DataError

log = logging.getLogger(__name__)


def setup_logging(level: int = logging.INFO) -> None:
    """One format for all stages; idempotent so tests can call stage mains repeatedly."""
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True
    )


def _tmp_sibling(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def _stale_siblings(path: Path) -> list[Path]:
    """Temporary siblings of `path` (`_tmp_sibling`, `_replace`'s `.old-`) left by processes that no
    longer run: a killed run's half-written output."""
    pattern = re.compile(rf"\.{re.escape(path.name)}\.(?:tmp|old)-(\d+)")
    found = (pattern.fullmatch(p.name) for p in path.parent.iterdir())
    return [path.with_name(m[0]) for m in found if m and int(m[1]) != os.getpid() and not _running(int(m[1]))]


def _replace(tmp: Path, final: Path) -> None:
    if final.is_dir() and not final.is_symlink():
        old = final.with_name(f".{final.name}.old-{os.getpid()}")
        final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old)
    else:
        os.replace(tmp, final)


def _discard(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists():
        path.unlink()


@contextlib.contextmanager
def _atomic(final: Path | str, is_dir: bool) -> Iterator[Path]:
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    for stale in _stale_siblings(final):
        log.info("removing %s, left by a run that was killed", stale)
        _discard(stale)
    tmp = _tmp_sibling(final)
    _discard(tmp)
    if is_dir:
        tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        _discard(tmp)
        raise
    _replace(tmp, final)


def atomic_dir(final: Path | str) -> contextlib.AbstractContextManager[Path]:
    """An empty temporary directory that replaces `final` only if the block succeeds."""
    return _atomic(final, is_dir=True)


def atomic_file(final: Path | str) -> contextlib.AbstractContextManager[Path]:
    """A temporary path that replaces `final` only if the block succeeds."""
    return _atomic(final, is_dir=False)


def write_json(path: Path | str, obj: Any) -> None:
    """Atomic, sorted, indented JSON (stable bytes for identical content)."""
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def sha256_stream(handle: Any, chunk: int = 1 << 20) -> str:
    """sha256 of a binary stream (a file, a zip member), read in blocks."""
    digest = hashlib.sha256()
    while block := handle.read(chunk):
        digest.update(block)
    return digest.hexdigest()


def sha256_file(path: Path | str) -> str:
    with open(path, "rb") as handle:
        return sha256_stream(handle)


@functools.cache
def code_digest(root: Path = Path(__file__).resolve().parent) -> str:
    """Hash of the `.py` files under `root` (this package). Checkpoints carry it: DVC reruns a stage
    because its code changed, and resuming the finished checkpoint of the old code would hand back
    the old result under the new code's name."""
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


LOCK = ".lock"


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:   # another user's live process
        return True
    return True


@contextlib.contextmanager
def folder_lock(folder: Path | str) -> Iterator[None]:
    """One writer per checkpoint folder: `<folder>/.lock` holds the writer's pid.

    A lock held by a live process is an error that names it (a `dvc repro` started while an
    orphaned stage of a killed one still trains into the same folder); a lock left by a process
    that no longer runs (a killed run) is taken over.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK
    while True:
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            text = path.read_text().strip() if path.exists() else ""
            owner = int(text) if text.isdigit() else None
            if owner is not None and _running(owner):
                raise DataError(f"{folder} is in use by process {owner} (another run of this stage is writing "
                                f"its checkpoint): wait for it or stop it; if no such run exists, delete {path}")
            log.warning("%s: taking over the lock of process %s, which no longer runs", folder, owner)
            path.unlink(missing_ok=True)
            continue
        with os.fdopen(fd, "w") as handle:
            handle.write(str(os.getpid()))
        break
    try:
        yield
    finally:
        path.unlink(missing_ok=True)
