"""What one grading run found, kept beside the grades: ``<course>/grading-run.json``.

``grade`` writes it last (atomically); the class report (:mod:`autograder.class_report`) and the LMS export
(:mod:`autograder.score.lms_export`) read it, so neither needs to grade again nor to parse ``grades.csv`` (whose
cells are escaped for spreadsheets). Its text is data students chose (names, file names): escape it wherever it is
shown.

Shape::

    {"stages": [stage, ...], "max_points": {stage: float}, "sandboxed": bool, "unowned": [line, ...],
     "students": [{"id", "name", "lms", "participant",
                   "points": {stage: float}, "problems": {stage: str}, "notes": {stage or "": [line, ...]},
                   "manual_pending": [stage, ...], "graded": [stage, ...], "seconds": {stage: float}}, ...]}

``graded``: the stages whose notebook was handed in and run (a missing, refused or invalid one is not);
``seconds``: the kernel time of each notebook run in this grading (not of one kept from an earlier Dask run).
"""

from __future__ import annotations

import json
from pathlib import Path

from ..atomic import atomic_write_text

RUN_RECORD = "grading-run.json"


class NoGradingRun(FileNotFoundError):
    """The course folder has no grading run to read: ``grade`` has not run there."""


def write_run_record(root: Path, table, collection, not_run: set[tuple[str, str]],
                     seconds: dict[tuple[str, str], float], earlier: dict | None = None) -> Path:
    """Write the record of ``table`` (a :class:`autograder.score.report.GradeTable`) and ``collection`` (whose roster
    gives each student's LMS and participant id); a student of ``table`` not in ``collection`` keeps their entry
    of ``earlier`` (the record of the run before, ``grade --student``). Returns its path."""
    people = {student.id: student for student in collection.students}
    kept = {entry["id"]: entry for entry in (earlier or {}).get("students", [])}
    students = []
    for row in table.rows:
        if row.student not in people:
            students.append(kept[row.student])
            continue
        person = people[row.student]
        students.append({
            "id": row.student, "name": person.name, "lms": person.lms, "participant": person.participant,
            "points": row.points, "problems": row.problems, "notes": row.notes,
            "manual_pending": row.manual_pending,
            "graded": [stage for stage in table.stages if (row.student, stage) not in not_run],
            "seconds": {stage: round(seconds[row.student, stage], 3) for stage in table.stages
                        if (row.student, stage) in seconds}})
    record = {"stages": list(table.stages), "max_points": table.max_points, "sandboxed": table.sandboxed,
              "unowned": table.unowned, "students": students}
    return atomic_write_text(Path(root) / RUN_RECORD, json.dumps(record, indent=1, ensure_ascii=False))


def with_earlier_rows(table, earlier: dict):
    """``table`` (the students graded now) with the rows of every other student of ``earlier`` (a record) as that
    run left them, sorted by id."""
    from .report import StudentGrades

    now = {row.student for row in table.rows}
    kept = [StudentGrades(entry["id"], entry["points"], entry["problems"], entry["manual_pending"], entry["notes"],
                          entry["name"]) for entry in earlier["students"] if entry["id"] not in now]
    table.rows = sorted(table.rows + kept, key=lambda row: row.student)
    return table


def read_run_record(root: Path) -> dict:
    """The record of the last grading run in ``root``; :class:`NoGradingRun` when there is none."""
    path = Path(root) / RUN_RECORD
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise NoGradingRun(f"`--course`: {root} holds no grading run ({RUN_RECORD}): run "
                           "`python -m autograder grade SUBMISSIONS` there first") from None
