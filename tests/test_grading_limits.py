"""The caps on a notebook's memory and processes through the real command line: ``python -m autograder grade``
with ``--memory-gb 1`` on a small class of the toy course, read back from ``grades.csv``.

An honest student keeps full marks under a 1 GiB cap (a kernel with torch imported holds about 0.5 GiB); one whose
notebook starts children that together hold more than the cap, and one that starts thousands of processes, are
stopped in that cell and keep the points of the cells before it. tests/test_limits.py holds the caps' own tests.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from autograder.execute.options import GradingOptions
from autograder.execute.sandbox import sandbox_unavailable
from test_limits import CHILDREN, FORKS

TOY_DIR = Path(__file__).parent / "submissions" / "toy"
STAGE = "00_toy"
SANDBOXED = sandbox_unavailable() is None

pytestmark = pytest.mark.timeout(400)

#: three children of 0.4 GiB each: every one under the 1 GiB cap, together (with the kernel) over it; and a linear
#: loop of thousands of forks whose children sleep
CHILDREN_CELL = CHILDREN.format(marker="cli-hog", gib=0.4)
FORKS_CELL = FORKS.format(marker="cli-fork")


def _notebook(cell: str | None = None) -> nbformat.NotebookNode:
    """The toy solution, with ``cell`` (a cell of the student's own) before ``ddpm_schedule``: after the 3 points of
    ``add_noise``'s tests, before the 1 point of ``ddpm_schedule``'s."""
    notebook = nbformat.read(TOY_DIR / f"{STAGE}.ipynb", as_version=4)
    if cell is not None:
        index = next(i for i, c in enumerate(notebook.cells)
                     if c.metadata.get("nbgrader", {}).get("grade_id") == "ddpm_schedule")
        notebook.cells.insert(index, nbformat.v4.new_code_cell(cell))
    return notebook


def test_the_caps_stop_a_notebooks_whole_process_tree_and_keep_the_points_earned_before(tmp_path):
    for student, notebook in {"honest": _notebook(), "children": _notebook(CHILDREN_CELL),
                              "forks": _notebook(FORKS_CELL)}.items():
        folder = tmp_path / "submissions" / student / STAGE
        folder.mkdir(parents=True)
        nbformat.write(notebook, folder / f"{STAGE}.ipynb")
    course = tmp_path / "course"
    result = subprocess.run([sys.executable, "-m", "autograder", "grade", str(tmp_path / "submissions"),
                             "--course", str(course), "--stages", STAGE, "--solutions", str(TOY_DIR), "--jobs", "2",
                             "--cell-timeout", "60", "--memory-gb", "1",
                             *([] if SANDBOXED else ["--no-sandbox"])],
                            capture_output=True, text=True, timeout=360, env={**os.environ, "COURSE_MODE": "quick"})
    assert result.returncode == 0, result.stderr[-2000:]
    with open(course / "grades.csv") as handle:
        rows = {row["student"]: row for row in csv.DictReader(handle)}
    assert {student: float(row[STAGE]) for student, row in rows.items()} == {"honest": 4.0, "children": 3.0,
                                                                             "forks": 3.0}
    assert rows["honest"]["problems"] == ""
    memory, processes = rows["children"]["problems"], rows["forks"]["problems"]
    assert "the notebook's processes held " in memory, memory
    assert "GiB together, over the 1 GiB memory cap (--memory-gb); the kernel was stopped in cell " in memory
    assert "; later cells did not run" in memory
    assert f"over the cap of {GradingOptions.max_processes} processes (--max-processes)" in processes, processes


def test_grading_options_reject_a_bad_process_cap():
    for bad in (-1, 2.5, True):
        with pytest.raises(ValueError, match="max_processes"):
            GradingOptions(max_processes=bad)
    assert GradingOptions(max_processes=0).max_processes == 0  # no cap
