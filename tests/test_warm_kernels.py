"""Warm kernels (``autograder/execute/warm_kernels.py``): forked from a worker's kernel template, one notebook each.

Through the real command line: a class of the toy course graded by one worker, so the first notebook runs in a
kernel of the template started with the worker and every later one in a kernel forked from it. Each student's
notebook has a cell of its own that prints what an earlier notebook left behind (a file in its folder, an environment
variable, an attribute of a module the template imported), the files of its folder and its kernel's signing key,
then leaves all three behind itself; only the first notebook computes the checks' expected values, in its fixed
cost. Then the templates themselves: a kernel is forked only for its template's own settings, with the notebook's
files in its folder, and a worker holds the templates of its stage and of the next one only.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nbformat
import pytest
from jupyter_core.utils import run_sync
from traitlets.config import Config

from autograder.execute import warm_kernels
from autograder.execute.notebook import kernel_python_path
from autograder.execute.pool import next_views
from autograder.execute.sandbox import sandbox_unavailable

TOY_DIR = Path(__file__).parent / "submissions" / "toy"
STAGE = "00_toy"
STUDENTS = ("ann", "bob", "cat", "dan")

pytestmark = [pytest.mark.timeout(300),
              pytest.mark.skipif(sandbox_unavailable() is not None,
                                 reason=f"no sandbox can be made here: {sandbox_unavailable()}")]

#: prints what earlier notebooks left behind, its folder, its kernel's key, its capabilities and whether it could read
#: its template's memory; then leaves all three behind
SNOOP = """import json, os, pathlib, torch
left = [name for name, found in (("file", pathlib.Path("left.txt").exists()), ("variable", "LEFT_BEHIND" in os.environ),
                                 ("attribute", hasattr(torch, "left_behind"))) if found]
kernel = json.load(open("/run/kernel/connection.json"))["key"][:12]  # each kernel's own signing key
folder = {name: pathlib.Path(name).read_text() for name in sorted(os.listdir(".")) if not name.startswith(".")}
caps = next(line.split()[1] for line in open("/proc/self/status") if line.startswith("CapEff"))
try:  # its template is PID 1 of the /proc it sees
    template = open("/proc/1/mem", "rb").read(1) is not None
except OSError:
    template = False
