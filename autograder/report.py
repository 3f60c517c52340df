"""The grade table: auto-graded points per student and stage, read from the gradebook, with the reason
for every stage that could not be graded normally; printed as text and written as CSV."""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from pathlib import Path

from .atomic import atomic_write_text

NOT_SANDBOXED = ("NOT SANDBOXED (--no-sandbox): the notebooks ran with this user's rights, able to read the "
                 "hidden tests and other students' work, write anywhere and use the network.")


@dataclass
class StudentGrades:
    """One row of the table.

    Attributes:
        student: the student id (the submission folder's name).
        points: auto-graded points per stage (0.0 for a stage that was not graded).
        problems: per stage, why it was not graded normally ("missing", "the kernel died ...").
        manual_pending: stages whose written answers still wait for the instructor.
    """

    student: str
    points: dict[str, float] = field(default_factory=dict)
    problems: dict[str, str] = field(default_factory=dict)
    manual_pending: list[str] = field(default_factory=list)

    @property
    def total(self) -> float:
        return sum(self.points.values())


@dataclass
class GradeTable:
    """All rows, the stages (columns) and the auto-graded maximum of each stage; ``sandboxed`` is False when
    the notebooks ran without the sandbox (``--no-sandbox``), which the text and the CSV then say."""

    stages: tuple[str, ...]
    max_points: dict[str, float]
    rows: list[StudentGrades]
    sandboxed: bool = True

    @property
    def max_total(self) -> float:
        return sum(self.max_points.values())

    def format(self) -> str:
        """A plain-text table: one line per student, a ``!`` after a stage with a problem, notes below."""
        headers = ["student", *(f"{s} (/{self.max_points[s]:g})" for s in self.stages), f"total (/{self.max_total:g})"]
        lines = [[row.student, *(f"{row.points[s]:g}" + (" !" if s in row.problems else "") for s in self.stages),
                  f"{row.total:g}"] for row in self.rows]
        widths = [max(len(cells[i]) for cells in [headers, *lines]) for i in range(len(headers))]
        text = ["  ".join(cell.ljust(width) for cell, width in zip(cells, widths)).rstrip()
                for cells in [headers, *lines]]
        notes = [f"  ! {row.student} / {stage}: {reason}" for row in self.rows for stage, reason in row.problems.items()]
        pending = sorted({stage for row in self.rows for stage in row.manual_pending})
        if notes:
            text += ["", "Not graded normally:", *notes]
        if pending:
            text += ["", f"Written answers wait for manual grading (nbgrader formgrader) in: {', '.join(pending)}"]
        if not self.sandboxed:
            text += ["", NOT_SANDBOXED]
        return "\n".join(text)

    def write_csv(self, path: Path) -> Path:
        """One row per student: points per stage, total, maximum, and the problems as one text column; when the
        notebooks ran without the sandbox, a last column ``sandboxed`` says ``no`` on every row. Written atomically
        (:mod:`autograder.atomic`): a reader sees the old file or the whole new one."""
        unsandboxed = [] if self.sandboxed else ["no"]
        handle = io.StringIO(newline="")
        writer = csv.writer(handle)
        writer.writerow(["student", *self.stages, "total", "max_total", "problems",
                         *(["sandboxed"] if unsandboxed else [])])
        for row in self.rows:
            writer.writerow([row.student, *(f"{row.points[s]:g}" for s in self.stages), f"{row.total:g}",
                             f"{self.max_total:g}", "; ".join(f"{s}: {r}" for s, r in row.problems.items()),
                             *unsandboxed])
        return atomic_write_text(Path(path), handle.getvalue())


def read_grade_table(root: Path, stages, students, problems: dict[tuple[str, str], str],
                     not_run: set[tuple[str, str]], sandboxed: bool = True) -> GradeTable:
    """Build the table from ``<root>/gradebook.db`` (auto-graded code points) and the known ``problems``.

    A (student, stage) in ``not_run`` (missing, unreadable) scores 0 whatever an earlier run left in the gradebook.
    """
    from nbgrader.api import Gradebook, MissingEntry

    from .course import nbgrader_config

    db_url = nbgrader_config(Path(root)).CourseDirectory.db_url
    rows = []
    with Gradebook(db_url) as gradebook:
        max_points = {stage: float(gradebook.find_assignment(stage).max_code_score) for stage in stages}
        for student in students:
            row = StudentGrades(student)
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
    return GradeTable(tuple(stages), max_points, rows, sandboxed)
