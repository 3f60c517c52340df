"""The grade table: auto-graded points per student and stage, read from the gradebook, with the reason
for every stage that could not be graded normally and what collecting the hand-ins noted; printed as text and
written as CSV.

Names and ids are data a student chose: printed through :func:`~autograder.safe_text.shown` (control characters
escaped) and written to the CSV through :func:`~autograder.safe_text.csv_cell` (a cell a spreadsheet would read as a
formula gets a leading ``'``)."""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from pathlib import Path

from ..atomic import atomic_write_text
from ..safe_text import csv_cell, shown

NOT_SANDBOXED = ("NOT SANDBOXED (--no-sandbox): the notebooks ran with this user's rights, able to read the "
                 "hidden tests and other students' work, write anywhere and use the network.")


@dataclass
class StudentGrades:
    """One row of the table.

    Attributes:
        student: the student id (the folder of their collected notebooks).
        points: auto-graded points per stage (0.0 for a stage that was not graded).
        problems: per stage, why it was not graded normally ("missing", "the kernel died ...").
        manual_pending: stages whose written answers still wait for the instructor.
        notes: what collecting noted, per stage (``""``: no stage): refusals, resubmissions, the copy chosen.
        name: their name as the LMS or the folder wrote it.
    """

    student: str
    points: dict[str, float] = field(default_factory=dict)
    problems: dict[str, str] = field(default_factory=dict)
    manual_pending: list[str] = field(default_factory=list)
    notes: dict[str, list[str]] = field(default_factory=dict)
    name: str = ""

    @property
    def total(self) -> float:
        return sum(self.points.values())


@dataclass
class GradeTable:
    """All rows, the stages (columns) and the auto-graded maximum of each stage; ``sandboxed`` is False when
    the notebooks ran without the sandbox (``--no-sandbox``), which the text and the CSV then say; ``unowned``:
    a line for each handed-in file that no student owns."""

    stages: tuple[str, ...]
    max_points: dict[str, float]
    rows: list[StudentGrades]
    sandboxed: bool = True
    unowned: list[str] = field(default_factory=list)

    @property
    def max_total(self) -> float:
        return sum(self.max_points.values())

    def format(self) -> str:
        """A plain-text table: one line per student, a ``!`` after a stage with a problem, notes below."""
        headers = ["student", *(f"{s} (/{self.max_points[s]:g})" for s in self.stages), f"total (/{self.max_total:g})"]
        lines = [[shown(row.student), *(f"{row.points[s]:g}" + (" !" if s in row.problems else "")
                                        for s in self.stages), f"{row.total:g}"] for row in self.rows]
        widths = [max(len(cells[i]) for cells in [headers, *lines]) for i in range(len(headers))]
        text = ["  ".join(cell.ljust(width) for cell, width in zip(cells, widths)).rstrip()
                for cells in [headers, *lines]]
        problems = [f"  ! {shown(row.student)} / {stage}: {shown(reason)}"
                    for row in self.rows for stage, reason in row.problems.items()]
        notes = [f"  - {shown(row.student)}{' / ' + stage if stage else ''}: {shown(line)}"
                 for row in self.rows for stage, lines in row.notes.items() for line in lines]
        pending = sorted({stage for row in self.rows for stage in row.manual_pending})
        if problems:
            text += ["", "Not graded normally:", *problems]
        if notes:
            text += ["", "What was handed in (refused, replaced or chosen):", *notes]
        if self.unowned:
            text += ["", "Handed in by no student (not graded):", *(f"  - {shown(line)}" for line in self.unowned)]
        if pending:
            text += ["", f"Written answers wait for manual grading (nbgrader formgrader) in: {', '.join(pending)}"]
        if not self.sandboxed:
            text += ["", NOT_SANDBOXED]
        return "\n".join(text)

    def write_csv(self, path: Path) -> Path:
        """One row per student: id, name, points per stage, total, maximum, the problems and the notes as one text
        column each; when the notebooks ran without the sandbox, a last column ``sandboxed`` says ``no`` on every
        row. Text cells go through :func:`~autograder.safe_text.csv_cell`. Written atomically
        (:mod:`autograder.atomic`): a reader sees the old file or the whole new one."""
        unsandboxed = [] if self.sandboxed else ["no"]
        handle = io.StringIO(newline="")
        writer = csv.writer(handle)
        writer.writerow(["student", "name", *self.stages, "total", "max_total", "problems", "notes",
                         *(["sandboxed"] if unsandboxed else [])])
        for row in self.rows:
            notes = [f"{stage + ': ' if stage else ''}{line}" for stage, lines in row.notes.items() for line in lines]
            writer.writerow([csv_cell(row.student), csv_cell(row.name), *(f"{row.points[s]:g}" for s in self.stages),
                             f"{row.total:g}", f"{self.max_total:g}",
                             csv_cell("; ".join(f"{s}: {r}" for s, r in row.problems.items())),
                             csv_cell("; ".join(notes)), *unsandboxed])
        return atomic_write_text(Path(path), handle.getvalue())


def read_grade_table(root: Path, stages, collection, problems: dict[tuple[str, str], str],
                     not_run: set[tuple[str, str]], sandboxed: bool = True) -> GradeTable:
    """Build the table from ``<root>/gradebook.db`` (auto-graded code points), the students and notes of
    ``collection`` (:class:`autograder.collect.Collection`) and the known ``problems``.

    A (student, stage) in ``not_run`` (missing, unreadable) scores 0 whatever an earlier run left in the gradebook.
    """
    from nbgrader.api import Gradebook, MissingEntry

    from ..course import nbgrader_config

    db_url = nbgrader_config(Path(root)).CourseDirectory.db_url
    rows = []
    with Gradebook(db_url) as gradebook:
        max_points = {stage: float(gradebook.find_assignment(stage).max_code_score) for stage in stages}
        for person in collection.students:
            student = person.id
            row = StudentGrades(student, name=person.name)
            for (who, stage), lines in collection.notes.items():
                if who == student:
                    row.notes[stage] = lines
            for stage in stages:
                row.points[stage] = 0.0
                if (student, stage) in problems:
                    row.problems[stage] = problems[student, stage]
                if (student, stage) in not_run:
                    continue
                try:
                    submission = gradebook.find_submission(stage, student)
                except MissingEntry:
                    continue
                row.points[stage] = float(submission.code_score)
                if submission.needs_manual_grade:
                    row.manual_pending.append(stage)
            rows.append(row)
    return GradeTable(tuple(stages), max_points, rows, sandboxed, list(collection.unowned))
