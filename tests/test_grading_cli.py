"""The real command line, ``python -m autograder grade`` then ``feedback``, on a hostile class of the toy course;
and what the command line imports before it has parsed its arguments.

tests/test_autograder.py grades a larger class through ``autograder.commands`` and looks inside every notebook;
this file runs the commands an instructor types, in their own processes, and reads only what they write: the
exit status, the table on screen, ``grades.csv``, the course folder and the feedback pages. The hostile cells
are those of tests/test_autograder.py.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest

from autograder.execute.sandbox import sandbox_unavailable
from test_autograder import (ACTIVE_HTML, COLAB_SECRETS, DETACHED, FILL_DISK, FORGE, PATCH_TORCH, _from_colab,
                             _live_html)

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


def _run(*arguments: str, timeout: int) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "autograder", *arguments], capture_output=True, text=True,
                            timeout=timeout, env={**os.environ, "COURSE_MODE": "quick"})
    assert result.returncode == 0, result.stderr[-2000:]
    return result


def test_the_command_line_grades_a_hostile_class_and_keeps_the_honest_students_full_marks(tmp_path):
    wrong = "    return x + sigma**2 * torch.randn(x.shape, generator=generator, dtype=x.dtype)"
    course = tmp_path / "course"
    students = {
        "honest": _notebook(),
        "rebinds": _notebook(wrong, "check_add_noise = lambda *args, **kwargs: print('✓ all good')"),
        "patches_torch": _notebook(wrong, PATCH_TORCH),
        "forges": _notebook(wrong, FORGE),
        "reference": _notebook("    import course_lib.noise\n    return course_lib.noise.add_noise(x, sigma, generator)"),
        "reads_course": _notebook(extra_cell=f"print(open({str(course / 'gradebook.db')!r}, 'rb').read(9))"),
        "stuck": _notebook(extra_cell="import signal\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\nwhile True:\n    pass"),
        "detached": _notebook(extra_cell=DETACHED.format(marker=str(tmp_path / "outlived.txt"))),
        "fills_disk": _notebook(extra_cell=FILL_DISK),
        "colab_html": _from_colab(_notebook(extra_cell=ACTIVE_HTML)),
    }
    for student, notebook in students.items():
        folder = tmp_path / "submissions" / student / STAGE
        folder.mkdir(parents=True)
        nbformat.write(notebook, folder / f"{STAGE}.ipynb")
    common = ["--course", str(course), "--stages", STAGE, "--solutions", str(TOY_DIR)]
    result = _run("grade", str(tmp_path / "submissions"), *common, "--jobs", "2", "--cell-timeout", "10",
                  "--memory-gb", "6", *([] if SANDBOXED else ["--no-sandbox"]), timeout=400)
    assert "honest" in result.stdout and "Grades written to" in result.stdout
    with open(course / "grades.csv") as handle:
        rows = {row["student"]: row for row in csv.DictReader(handle)}
    points = {student: float(row[STAGE]) for student, row in rows.items()}
    # the wrong add_noise earns none of its 3 points; the forged record also costs ddpm_schedule's point
    assert points == {"honest": 4.0, "rebinds": 1.0, "patches_torch": 1.0, "forges": 0.0, "reference": 1.0,
                      "reads_course": 4.0, "stuck": 4.0, "detached": 4.0, "fills_disk": 4.0, "colab_html": 4.0}
    assert "SIGINT ignored" in rows["stuck"]["problems"]
    time.sleep(4)  # the detached process would have written by now
    assert not (tmp_path / "outlived.txt").exists()
    if SANDBOXED:  # the course folder (and its gradebook) does not exist for the kernel: its own cell fails
        assert not rows["reads_course"]["problems"]

    _run("feedback", *common, timeout=200)
    page = (course / "feedback" / "colab_html" / STAGE / f"{STAGE}.html").read_text()
    live = _live_html(page)
    assert not [script for script in live["scripts"] if "pwned" in script] and not live["handlers"], live
    assert not [secret for secret in COLAB_SECRETS if secret in page]


#: run in a Python of its own: the command line on the arguments given, then which heavy packages it had imported
IMPORTED_BY_PARSING = """import sys
from autograder import cli
try:
    cli.main(sys.argv[1:])
except SystemExit as stop:
    print(stop.code, [name for name in ("torch", "nbformat", "nbgrader") if name in sys.modules])
"""


@pytest.mark.parametrize("arguments", [["--help"], ["grade"], ["demo", "--jobs", "two"], ["publish", "--help"],
                                       ["export", "--format", "xls"]])
def test_help_and_usage_errors_come_before_torch_nbformat_or_nbgrader_is_imported(arguments):
    """They come at once: each of these packages costs a second or more to import."""
    run = subprocess.run([sys.executable, "-c", IMPORTED_BY_PARSING, *arguments], capture_output=True, text=True,
                         timeout=60)
    assert (run.stdout.splitlines() or [""])[-1] in ("0 []", "2 []"), run.stdout[-500:] + run.stderr[-500:]


def test_grading_processes_skip_the_iri_grammar_and_still_validate_notebooks():
    """``autograder`` keeps jsonschema from importing rfc3987_syntax (1.5 s per process, for formats no schema of
    ours uses); nbformat still validates a course notebook and still refuses a broken one."""
    code = ("import sys, autograder, nbformat\n"
            f"notebook = nbformat.read({str(TOY_DIR / (STAGE + '.ipynb'))!r}, as_version=4)\n"
            "nbformat.validate(notebook)\n"
            "notebook.cells[0]['cell_type'] = 'nonsense'\n"
            "try:\n    nbformat.validate(notebook)\nexcept nbformat.ValidationError:\n    print('refused')\n"
            "print(sys.modules['rfc3987_syntax'])\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert run.stdout.split() == ["refused", "None"], run.stdout + run.stderr[-1000:]
