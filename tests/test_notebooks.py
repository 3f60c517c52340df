"""The course notebooks: every solution notebook runs and makes its figures, the committed student notebooks
are exactly what nbgrader generates, and the student notebooks fail cleanly where the TODOs are.

Parametrised over every ``solutions/*.ipynb``, so a new stage is tested as soon as its notebook lands.
Notebooks run through nbclient in ``COURSE_MODE=quick`` on real MNIST (``COURSE_DATA_DIR``), in a
temporary working folder (checkpoints land there), with the repository on ``PYTHONPATH``.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

from autograder.course import generate_student_notebooks

REPO = Path(__file__).resolve().parent.parent
SOLUTIONS = sorted((REPO / "solutions").glob("*.ipynb"))
STAGES = [path.stem for path in SOLUTIONS]
CELL_TIMEOUT_S = 300
# What a student notebook may raise: the stubs' NotImplementedError, and the checks' CheckFailed
# (which is what a check, or a figure built on an unfinished function, turns it into).
STUDENT_ERRORS = {"NotImplementedError", "CheckFailed"}
MARKERS = ("BEGIN SOLUTION", "END SOLUTION", "BEGIN HIDDEN TESTS", "END HIDDEN TESTS")


def nbgrader_meta(cell) -> dict:
    return cell.metadata.get("nbgrader", {})


def is_test_cell(cell) -> bool:
    meta = nbgrader_meta(cell)
    return bool(meta.get("grade")) and not meta.get("solution")


@pytest.fixture
def kernel_env(monkeypatch, mnist_root, tmp_path) -> Path:
    """Environment inherited by the notebook kernel; returns the kernel's working folder."""
    monkeypatch.setenv("COURSE_MODE", "quick")
    monkeypatch.setenv("COURSE_DATA_DIR", str(mnist_root))
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    monkeypatch.delenv("NBGRADER_EXECUTION", raising=False)
    # One thread per kernel: on a shared 2-core runner, torch's default threads oversubscribe the CPU and a
    # notebook takes 5-30x longer.
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    inherited = [entry for entry in os.environ.get("PYTHONPATH", "").split(os.pathsep) if entry]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(REPO), *inherited]))
    workdir = tmp_path / "run"
    workdir.mkdir()
    return workdir


def execute(path: Path, workdir: Path, allow_errors: bool):
    """Run a notebook top to bottom with the ``python3`` kernel; return it with outputs and the seconds taken."""
    notebook = nbformat.read(path, as_version=4)
    client = NotebookClient(notebook, kernel_name="python3", timeout=CELL_TIMEOUT_S, allow_errors=allow_errors,
                            resources={"metadata": {"path": str(workdir)}})
    start = time.perf_counter()
    try:
        client.execute()
    except CellExecutionError as error:
        pytest.fail(f"{path.name} raised in a cell:\n{error}")
    return notebook, time.perf_counter() - start


def output_types(cell) -> set[str]:
    return {mime for output in cell.get("outputs", []) for mime in output.get("data", {})}


def grade_id(cell) -> str:
    return nbgrader_meta(cell).get("grade_id", "<no grade_id>")


@pytest.mark.parametrize("path", SOLUTIONS, ids=STAGES)
def test_solution_notebook_structure(path):
    """Every cell has nbgrader metadata per solutions/CONVENTIONS.md; the notebook is stored without outputs."""
    notebook = nbformat.read(path, as_version=4)
    nbformat.validate(notebook)
    ids = [grade_id(cell) for cell in notebook.cells]
    assert len(ids) == len(set(ids)), f"duplicate grade_id in {path.name}"
    assert "colab.research.google.com/github/diffusion-course/course/blob/main/notebooks/" \
           f"{path.name}" in notebook.cells[0].source, "the first cell must hold the Open in Colab badge"
    assert grade_id(notebook.cells[1]) == "setup" and "runtime.describe()" in notebook.cells[1].source
    kinds = set()
    for cell in notebook.cells:
        meta = nbgrader_meta(cell)
        assert meta.get("schema_version") == 3 and "grade_id" in meta, \
            f"cell without nbgrader metadata: {cell.source[:60]!r}"
        kind = (meta["grade"], meta["solution"], meta["locked"])
        assert kind in {(False, False, True), (False, True, False), (True, False, True), (True, True, False)}, \
            f"{grade_id(cell)}: unexpected grade/solution/locked {kind}"
        kinds.add(kind)
        if meta["grade"]:
            assert meta.get("points", 0) > 0, f"{grade_id(cell)} is graded without points"
        if meta["solution"] and cell.cell_type == "code":
            assert "### BEGIN SOLUTION" in cell.source, f"{grade_id(cell)} has no solution region"
        if is_test_cell(cell):
            assert "### BEGIN HIDDEN TESTS" in cell.source, f"{grade_id(cell)} has no hidden tests"
        if cell.cell_type == "code":
            assert not cell.outputs and cell.execution_count is None, f"{grade_id(cell)} is stored with outputs"
    assert kinds == {(False, False, True), (False, True, False), (True, False, True), (True, True, False)}, \
        "a notebook has read-only, solution, autograded-test and written-answer cells"


