"""Student models by name; `build_student` is the only constructor the pipeline calls."""

from __future__ import annotations

from distillrec.params import StudentParams
from distillrec.students.base import Encoded, Student
from distillrec.students.bert4rec import BERT4Rec
from distillrec.students.caser import Caser
from distillrec.students.gru4rec import GRU4Rec
from distillrec.students.sasrec import SASRec

STUDENTS: dict[str, type[Student]] = {
    "sasrec": SASRec,
    "gru4rec": GRU4Rec,
    "caser": Caser,
    "bert4rec": BERT4Rec,
}

__all__ = ["STUDENTS", "BERT4Rec", "Caser", "Encoded", "GRU4Rec", "SASRec", "Student", "build_student"]


def build_student(params: StudentParams, n_items: int) -> Student:
    """The student `params.model` names, sized for a catalogue of `n_items` items."""
    return STUDENTS[params.model](n_items, params)
