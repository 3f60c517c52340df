"""``python -m autograder export --format canvas|moodle|csv``: the last grading run's grades, as an LMS imports them.

- ``canvas``: Canvas's gradebook import (Grades > Import): the columns ``Student, ID, SIS User ID, SIS Login ID,
  Section``, then one column per stage, and a second row ``Points Possible`` with each stage's maximum. ``ID`` is
  the Canvas user id that the download's file names carried (``smithjane_12345_...``).
- ``moodle``: Moodle's assignment grading worksheet (Assignment > Upload grading worksheet): ``Identifier`` is
  ``Participant <id>``, the participant id that the download's names carried (``Jane Smith_123456_...``), and
  ``Grade`` the points of the exported stages together, out of ``Maximum Grade``.
- ``csv``: one row per student: id, name, LMS, participant id, points per stage, total.

A stage a student did not hand in (missing, refused, not a notebook) is an empty cell, or 0 with
``missing_as_zero``; one handed in and graded keeps its points, 0 included. Students whose hand-in carried no id of
the chosen LMS cannot be matched by it: they are left out and named in the returned lines. Every text cell is
written safe from spreadsheet formulas (:func:`autograder.safe_text.csv_cell`).
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

from ..atomic import atomic_write_text
from .run_record import read_run_record
from ..safe_text import csv_cell

FORMATS = ("canvas", "moodle", "csv")
CANVAS_FIXED = ["Student", "ID", "SIS User ID", "SIS Login ID", "Section"]
MOODLE_HEADER = ["Identifier", "Full name", "Grade", "Maximum Grade"]


class ExportError(ValueError):
    """An argument of ``export`` that cannot be used; nothing was written."""


def _cell(student: dict, stage: str, missing_as_zero: bool) -> str:
    if stage in student["graded"]:
        return f"{student['points'][stage]:g}"
    return "0" if missing_as_zero else ""


def _canvas(record: dict, stages: list[str], missing_as_zero: bool, writer) -> list[dict]:
    writer.writerow([*CANVAS_FIXED, *stages])
    writer.writerow(["Points Possible", "", "", "", "", *(f"{record['max_points'][s]:g}" for s in stages)])
    matched = [student for student in record["students"] if student["lms"] == "canvas" and student["participant"]]
    for student in matched:
        writer.writerow([csv_cell(student["name"]), csv_cell(student["participant"]), "", "", "",
                         *(_cell(student, stage, missing_as_zero) for stage in stages)])
    return matched


def _moodle(record: dict, stages: list[str], missing_as_zero: bool, writer) -> list[dict]:
    writer.writerow(MOODLE_HEADER)
    maximum = f"{sum(record['max_points'][stage] for stage in stages):g}"
    matched = [student for student in record["students"] if student["lms"] == "moodle" and student["participant"]]
    for student in matched:
        graded = [stage for stage in stages if stage in student["graded"]]
        grade = (f"{sum(student['points'][stage] for stage in graded):g}" if graded or missing_as_zero else "")
        writer.writerow([csv_cell(f"Participant {student['participant']}"), csv_cell(student["name"]), grade,
                         maximum])
    return matched


def _plain(record: dict, stages: list[str], missing_as_zero: bool, writer) -> list[dict]:
    writer.writerow(["student", "name", "lms", "participant", *stages, "total"])
    for student in record["students"]:
        cells = [_cell(student, stage, missing_as_zero) for stage in stages]
        total = f"{sum(float(cell) for cell in cells if cell):g}"
        writer.writerow([csv_cell(student[key]) for key in ("id", "name", "lms", "participant")] + cells + [total])
    return record["students"]


def export_grades(root: Path, form: str, path: Path | None = None, stages=None,
                  missing_as_zero: bool = False) -> tuple[Path, list[str]]:
    """Write the last grading run of ``root`` in ``form`` (see the module's docstring) to ``path`` (default
    ``<root>/export-<form>.csv``), for ``stages`` (default: the run's); returns the path and a line per student
    left out."""
    if form not in FORMATS:
        raise ExportError(f"`--format` must be one of {', '.join(FORMATS)}, got {form!r}")
    record = read_run_record(root)
    stages = list(stages or record["stages"])
    unknown = [stage for stage in stages if stage not in record["stages"]]
    if unknown:
        raise ExportError(f"`--stages`: {', '.join(unknown)} were not graded in this run "
                          f"({', '.join(record['stages'])})")
    handle = io.StringIO(newline="")
    writer = csv.writer(handle)
    matched = {"canvas": _canvas, "moodle": _moodle, "csv": _plain}[form](record, stages, missing_as_zero, writer)
    left_out = [f"{student['id']}: no {form.capitalize()} id in the names of what they handed in"
                for student in record["students"] if student not in matched]
    return atomic_write_text(Path(path or Path(root) / f"export-{form}.csv"), handle.getvalue()), left_out
