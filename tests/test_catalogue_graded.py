"""A sample of the mistake catalogue (``tests/test_mistake_catalogue.py``) through the real grader.

Each mistake is planted as a one-line edit of a solution notebook (the mistakes that passed the visible checks
before issue 23, and a tensor left on the CPU), the class is graded by ``python -m autograder grade``, and the test
cell after the mistake fails with the catalogue's own message, in the grader's verdict, not the student's kernel.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from autograder.course import SOLUTIONS_DIR
from autograder.execute.preprocessors import is_test_cell
from autograder.execute.sandbox import sandbox_unavailable

pytestmark = pytest.mark.timeout(600)

#: student: (stage, the TODO cell, its solution's line, the mistake's line, the message the grader must give)
SAMPLE = {
    "fixed-cap": ("01_noising", "cosine_schedule", "    betas = (1 - f[1:] / f[:-1]).clamp(max=max_beta)",
                  "    betas = (1 - f[1:] / f[:-1]).clamp(max=0.02)", "clip at the max_beta you are given"),
    "one-t": ("03_ddpm", "ddpm_loss",
              "    t = torch.randint(0, T, (x0.shape[0],), generator=generator, device=x0.device)",
              "    t = torch.randint(0, T, (1,), generator=generator, device=x0.device).expand(x0.shape[0])",
              "the same t (the same noise level) for all"),
    "one-hot": ("04_cfg", "cfg_loss", "    c = drop_labels(F.one_hot(labels, NUM_CLASSES).float(), p_uncond, generator)",
                "    c = drop_labels(F.one_hot(labels).float(), p_uncond, generator)",
                "expected 10: F.one_hot(labels, 10)"),
    "labels-on-cpu": ("04_cfg", "cfg_sample", "    c = F.one_hot(labels.to(device), NUM_CLASSES).float()",
                      "    c = F.one_hot(labels, NUM_CLASSES).float()", "labels are on cpu, the model on meta"),
    "global-noise": ("05_flow", "flow_sample",
                     "    x = torch.randn((num_samples, 1, 28, 28), generator=generator, device=device)",
                     "    x = torch.randn((num_samples, 1, 28, 28), device=device)",
                     "draws from the global random state"),
}


def _planted(stage: str, grade_id: str, right: str, wrong: str) -> nbformat.NotebookNode:
    notebook = nbformat.read(SOLUTIONS_DIR / f"{stage}.ipynb", as_version=4)
    cell = next(cell for cell in notebook.cells if cell.metadata.get("nbgrader", {}).get("grade_id") == grade_id)
    assert cell.source.splitlines().count(right) == 1, f"update SAMPLE to {stage}'s {grade_id}"
    cell.source = cell.source.replace(right, wrong)
    return notebook


def _verdict_after(notebook: nbformat.NotebookNode, grade_id: str) -> str:
    """The error the grader wrote into the first test cell after the TODO cell ``grade_id``."""
    ids = [cell.metadata.get("nbgrader", {}).get("grade_id") for cell in notebook.cells]
    test = next(cell for cell in notebook.cells[ids.index(grade_id):] if is_test_cell(cell))
    return " ".join(output.get("evalue", "") for output in test.outputs if output.get("output_type") == "error")


def test_a_sample_of_the_catalogue_fails_through_the_grader_with_its_own_message(tmp_path):
    for student, (stage, grade_id, right, wrong, _) in SAMPLE.items():
        folder = tmp_path / "submissions" / student / stage
        folder.mkdir(parents=True)
        nbformat.write(_planted(stage, grade_id, right, wrong), folder / f"{stage}.ipynb")
    course = tmp_path / "course"
    stages = sorted({stage for stage, *_ in SAMPLE.values()})
    result = subprocess.run([sys.executable, "-m", "autograder", "grade", str(tmp_path / "submissions"),
                             "--course", str(course), "--stages", *stages, "--jobs", "2",
                             *([] if sandbox_unavailable() is None else ["--no-sandbox"])],
                            capture_output=True, text=True, timeout=560, env={**os.environ, "COURSE_MODE": "quick"})
    assert result.returncode == 0, result.stderr[-2000:]
    with open(course / "grades.csv") as handle:
        rows = {row["student"]: row for row in csv.DictReader(handle)}
    for student, (stage, grade_id, _, _, message) in SAMPLE.items():
        executed = nbformat.read(course / "executed" / student / stage / f"{stage}.ipynb", as_version=4)
        assert message in _verdict_after(executed, grade_id), (student, _verdict_after(executed, grade_id))
        assert 0 < float(rows[student][stage]), student  # the other TODOs keep their points
