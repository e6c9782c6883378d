"""Teacher families by name: `teacher_class(family)` is how the pipeline finds a family's class.

Each family module is imported only when asked for (transformers, which seq2seq, causal and text
need, takes seconds to import; the id and fusion teachers never need it). The families import
`teachers.base`, never this module, so the registry closes no import cycle.
"""

from __future__ import annotations

from distillrec.errors import DataError
from distillrec.teachers.base import Teacher


def teacher_class(family: str) -> type[Teacher]:
    """The family's class, imported lazily (transformers is slow to import)."""
    if family == "seq2seq":
        from distillrec.teachers.seq2seq import Seq2SeqTeacher
        return Seq2SeqTeacher
    if family == "causal":
        from distillrec.teachers.causal import CausalTeacher
        return CausalTeacher
    if family == "id":
        from distillrec.teachers.idmodel import IdTeacher
        return IdTeacher
    if family == "text":
        from distillrec.teachers.text import TextTeacher
        return TextTeacher
    if family == "fusion":
        from distillrec.teachers.fusion import FusionTeacher
        return FusionTeacher
    raise DataError(f"unknown teacher family {family!r}")
