"""The real command line, ``python -m autograder grade``, on a small hostile class of the toy course.

tests/test_autograder.py grades a large class through ``autograder.commands.grade``; this file runs the
command an instructor types, in its own process, and reads only what it writes: the exit status, the table on
screen and ``grades.csv``.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from autograder.sandbox import sandbox_unavailable

TOY_DIR = Path(__file__).parent / "submissions" / "toy"
STAGE = "00_toy"
SANDBOXED = sandbox_unavailable() is None

pytestmark = pytest.mark.timeout(300)


def _notebook(body: str | None = None, extra_cell: str | None = None) -> nbformat.NotebookNode:
    """The toy solution, with ``add_noise``'s solution region replaced by ``body`` and ``extra_cell`` (a cell of
    the student's own) inserted after it."""
    notebook = nbformat.read(TOY_DIR / f"{STAGE}.ipynb", as_version=4)
    index, cell = next((i, c) for i, c in enumerate(notebook.cells)
                       if c.metadata.get("nbgrader", {}).get("grade_id") == "add_noise")
    if body is not None:
        cell.source = cell.source[: cell.source.index("    ### BEGIN SOLUTION")] + body
    if extra_cell is not None:
        notebook.cells.insert(index + 1, nbformat.v4.new_code_cell(extra_cell))
    return notebook


def test_the_command_line_grades_a_hostile_class_and_keeps_the_honest_students_full_marks(tmp_path):
    wrong = "    return x + sigma**2 * torch.randn(x.shape, generator=generator, dtype=x.dtype)"
    students = {
        "honest": _notebook(),
        "rebinds": _notebook(wrong, "check_add_noise = lambda *args, **kwargs: print('✓ all good')"),
        "reference": _notebook("    import course_lib.noise\n    return course_lib.noise.add_noise(x, sigma, generator)"),
        "reads_course": _notebook(extra_cell=f"print(open({str(tmp_path / 'course' / 'gradebook.db')!r}, 'rb').read(9))"),
    }
    for student, notebook in students.items():
        folder = tmp_path / "submissions" / student / STAGE
        folder.mkdir(parents=True)
        nbformat.write(notebook, folder / f"{STAGE}.ipynb")
    command = [sys.executable, "-m", "autograder", "grade", str(tmp_path / "submissions"), "--course",
               str(tmp_path / "course"), "--stages", STAGE, "--solutions", str(TOY_DIR), "--jobs", "2",
               "--cell-timeout", "30", "--memory-gb", "6"] + ([] if SANDBOXED else ["--no-sandbox"])
    result = subprocess.run(command, capture_output=True, text=True, timeout=280,
                            env={**os.environ, "COURSE_MODE": "quick"})
    assert result.returncode == 0, result.stderr[-2000:]
    assert "honest" in result.stdout and "Grades written to" in result.stdout
    with open(tmp_path / "course" / "grades.csv") as handle:
        rows = {row["student"]: row for row in csv.DictReader(handle)}
    assert float(rows["honest"][STAGE]) == 4.0
    assert float(rows["rebinds"][STAGE]) == 1.0, "the rebound check earns nothing; ddpm_schedule's point stays"
    assert float(rows["reference"][STAGE]) == 1.0, "the reference is not in the grading kernel"
    if SANDBOXED:  # the course folder (and its gradebook) does not exist for the kernel: its own cell fails
        assert float(rows["reads_course"][STAGE]) == 4.0 and not rows["reads_course"]["problems"]