print("SNOOP " + json.dumps({"left": left, "folder": folder, "kernel": kernel, "caps": caps, "template": template}))
pathlib.Path("left.txt").write_text("x")
os.environ["LEFT_BEHIND"] = "1"
torch.left_behind = True
"""


def _submission(folder: Path) -> None:
    notebook = nbformat.read(TOY_DIR / f"{STAGE}.ipynb", as_version=4)
    notebook.cells.insert(1, nbformat.v4.new_code_cell(SNOOP))
    folder.mkdir(parents=True)
    nbformat.write(notebook, folder / f"{STAGE}.ipynb")
    (folder / "timestamp.txt").write_text("2026-12-01 10:00:00 UTC")  # the one other file a kernel's folder gets


def _snoop(executed: Path) -> dict:
    notebook = nbformat.read(executed, as_version=4)
    text = "".join(output.get("text", "") for cell in notebook.cells if cell.cell_type == "code"
                   for output in cell.get("outputs", []) if output.get("output_type") == "stream")
    line = next(line for line in text.splitlines() if line.startswith("SNOOP "))
    record = notebook.metadata["autograder"]
    from_executor = record["first_cell_at"] - record["executor_started_at"]
    return {**json.loads(line[len("SNOOP "):]), "warm": record["warm_kernel"],
            "computed": record["computed_expected_values"],
            "parts in order": 0 <= record["warm_kernel_wait"] <= from_executor}


def test_every_notebook_gets_a_kernel_of_its_own_that_no_earlier_notebook_touched(tmp_path, temporary_folder):
    for student in STUDENTS:
        _submission(tmp_path / "submissions" / student / STAGE)
    course = tmp_path / "course"
    result = subprocess.run([sys.executable, "-m", "autograder", "grade", str(tmp_path / "submissions"),
                             "--course", str(course), "--stages", STAGE, "--solutions", str(TOY_DIR), "--jobs", "1"],
                            capture_output=True, text=True, timeout=280, env={**os.environ, "COURSE_MODE": "quick"})
    assert result.returncode == 0, result.stderr[-2000:]
    with open(course / "grades.csv") as handle:
        assert {row["student"]: float(row[STAGE]) for row in csv.DictReader(handle)} == dict.fromkeys(STUDENTS, 4.0)
    seen = {student: _snoop(course / "executed" / student / STAGE / f"{STAGE}.ipynb") for student in STUDENTS}
    assert [seen[student]["left"] for student in STUDENTS] == [[]] * len(STUDENTS)
    assert [seen[student]["folder"] for student in STUDENTS] == [{"timestamp.txt": "2026-12-01 10:00:00 UTC"}] * 4
    assert len({seen[student]["kernel"] for student in STUDENTS}) == len(STUDENTS)  # never a kernel twice
    assert {(seen[student]["caps"], seen[student]["template"]) for student in STUDENTS} == {("0000000000000000", False)}
    assert all(seen[student]["warm"] for student in STUDENTS)  # the first's kernel started with the worker
    # the checks' expected values are computed by the first notebook and read by the others (in its fixed cost)
    assert [seen[student]["computed"] for student in STUDENTS] == [True, False, False, False]
    # its fixed cost's parts: the executor starts, takes its warm kernel (waiting for it), then runs the first cell
    assert all(seen[student]["parts in order"] for student in STUDENTS)
    assert _no_runtime_left(temporary_folder)


def test_the_first_warm_kernel_is_of_the_kernel_the_source_notebook_names(tmp_path):
    """An instructor's own kernelspec (here ``course-python``, this Python): the worker's first warm kernel is of that
    kernel, so the first notebook runs in it rather than in a kernel started when it arrived."""
    spec = tmp_path / "jupyter" / "kernels" / "course-python"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Course Python", "language": "python"}))
    solutions = tmp_path / "solutions"
    solutions.mkdir()
    source = nbformat.read(TOY_DIR / f"{STAGE}.ipynb", as_version=4)
    source.metadata["kernelspec"] = {"name": "course-python", "display_name": "Course Python", "language": "python"}
    nbformat.write(source, solutions / f"{STAGE}.ipynb")
    for student in STUDENTS[:2]:
        _submission(tmp_path / "submissions" / student / STAGE)
    course = tmp_path / "course"
    result = subprocess.run([sys.executable, "-m", "autograder", "grade", str(tmp_path / "submissions"),
                             "--course", str(course), "--stages", STAGE, "--solutions", str(solutions), "--jobs", "1"],
                            capture_output=True, text=True, timeout=280,
                            env={**os.environ, "COURSE_MODE": "quick", "JUPYTER_PATH": str(tmp_path / "jupyter")})
    assert result.returncode == 0, result.stderr[-2000:]
    executed = [nbformat.read(course / "executed" / student / STAGE / f"{STAGE}.ipynb", as_version=4)
                for student in STUDENTS[:2]]
    assert [notebook.metadata["kernelspec"]["name"] for notebook in executed] == ["course-python"] * 2
    assert [_snoop(course / "executed" / student / STAGE / f"{STAGE}.ipynb")["warm"] for student in STUDENTS[:2]
            ] == [True, True]


@pytest.fixture
def temporary_folder(tmp_path, monkeypatch) -> Path:
    """The temporary folder of this test and of the processes it starts, where the kernels' runtime folders go: so
    that the kernels another test process starts at the same time are not taken for this test's."""
    folder = tmp_path / "tmp"
    folder.mkdir()
    monkeypatch.setenv("TMPDIR", str(folder))
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


def _no_runtime_left(folder: Path) -> bool:
    """No kernel's or template's runtime folder is left in ``folder`` (the templates' are removed at exit)."""
    return not list(folder.glob("kernel-sandbox-*")) + list(folder.glob("kernel-template-*"))


def _config(tmp_path: Path, view: str | None, memory_gb: float = 2.0) -> Config:
    config = Config()
    config.LimitedKernelManager.memory_gb = memory_gb
    config.SandboxedKernelManager.python_path = [str(kernel_python_path(tmp_path, view))]
    config.SandboxedKernelManager.disk_mb = 32
    return config


def _alive(manager) -> bool:
    return manager.provisioner is not None and manager.provisioner.process.poll() is None


