"""The course notebooks: every solution notebook runs and makes its figures, the committed student notebooks
are exactly what nbgrader generates, and the student notebooks fail cleanly where the TODOs are.

Parametrised over every ``solutions/*.ipynb``, so a new stage is tested as soon as its notebook lands.
Notebooks run through nbclient in ``COURSE_MODE=quick`` on real MNIST (``COURSE_DATA_DIR``), in a
temporary working folder (checkpoints land there), with the repository on ``PYTHONPATH``.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
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
# The line of the set-up cell that `python -m autograder publish` fills in.
PACKAGE_URL_LINE = 'PACKAGE_URL = ""  # set by "python -m autograder publish": this stage\'s course_lib package'
# A call of the training loop (course_lib.training.train, or course_lib.runs.train_stage), not model.train().
TRAINING_CALL = re.compile(r"(?<![.\w])(train|train_stage)\(")


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


def writes_checkpoints(notebook) -> bool:
    return any("default_checkpoint_dir(" in cell.source for cell in notebook.cells if cell.cell_type == "code")


def setup_cells() -> dict[bool, set[str]]:
    """The set-up cells' sources, keyed by whether the stage writes checkpoints."""
    found: dict[bool, set[str]] = {}
    for path in SOLUTIONS:
        notebook = nbformat.read(path, as_version=4)
        found.setdefault(writes_checkpoints(notebook), set()).add(notebook.cells[1].source)
    return found


def test_setup_cells_agree():
    """Two set-up cells: stages that write checkpoints ask about Google Drive, the others (01) do not; each stage's
    cell installs the package that publishing writes into it, and no other."""
    for path in SOLUTIONS:
        notebook = nbformat.read(path, as_version=4)
        setup = notebook.cells[1].source
        assert PACKAGE_URL_LINE in setup.splitlines(), f"{path.name}: the set-up cell lacks the PACKAGE_URL line"
        assert "github.com" not in setup, f"{path.name}: the set-up cell installs from a fixed URL"
        assert ("drive.mount(" in setup) == writes_checkpoints(notebook), \
            f"{path.name}: ask about Google Drive exactly when the notebook writes checkpoints"
    for asks_drive, sources in setup_cells().items():
        assert len(sources) == 1, f"set-up cells {'with' if asks_drive else 'without'} the Drive question differ"


SETUP_PROBE = r"""
import builtins, contextlib, io, json, os, subprocess, sys, types

source = sys.stdin.read()
results = []
for scenario in json.loads(sys.argv[1]):
    for name in [name for name in sys.modules if name == "course_lib" or name.startswith("course_lib.")]:
        del sys.modules[name]
    for name in ("google", "google.colab", "google.colab.drive"):
        sys.modules.pop(name, None)
    os.environ.pop("COURSE_MOUNT_DRIVE", None)
    calls = {"pip": [], "prompts": 0, "mounts": 0}
    os.path.isdir = (lambda real: lambda path: calls["mounts"] > 0 if path == "/content/drive/MyDrive"
                     else real(path))(os.path.isdir)
    subprocess.run = lambda args, **kwargs: calls["pip"].append(list(args))
    builtins.input = lambda prompt="": calls.__setitem__("prompts", calls["prompts"] + 1) or scenario["answer"]
    if scenario["colab"]:
        google, colab, drive = (types.ModuleType(name) for name in ("google", "google.colab", "google.colab.drive"))
        drive.mount = lambda path: calls.__setitem__("mounts", calls["mounts"] + 1)
        colab.drive = drive
        sys.modules.update({"google": google, "google.colab": colab, "google.colab.drive": drive})
    cell = source.replace('PACKAGE_URL = ""', f"PACKAGE_URL = {scenario['url']!r}", 1)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        for _ in range(scenario["runs"]):
            exec(cell, {"__name__": "__main__"})
    results.append({**calls, "printed": printed.getvalue()})
print(json.dumps(results))
"""


@pytest.mark.parametrize("asks_drive", [True, False], ids=["with_drive", "without_drive"])
def test_setup_cell_in_colab_installs_once_and_asks_once(asks_drive, monkeypatch):
    """The set-up cell run twice in a stand-in for Colab (fake google.colab, pip and input): it installs the published
    package once, asks the Drive question once whatever the answer (only in stages that write checkpoints), says so
    when the notebook was not published, and outside Colab neither installs nor asks."""
    sources = setup_cells().get(asks_drive)
    if not sources:
        pytest.skip(f"no stage has a set-up cell {'with' if asks_drive else 'without'} the Drive question")
    url = "https://example.org/course_lib-03_ddpm.whl"
    scenarios = [{"colab": True, "url": url, "runs": 2, "answer": "y"},   # published, Drive wanted
                 {"colab": True, "url": "", "runs": 2, "answer": "y"},    # not published
                 {"colab": True, "url": url, "runs": 2, "answer": "n"},   # Drive declined
                 {"colab": False, "url": url, "runs": 1, "answer": "y"}]  # not in Colab
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setenv("COURSE_MODE", "quick")
    done = subprocess.run([sys.executable, "-c", SETUP_PROBE, json.dumps(scenarios)], input=next(iter(sources)),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    published, unpublished, declined, local = json.loads(done.stdout.splitlines()[-1])
    asked = 1 if asks_drive else 0
    assert [args[-1] for args in published["pip"]] == [url] and "-q" in published["pip"][0]
    assert (published["prompts"], published["mounts"]) == (asked, asked)
    assert "not been published" not in published["printed"]
    assert unpublished["pip"] == [] and unpublished["printed"].count("has not been published") == 1
    assert (unpublished["prompts"], unpublished["mounts"]) == (asked, asked)
    assert (declined["prompts"], declined["mounts"]) == (asked, 0), "answering no must not bring the question back"
    assert (local["pip"], local["prompts"], local["mounts"]) == ([], 0, 0)
    assert "Running on" in local["printed"] and "not been published" not in local["printed"]


def test_coverage_names_cells_that_exist():
    """solutions/COVERAGE.md names cells as `01 `grade_id``: every cell it names exists in that notebook."""
    grade_ids = {path.stem[:2]: {grade_id(cell) for cell in nbformat.read(path, as_version=4).cells}
                 for path in SOLUTIONS}
    missing = []
    for row in (REPO / "solutions" / "COVERAGE.md").read_text().splitlines():
        for where in row.split("|")[1:-1]:
            notebook = None
            for number, name in re.findall(r"\b(0[1-9])\b|`([a-z][a-z0-9_]*)`", where):
                notebook = number or notebook
                if name and notebook in grade_ids and name not in grade_ids[notebook]:
                    missing.append(f"{notebook} {name}")
    assert not missing, f"solutions/COVERAGE.md names cells that do not exist: {missing}"


@pytest.mark.parametrize("path", SOLUTIONS, ids=STAGES)
def test_training_cells_say_how_long_they_take(path):
    """The prose above every training cell gives its time on a T4 and in quick mode."""
    notebook = nbformat.read(path, as_version=4)
    for position, cell in enumerate(notebook.cells):
        if cell.cell_type == "code" and TRAINING_CALL.search(cell.source):
            prose = next(c.source for c in reversed(notebook.cells[:position]) if c.cell_type == "markdown")
            assert "on a T4" in prose and "quick mode" in prose, \
                f"{grade_id(cell)} trains: the markdown above it must say how long on a T4 and in quick mode"


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
