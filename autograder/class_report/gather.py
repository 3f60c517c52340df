"""What a graded class got wrong, read from the course folder: points lost per TODO and the failing checks' messages.

Sources: the run's record (:mod:`autograder.score.run_record`), the gradebook's score of every test cell, the graded
copies in ``autograded/`` (each failed check's message is its test cell's error), and the source notebooks, whose
order tells which TODO each test cell checks: a test cell checks the nearest solution code cell above it.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import nbformat

#: numbers and tensor indices in a check's message: two students with one mistake get one message
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?(?:e[-+]?\d+)?", re.I)
SET_UP = "(set-up)"  # the TODO of a test cell with no solution cell above it


@dataclass
class Mistake:
    """One failing-check message (numbers replaced by ``#``) of one TODO, and who got it.

    Attributes:
        message: the message with its numbers replaced by ``#``.
        example: one student's message as it was.
        students: the ids of the students whose check failed with it.
    """

    message: str
    example: str
    students: list[str] = field(default_factory=list)


@dataclass
class StageFindings:
    """One stage: per TODO, the points each graded student lost, its maximum, and its mistakes by message."""

    todos: dict[str, float] = field(default_factory=dict)  # TODO -> points its tests are worth
    lost: dict[str, dict[str, float]] = field(default_factory=lambda: defaultdict(dict))  # TODO -> student -> lost
    mistakes: dict[str, dict[str, Mistake]] = field(default_factory=lambda: defaultdict(dict))


def tests_by_todo(source: Path) -> dict[str, str]:
    """For the source notebook ``source``: the TODO (solution cell's grade id) that each test cell's grade id checks."""
    todo, found = SET_UP, {}
    for cell in nbformat.read(source, as_version=4).cells:
        meta = cell.get("metadata", {}).get("nbgrader", {})
        if cell.cell_type != "code":
            continue
        if meta.get("solution"):
            todo = meta.get("grade_id", todo)
        elif meta.get("grade"):
            found[meta["grade_id"]] = todo
    return found


def failure_messages(graded: Path) -> dict[str, str]:
    """The first line of each failed test cell's error in the graded copy ``graded``, by grade id."""
    found = {}
    for cell in nbformat.read(graded, as_version=4).cells:
        meta = cell.get("metadata", {}).get("nbgrader", {})
        if cell.cell_type != "code" or not meta.get("grade") or meta.get("solution"):
            continue
        errors = [output for output in cell.get("outputs", []) if output.get("output_type") == "error"]
        if errors:
            text = f"{errors[0].get('ename', '')}: {errors[0].get('evalue', '')}".strip(": ")
            found[meta["grade_id"]] = (text.splitlines() or [""])[0][:300]
    return found


def _add_mistake(findings: StageFindings, todo: str, student: str, text: str) -> None:
    key = _NUMBER.sub("#", text)
    mistake = findings.mistakes[todo].setdefault(key, Mistake(key, text))
    if student not in mistake.students:
        mistake.students.append(student)


def gather_stage(root: Path, stage: str, graded_students: list[str], gradebook) -> StageFindings:
    """The findings of ``stage`` over ``graded_students`` (ids whose notebook of it was run), from ``gradebook``
    (an open nbgrader Gradebook) and the graded copies."""
    from nbgrader.api import MissingEntry

    todo_of = tests_by_todo(root / "source" / stage / f"{stage}.ipynb")
    findings = StageFindings()
    for cell in gradebook.find_notebook(stage, stage).grade_cells:
        if cell.cell_type == "code" and cell.name in todo_of:
            findings.todos[todo_of[cell.name]] = findings.todos.get(todo_of[cell.name], 0.0) + cell.max_score
    for student in graded_students:
        try:
            notebook = gradebook.find_submission_notebook(stage, stage, student)
        except MissingEntry:
            continue
        copy = root / "autograded" / student / stage / f"{stage}.ipynb"
        messages = failure_messages(copy) if copy.is_file() else {}
        for grade in notebook.grades:
            if grade.cell_type != "code" or grade.name not in todo_of:
                continue
            todo = todo_of[grade.name]
            findings.lost[todo][student] = findings.lost[todo].get(student, 0.0) + grade.max_score - (grade.score or 0)
            if grade.name in messages:
                _add_mistake(findings, todo, student, messages[grade.name])
    return findings


#: the kinds of problem a notebook can have, each with the words of its line (the first match counts)
PROBLEM_KINDS = (
    ("not handed in", ("missing",)),
    ("refused or unclear hand-in", ("nothing gradable", "several different notebooks", "changed while")),
    ("invalid notebook", ("not a valid notebook",)),
    ("memory cap", ("memory cap",)),
    ("process cap", ("--max-processes",)),
    ("time limit", ("interrupted after", "longer than its limit", "and skipped it")),
    ("dead kernel", ("kernel died",)),
    ("grader error", ("could not be graded", "could not be scored")),
)


def problem_kind(line: str) -> str:
    """The kind of a problem line of the grade table (``"other"`` when none matches)."""
    lowered = line.lower()
    for kind, words in PROBLEM_KINDS:
        if any(word in lowered for word in words):
            return kind
    return "other"
