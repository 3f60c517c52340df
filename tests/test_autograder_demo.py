"""The README's main instructor command on the real five notebooks: ``python -m autograder demo``, then ``feedback``.

One run (quick mode, CPU, 2 jobs): the solutions get full marks, the untouched student notebooks no auto-graded
points, the submission with deliberate mistakes (``autograder.demo.MISTAKES``) something in between.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys

import nbformat
import pytest
from nbgrader.api import Gradebook

from autograder.course import REPO_ROOT, SOLUTIONS_DIR, STAGES
from autograder.demo import MISTAKES
from scoring_helpers import gradebook_scores, graded_copies, rescored

pytestmark = pytest.mark.timeout(600)


def _autograder(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "COURSE_MODE": "quick"}
    return subprocess.run([sys.executable, "-m", "autograder", *args], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=580)


def _assert_the_report_finds_each_planted_mistake(course) -> None:
    """The class report's failing-check messages hold the planted mistake of each stage, and none of the solutions."""
    from nbgrader.api import Gradebook

    from autograder.class_report.gather import gather_stage

    with Gradebook(f"sqlite:///{course / 'gradebook.db'}") as gradebook:
        for stage in STAGES:
            found = gather_stage(course, stage, ["solutions", "untouched", "mistakes"], gradebook)
            failed = {student for mistakes in found.mistakes.values() for mistake in mistakes.values()
                      for student in mistake.students}
            assert "solutions" not in failed and "untouched" in failed, stage
            assert ("mistakes" in failed) == (stage in MISTAKES), stage


def _assert_a_later_demo_starts_its_gradebook_afresh(course, tmp_path) -> None:
    """After graded cells were removed from a source notebook, the demo runs again in its old folder (nbgrader
    refuses to release a graded notebook whose cells changed); ``release`` into the graded folder says why it
    cannot, without a traceback; a folder that holds another student's grades is refused and left as it was."""
    changed = tmp_path / "changed"
    changed.mkdir()
    notebook = nbformat.read(SOLUTIONS_DIR / "01_noising.ipynb", as_version=4)
    notebook.cells = [cell for cell in notebook.cells
                      if cell.metadata.get("nbgrader", {}).get("grade_id") != "answer_cosine_clip"]
    nbformat.write(notebook, changed / "01_noising.ipynb")
    again = _autograder("demo", "--course", str(course), "--stages", "01_noising", "--solutions", str(changed),
                        "--jobs", "2")
    assert again.returncode == 0, again.stderr[-3000:]
    with (course / "grades.csv").open() as handle:
        rows = {row["student"]: row for row in csv.DictReader(handle)}
    assert set(rows) == {"solutions", "untouched", "mistakes"} and "05_flow" not in rows["solutions"]
    assert float(rows["solutions"]["01_noising"]) == float(rows["solutions"]["max_total"]) > 0
    assert float(rows["untouched"]["01_noising"]) == 0

    graded_source = (course / "source" / "01_noising" / "01_noising.ipynb").read_bytes()
    release = _autograder("release", "--course", str(course), "--stages", "01_noising",
                          "--notebooks", str(tmp_path / "released"))
    assert release.returncode == 2 and "Traceback" not in release.stderr
    assert "01_noising has graded submissions" in release.stderr and "a new --course folder" in release.stderr
    assert (course / "source" / "01_noising" / "01_noising.ipynb").read_bytes() == graded_source

    with Gradebook(f"sqlite:///{course / 'gradebook.db'}") as gradebook:
        gradebook.add_student("alice")
    before = (course / "gradebook.db").read_bytes()
    refused = _autograder("demo", "--course", str(course), "--stages", "01_noising", "--jobs", "1")
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert "holds the grades of 1 other student than the demo's" in refused.stderr
    assert (course / "gradebook.db").read_bytes() == before


def test_demo_grades_solutions_untouched_and_mistakes(tmp_path):
    course = tmp_path / "course"
    run = _autograder("demo", "--course", str(course), "--jobs", "2")
    assert run.returncode == 0, run.stderr[-3000:]
    assert "solutions" in run.stdout and "Grades written to" in run.stdout
    report = course / "report" / "index.html"
    assert f"Class report: {report}" in run.stdout and "<h2>Most frequent mistakes per TODO</h2>" in report.read_text()
    with (course / "grades.csv").open() as handle:
        rows = {row["student"]: row for row in csv.DictReader(handle)}
    assert set(rows) == {"solutions", "untouched", "mistakes"}
    maximum = float(rows["solutions"]["max_total"])
    assert maximum > 0
    assert float(rows["solutions"]["total"]) == maximum and not rows["solutions"]["problems"]
    assert float(rows["untouched"]["total"]) == 0.0
    assert 0 < float(rows["mistakes"]["total"]) < maximum
    for stage in MISTAKES:  # each planted mistake costs points in its own stage
        assert float(rows["mistakes"][stage]) < float(rows["solutions"][stage])
    _assert_the_report_finds_each_planted_mistake(course)
    # scored in one process (18 notebooks); two processes with one writer give the same gradebook and graded copies
    copy, not_scored = rescored(course, tmp_path / "scored-on-two-processes", STAGES, jobs=2)
    assert not not_scored
    assert gradebook_scores(copy) == gradebook_scores(course) and graded_copies(copy) == graded_copies(course)

    pages = _autograder("feedback", "--course", str(course))
    assert pages.returncode == 0, pages.stderr[-3000:]
    for stage in STAGES:
        html = (course / "feedback" / "mistakes" / stage / f"{stage}.html").read_text()
        assert "HIDDEN TESTS" not in html
    _assert_a_later_demo_starts_its_gradebook_afresh(course, tmp_path)
