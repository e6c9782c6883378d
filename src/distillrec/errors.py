"""Error types that carry enough context (file, line, key) for a user to fix their input."""

from __future__ import annotations

from pathlib import Path


class DistillrecError(Exception):
    """Base class: every user-facing failure of the pipeline."""


class ParamsError(DistillrecError):
    """params.yaml is invalid: unknown key, wrong type or out-of-range value."""


class TrainingDiverged(DistillrecError):
    """The training loss became NaN or infinite: nothing is saved."""


class DataError(DistillrecError):
    """Input data is missing, malformed or empty."""


class BadLineError(DataError):
    """One line of a raw file cannot be parsed; names the file, the line and its text."""

    def __init__(self, path: Path | str, lineno: int, text: str, reason: str):
        self.path, self.lineno, self.text, self.reason = str(path), lineno, text, reason
        shown = text if len(text) <= 200 else text[:200] + "..."
        super().__init__(
            f"{path}:{lineno}: {reason}\n  offending line: {shown!r}\n"
            "  (set ingest.on_bad_line: skip to skip and count such lines)"
        )


class MissingFilesError(DataError):
    """Raw files are absent and cannot be downloaded: lists what to put where."""

    def __init__(self, directory: Path | str, expected: list[str], hint: str = ""):
        listing = "\n".join(f"  - {directory}/{name}" for name in expected)
        super().__init__(
            f"raw files for this dataset are missing; expected:\n{listing}\n{hint}".rstrip()
        )