def test_a_template_forks_a_new_kernel_for_each_notebook_of_its_own_settings_only(tmp_path, temporary_folder):
    folder = tmp_path / "notebook"
    (folder / "data").mkdir(parents=True)
    (folder / "data" / "digits.txt").write_text("0123")
    (folder / "answers.ipynb").write_text("{}")  # never a notebook
    first, other = _config(tmp_path, "ddpm"), _config(tmp_path, "ddpm", memory_gb=3.0)
    try:
        assert warm_kernels.take(first, "python3", str(folder), first) is None  # no template yet: one starts
        assert warm_kernels.take(other, "python3", str(folder), other) is None  # the template has other caps
        manager = warm_kernels.take(other, "python3", str(folder), other)
        assert manager is not None and _alive(manager)
        root = Path(f"/proc/{manager.kernel_pid}/root{warm_kernels.WORKDIR}")
        assert (root / "data" / "digits.txt").read_text() == "0123"
        assert not (root / "answers.ipynb").exists()
        run_sync(manager.shutdown_kernel)(now=True)  # whatever event loop an earlier test left running
        again = warm_kernels.take(other, "python3", str(folder))  # no other stage expected after this one
        assert again is not None and again is not manager and again.kernel_pid != manager.kernel_pid
        assert again.template is manager.template and manager.template.alive
        run_sync(again.shutdown_kernel)(now=True)
    finally:
        warm_kernels.close()
    deadline = time.monotonic() + 30
    while not _no_runtime_left(temporary_folder):
        assert time.monotonic() < deadline, "a kernel's runtime folder was left behind"
        time.sleep(0.2)


def test_a_worker_holds_the_templates_of_its_stage_and_the_next_and_ends_the_others(tmp_path):
    folder = tmp_path / "notebook"
    folder.mkdir()
    ddpm, cfg = _config(tmp_path, "ddpm"), _config(tmp_path, "cfg")
    try:
        assert warm_kernels.take(ddpm, "python3", str(folder), cfg) is None  # none yet: ddpm's and cfg's start
        ddpm_kernel = warm_kernels.take(ddpm, "python3", str(folder), cfg)
        assert ddpm_kernel is not None and _alive(ddpm_kernel)
        cfg_kernel = warm_kernels.take(cfg, "python3", str(folder))  # the next stage's template was ready
        assert cfg_kernel is not None and cfg_kernel.template is not ddpm_kernel.template
        assert ddpm_kernel.template.alive  # retired, but its kernel still runs
        run_sync(ddpm_kernel.shutdown_kernel)(now=True)
        assert not ddpm_kernel.template.alive and _alive(cfg_kernel)  # it ended with its last kernel
        run_sync(cfg_kernel.shutdown_kernel)(now=True)
    finally:
        warm_kernels.close()


def test_each_worker_starts_a_template_for_the_next_stage_it_most_likely_runs():
    tasks = [("ann", "01"), ("bob", "01"), ("cat", "01"), ("ann", "02"), ("bob", "02")]
    views = {"01": "/view/01", "02": "/view/02"}
    assert next_views(tasks, views, 2) == ["/view/02", "/view/02", "/view/02", "", ""]
    assert next_views(tasks, views, 1) == ["/view/02", "/view/02", "/view/02", "", ""]
    assert next_views([("ann", "01"), ("bob", "02"), ("cat", "01"), ("dan", "01")], views, 2) == ["", "/view/01", "", ""]


def test_the_template_imports_what_the_source_notebook_will(tmp_path):
    from autograder.execute.notebook import kernel_imports

    source = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell("import numpy as np\nfrom json import dumps\n%matplotlib inline"),
        nbformat.v4.new_code_cell("def f():\n    import csv"),
        nbformat.v4.new_code_cell("import zlib +"),
        nbformat.v4.new_code_cell("import wave", metadata={"tags": ["skip_when_grading"]}),
        nbformat.v4.new_code_cell("check_add_noise(add_noise)",
                                  metadata={"nbgrader": {"grade": True, "grade_id": "t", "points": 1}}),
    ])
    (tmp_path / "source" / "00_toy").mkdir(parents=True)
    nbformat.write(source, tmp_path / "source" / "00_toy" / "00_toy.ipynb")
    modules = kernel_imports(tmp_path, "00_toy")
    assert set(modules) == {"numpy", "csv", "course_lib.stages.noising.checks", "course_lib.checks.protocol",
                            "torch._dynamo", "json"}  # wave's cell is skipped, zlib's does not parse