@pytest.mark.parametrize("path", SOLUTIONS, ids=STAGES)
def test_solution_notebook_runs_and_makes_its_figures(path, kernel_env):
    notebook, seconds = execute(path, kernel_env, allow_errors=False)
    tagged = [(cell, set(cell.metadata.get("tags", []))) for cell in notebook.cells]
    assert any("figure" in tags for _, tags in tagged), f"{path.name} tags no figure cell"
    for cell, tags in tagged:
        if "figure" in tags:
            assert "image/png" in output_types(cell), f"figure cell {grade_id(cell)} made no png"
        if "widget" in tags:
            assert "application/vnd.jupyter.widget-view+json" in output_types(cell), \
                f"widget cell {grade_id(cell)} made no widget"
        if is_test_cell(cell):
            streams = [o for o in cell.outputs if o.output_type == "stream" and o.name == "stderr"]
            assert not streams, f"test cell {grade_id(cell)} writes to stderr (nbgrader gives it 0): {streams}"
    print(f"{path.name}: solution ran in {seconds:.1f} s")


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> dict[str, Path]:
    """Student notebooks freshly generated by nbgrader from solutions/, by stage."""
    root = tmp_path_factory.mktemp("course")
    written = generate_student_notebooks(root, out_dir=root / "student", stages=STAGES)
    return {path.stem: path for path in written}


@pytest.mark.parametrize("path", SOLUTIONS, ids=STAGES)
def test_student_notebook_is_generated_from_the_solution(path, generated):
    committed_path = REPO / "notebooks" / path.name
    assert committed_path.exists(), f"notebooks/{path.name} is missing: regenerate it (solutions/CONVENTIONS.md)"
    committed = nbformat.read(committed_path, as_version=4)
    fresh = nbformat.read(generated[path.stem], as_version=4)
    assert [(c.cell_type, c.source) for c in committed.cells] == [(c.cell_type, c.source) for c in fresh.cells], \
        f"notebooks/{path.name} differs from what nbgrader generates from solutions/{path.name}: regenerate it"
    solution = nbformat.read(path, as_version=4)
    for student_cell, solution_cell in zip(committed.cells, solution.cells):
        assert not any(marker in student_cell.source for marker in MARKERS), \
            f"{grade_id(solution_cell)}: solution or hidden-test text left in the student notebook"
        if student_cell.cell_type == "code":
            assert not student_cell.outputs, f"notebooks/{path.name} is stored with outputs"
        if nbgrader_meta(solution_cell).get("solution"):
            stub = "raise NotImplementedError()" if student_cell.cell_type == "code" else "YOUR ANSWER HERE"
            assert stub in student_cell.source, f"{grade_id(solution_cell)} has no stub in the student notebook"


@pytest.mark.parametrize("path", SOLUTIONS, ids=STAGES)
def test_student_notebook_fails_cleanly(path, kernel_env):
    """With the stubs in place, every error is a clear NotImplementedError or CheckFailed, the kernel survives
    to the last cell, and every autograded test cell fails (a test that passes on a stub proves nothing)."""
    student_path = REPO / "notebooks" / path.name
    assert student_path.exists(), f"notebooks/{path.name} is missing: regenerate it (solutions/CONVENTIONS.md)"
    notebook, seconds = execute(student_path, kernel_env, allow_errors=True)
    code_cells = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert all(cell.execution_count is not None for cell in code_cells), "the kernel stopped before the last cell"
    for cell in code_cells:
        errors = [output for output in cell.outputs if output.output_type == "error"]
        unexpected = [f"{e.ename}: {e.evalue}" for e in errors if e.ename not in STUDENT_ERRORS]
        assert not unexpected, f"{grade_id(cell)} failed with an unexpected error: {unexpected}"
        if is_test_cell(cell):
            assert errors, f"test cell {grade_id(cell)} passes on the unfinished stub"
    print(f"{path.name}: student version ran in {seconds:.1f} s")
