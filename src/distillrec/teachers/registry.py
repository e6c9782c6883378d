"""Teacher families by name: `teacher_class(family)` is how the pipeline finds a family's class.

Each family module is imported only when asked for (transformers, which seq2seq, causal and text
need, takes seconds to import; the id and fusion teachers never need it). The families import
`teachers.base`, never this module, so the registry closes no import cycle.
"""

from __future__ import annotations

import importlib

from distillrec.errors import DataError
from distillrec.teachers.base import Teacher

FAMILIES: dict[str, tuple[str, str]] = {  # family -> (module, class)
    "seq2seq": ("distillrec.teachers.seq2seq", "Seq2SeqTeacher"),
    "causal": ("distillrec.teachers.causal", "CausalTeacher"),
    "id": ("distillrec.teachers.idmodel", "IdTeacher"),
    "text": ("distillrec.teachers.text", "TextTeacher"),
    "fusion": ("distillrec.teachers.fusion", "FusionTeacher"),
}


def teacher_class(family: str) -> type[Teacher]:
    """The family's class, its module imported on first use."""
    if family not in FAMILIES:
        raise DataError(f"unknown teacher family {family!r}; expected one of {', '.join(FAMILIES)}")
    module, name = FAMILIES[family]
    return getattr(importlib.import_module(module), name)
