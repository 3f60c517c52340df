"""``grade SUBMISSIONS --student ID`` and ``feedback --student ID`` through the real command line: a late and a
corrected student graded again leave every other student's row, graded copy, feedback page and record as they were;
and a plain rerun with ``--jobs`` executes nothing that was executed already.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from autograder.execute.sandbox import sandbox_unavailable

TOY_DIR = Path(__file__).parent / "submissions" / "toy"
STAGE = "00_toy"
pytestmark = pytest.mark.timeout(600)


def _autograder(*arguments: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "autograder", *arguments], capture_output=True, text=True,
                          timeout=500, env={**os.environ, "COURSE_MODE": "quick"})


def _grade(submissions: Path, course: Path, *more: str) -> subprocess.CompletedProcess:
    return _autograder("grade", str(submissions), "--course", str(course), "--stages", STAGE, "--solutions",
                       str(TOY_DIR), "--jobs", "2", *([] if sandbox_unavailable() is None else ["--no-sandbox"]),
                       *more)


def _hand_in(submissions: Path, student: str, wrong: bool = False) -> None:
    notebook = nbformat.read(TOY_DIR / f"{STAGE}.ipynb", as_version=4)
    if wrong:
        cell = next(c for c in notebook.cells if c.metadata.get("nbgrader", {}).get("grade_id") == "add_noise")
        cell.source = cell.source[: cell.source.index("    ### BEGIN SOLUTION")] + "    return x"
    (submissions / student / STAGE).mkdir(parents=True, exist_ok=True)
    nbformat.write(notebook, submissions / student / STAGE / f"{STAGE}.ipynb")


def _files(folder: Path) -> dict[str, bytes]:
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


def _rows(course: Path) -> dict[str, str]:
    lines = (course / "grades.csv").read_text().splitlines()
    return {line.split(",")[0]: line for line in lines[1:]}


def test_grading_one_student_again_leaves_everyone_else_as_they_were(tmp_path):
    submissions, course = tmp_path / "class", tmp_path / "course"
    _hand_in(submissions, "ada")
    _hand_in(submissions, "bo", wrong=True)
    (submissions / "cy").mkdir()  # nothing handed in yet
    first = _grade(submissions, course)
    assert first.returncode == 0, first.stderr[-2000:]
    assert _autograder("feedback", "--course", str(course), "--stages", STAGE).returncode == 0
    rows = _rows(course)
    assert [row.split(",")[2] for row in (rows["ada"], rows["bo"], rows["cy"])] == ["4", "1", "0"]
    rerun = _grade(submissions, course)  # as after a crash: what was executed is kept
    assert rerun.returncode == 0 and "2 notebooks already executed" in rerun.stdout and "  ran " not in rerun.stdout
    assert _rows(course) == rows
    kept = {"autograded": _files(course / "autograded" / "ada"), "feedback": _files(course / "feedback" / "ada"),
            "collected": _files(course / "collected" / "ada")}
    record = {entry["id"]: entry for entry in json.loads((course / "grading-run.json").read_text())["students"]}

    _hand_in(submissions, "bo")  # corrected
    _hand_in(submissions, "cy")  # late
    again = _grade(submissions, course, "--student", "bo", "--student", "cy")
    assert again.returncode == 0, again.stderr[-2000:]
    assert "ran ada" not in again.stdout and "ran bo" in again.stdout and "ran cy" in again.stdout
    assert _autograder("feedback", "--course", str(course), "--stages", STAGE, "--student", "bo",
                       "--student", "cy").returncode == 0
    now = _rows(course)
    assert now["ada"] == rows["ada"] and now["bo"].split(",")[2] == "4" and now["cy"].split(",")[2] == "4"
    assert {"autograded": _files(course / "autograded" / "ada"), "feedback": _files(course / "feedback" / "ada"),
            "collected": _files(course / "collected" / "ada")} == kept
    assert (course / "feedback" / "cy" / STAGE / f"{STAGE}.html").is_file()
    entries = {entry["id"]: entry for entry in json.loads((course / "grading-run.json").read_text())["students"]}
    assert entries["ada"] == record["ada"] and entries["cy"]["graded"] == [STAGE]

    unknown = _grade(submissions, course, "--student", "dee")
    assert unknown.returncode == 2 and "`--student`: no dee in the submissions" in unknown.stderr
    assert "Traceback" not in unknown.stderr and _rows(course) == now
    fresh = _grade(submissions, tmp_path / "new-course", "--student", "bo")
    assert fresh.returncode == 2 and "holds no grading run" in fresh.stderr
