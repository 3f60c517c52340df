"""autograder.execute.verdicts: test cells become probes in the kernel and verdicts in the grader.

The kernel is simulated here by running the probe cell's source in a namespace, in the notebook's folder, as the
real kernel would; tests/test_autograder.py grades real submissions through the whole pipeline.
"""

from __future__ import annotations

import ast
import base64
import io
import pickle
from pathlib import Path

import nbformat
import pytest
import torch
from nbformat.v4 import new_code_cell, new_notebook

from autograder.course import SOLUTIONS_DIR
from autograder.execute.preprocessors import is_test_cell
from autograder.execute.verdicts import JudgeTestCells, ProbeTestCells, check_calls, earliest_stage
from course_lib.stages.noising import answers as noising
from course_lib.checks import protocol
from course_lib.checks.protocol import RECORD_MIME

TEST_SOURCE = """# Checks your add_noise (graded: 2 points).
check_add_noise(add_noise)
### BEGIN HIDDEN TESTS
check_add_noise(add_noise, shape=(3, 2, 5, 7), sigma=0.3, seed=2024)
### END HIDDEN TESTS
"""


def _notebook() -> nbformat.NotebookNode:
    test = new_code_cell(TEST_SOURCE, metadata={"nbgrader": {"grade": True, "solution": False, "locked": True,
                                                             "grade_id": "test_add_noise", "points": 2}})
    return new_notebook(cells=[test])


def _display(payload: str) -> nbformat.NotebookNode:
    return nbformat.from_dict({"output_type": "display_data", "metadata": {}, "data": {RECORD_MIME: payload}})


def _payload(value) -> str:
    buffer = io.BytesIO()
    torch.save(value, buffer)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _grade(tmp_path, monkeypatch, kernel_namespace: dict, forge=None) -> nbformat.NotebookNode:
    """Probe; 'execute' the probe cell in ``kernel_namespace`` from the notebook's folder, its displays becoming
    the cell's outputs (``forge`` may rewrite them, as a student's code could); judge."""
    nb, resources = ProbeTestCells().preprocess(_notebook(), {"metadata": {"path": str(tmp_path)}})
    probe = nb.cells[0].source
    assert "check_add_noise(" not in probe and "expected" not in probe
    shown: list[str] = []
    monkeypatch.setattr(protocol, "show_record", shown.append)
    monkeypatch.chdir(tmp_path)
    exec(probe, kernel_namespace)
    outputs = [_display(payload) for payload in shown]
    nb.cells[0].outputs = forge(outputs) if forge else outputs
    nb, _ = JudgeTestCells().preprocess(nb, resources)
    return nb.cells[0]


def test_right_code_passes_every_call_and_the_cell_gets_its_source_back(tmp_path, monkeypatch):
    cell = _grade(tmp_path, monkeypatch, {"add_noise": noising.add_noise})
    assert cell.source == TEST_SOURCE
    assert [output.output_type for output in cell.outputs] == ["stream"]
    assert cell.outputs[0].text.count("✓ add_noise") == 1 and "✓ 1 hidden tests passed" in cell.outputs[0].text
    assert "(3, 2, 5, 7)" not in cell.outputs[0].text, "the hidden case is not shown"
    assert not (tmp_path / ".checks").exists(), "no probe file is left in the graded copy"


def test_wrong_code_fails_with_the_hint(tmp_path, monkeypatch):
    def add_noise(x, sigma, generator=None):
        return x + sigma**2 * torch.randn(x.shape, generator=generator)

    cell = _grade(tmp_path, monkeypatch, {"add_noise": add_noise})
    assert cell.outputs[-1].output_type == "error" and cell.outputs[-1].ename == "CheckFailed"
    assert "sigma**2 (the variance)" in cell.outputs[-1].evalue


def test_the_inputs_file_holds_no_expected_values(tmp_path, monkeypatch):
    seen = {}

    def look(outputs):
        seen.update(torch.load(tmp_path / ".checks" / "test_add_noise.inputs.pt", weights_only=True)[0])
        return outputs

    _grade(tmp_path, monkeypatch, {"add_noise": noising.add_noise}, forge=look)
    assert set(seen) == {"x", "sigma", "noise_seed"}


def test_rebinding_the_checks_or_silencing_the_recorder_earns_nothing(tmp_path, monkeypatch):
    """A student whose code makes the recorder show nothing, or who rebinds the check, gets no point."""
    def silent(cell, calls):
        return None

    monkeypatch.setattr(protocol, "record", silent)
    cell = _grade(tmp_path, monkeypatch, {"add_noise": lambda x, sigma, generator=None: x,
                                          "check_add_noise": lambda *args, **kwargs: None})
    assert cell.outputs[-1].ename == "CheckFailed" and "did not finish" in cell.outputs[-1].evalue


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("forgery", ["zeros", "pickle", "wrong_count", "two_records", "not_base64"])
def test_forged_records_are_refused(tmp_path, monkeypatch, forgery):
    """A student who shows a record of their own: wrong numbers fail, a pickle that runs code is refused unread,
    and a record of another shape, a second record, or garbage is refused."""
    ran = tmp_path / "ran"

    class Exploit:
        def __reduce__(self):
            return (open, (str(ran), "w"))

    def forge(outputs):
        zeros = {"z": torch.zeros(4, 1, 28, 28), "again": torch.zeros(4, 1, 28, 28),
                 "x_after": torch.zeros(4, 1, 28, 28)}
        return {"zeros": [_display(_payload([zeros, zeros]))],
                "pickle": [_display(base64.b64encode(pickle.dumps([Exploit(), Exploit()])).decode())],
                "wrong_count": [_display(_payload([{}] * 5))],
                "two_records": outputs + outputs,
                "not_base64": [_display("this is not base64 !")]}[forgery]

    cell = _grade(tmp_path, monkeypatch, {"add_noise": noising.add_noise}, forge=forge)
    assert cell.outputs[-1].ename == "CheckFailed"
    assert not ran.exists(), "the forged pickle was never unpickled"


def test_a_missing_student_function_fails_that_cell_only(tmp_path, monkeypatch):
    cell = _grade(tmp_path, monkeypatch, {})
    assert cell.outputs[-1].ename == "CheckFailed" and "add_noise" in cell.outputs[-1].evalue


def test_check_calls_accepts_only_check_calls_with_literal_cases():
    assert [call.case for call in check_calls(TEST_SOURCE)] == [{}, {"shape": (3, 2, 5, 7), "sigma": 0.3, "seed": 2024}]
    for source, message in [("assert add_noise(1, 2) == 3", "not a call of a course check"),
                            ("check_add_noise(add_noise, seed=SEED)", "literals"),
                            ("check_add_noise(add_noise, colour=3)", "unexpected arguments"),
                            ("check_add_noise(lambda x: x)", "by name")]:
        with pytest.raises((ValueError, TypeError), match=message):
            check_calls(source)


@pytest.mark.parametrize("path", sorted(SOLUTIONS_DIR.glob("*.ipynb")), ids=lambda path: path.stem)
def test_every_test_cell_of_the_course_is_made_of_check_calls(path):
    """The grader can only judge check calls: every autograded test cell of every source notebook parses, and the
    notebook's earliest check stage is its own stage."""
    from course_lib.stages import get

    notebook = nbformat.read(path, as_version=4)
    for cell in notebook.cells:
        if is_test_cell(cell):
            assert check_calls(cell.source, cell.metadata["nbgrader"]["grade_id"])
    assert earliest_stage(notebook) == get(path.stem).key


def test_everything_the_checks_save_holds_only_its_own_data():
    """A tensor's storage can be larger than the tensor (a scalar loss keeps its reduction's 25 kB buffer, whose
    tail is leftover memory); ``torch.save`` would write all of it into a record, grading inputs or a package's
    fixtures. What the checks hand out is compact."""
    from autograder.execute.verdicts import load_check_modules
    from course_lib.checks.protocol import CHECKS

    load_check_modules()
    oversized = []

    def walk(value, where):
        if isinstance(value, torch.Tensor):
            if value.untyped_storage().nbytes() != value.numel() * value.element_size():
                oversized.append(where)
        elif isinstance(value, dict):
            for key, item in value.items():
                walk(item, f"{where}.{key}")
        elif isinstance(value, (list, tuple)):
            for index, item in enumerate(value):
                walk(item, f"{where}[{index}]")

    for entry in CHECKS.values():
        walk(entry.expectations(entry.case()), entry.name)
    assert not oversized, oversized


def _bound_names(source: str) -> set[str]:
    """Every name a cell binds at its top level or below: assignments, definitions, imports, loop targets."""
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((alias.asname or alias.name).split(".")[0] for alias in node.names)
    return names


@pytest.mark.parametrize("notebook", sorted(SOLUTIONS_DIR.glob("*.ipynb")), ids=lambda path: path.stem)
def test_no_test_cell_needs_what_a_cell_skipped_when_grading_makes(notebook):
    """Grading skips the cells tagged ``skip_when_grading`` (training runs, sampling demos); every test still runs
    the student's own functions on the grader's inputs, so no test cell may need a trained model, a schedule or
    anything else such a cell makes: each object a test passes to a check is made by a cell that grading runs."""
    nb = nbformat.read(notebook, as_version=4)
    made_when_grading, made_when_skipped = set(), set()
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        if is_test_cell(cell):
            for call in check_calls(cell.source, cell.metadata["nbgrader"]["grade_id"]):
                missing = set(call.students) - made_when_grading
                assert not missing, (f"{cell.metadata['nbgrader']['grade_id']} passes {sorted(missing)}, made "
                                     + ("only by cells skipped when grading" if missing & made_when_skipped
                                        else "by no cell before it"))
        elif "skip_when_grading" in cell.metadata.get("tags", []):
            made_when_skipped |= _bound_names(cell.source)
        else:
            made_when_grading |= _bound_names(cell.source)


def test_a_checks_expected_values_are_computed_once_per_process_and_each_notebook_gets_a_copy(monkeypatch):
    from autograder.execute import verdicts

    computed = []
    reference = protocol.Check.expectations

    def counted(self, case):
        computed.append(self.name)
        return reference(self, case)

    monkeypatch.setattr(protocol.Check, "expectations", counted)
    monkeypatch.setattr(verdicts, "_PREPARED", {})
    call = check_calls("check_add_noise(add_noise, seed=3)")[0]
    first = verdicts.expectations(call)
    for tensor in first[0].values():
        if isinstance(tensor, torch.Tensor):
            tensor.add_(1.0)  # what one notebook's grading does to its copy stays there
    second = verdicts.expectations(call)
    assert computed == ["check_add_noise"]
    fresh = reference(protocol.CHECKS["check_add_noise"], protocol.CHECKS["check_add_noise"].case(seed=3))
    assert all(torch.equal(second[0][name], value) for name, value in fresh[0].items()
               if isinstance(value, torch.Tensor))
    assert any(isinstance(value, torch.Tensor) for value in fresh[0].values())


def _same(got, want) -> bool:
    """Equal values, nested in dicts, lists and tuples, tensors compared exactly."""
    if isinstance(want, torch.Tensor):
        return isinstance(got, torch.Tensor) and torch.equal(got, want)
    if isinstance(want, dict):
        return isinstance(got, dict) and got.keys() == want.keys() and all(_same(got[k], want[k]) for k in want)
    if isinstance(want, (list, tuple)):
        return type(got) is type(want) and len(got) == len(want) and all(map(_same, got, want))
    return got == want


def _expectations_in_a_new_process(folder: str, count_file: str) -> tuple[dict, dict]:
    """What a grading worker does for one check call with a shared folder, each computation noted in ``count_file``."""
    from autograder.execute import verdicts

    verdicts.load_check_modules()
    entry = protocol.CHECKS["check_add_noise"]

    def compute():
        with open(count_file, "a") as notes:
            notes.write("computed\n")
        return entry.expectations(entry.case(seed=5))

    return verdicts.computed_once(protocol.case_key(entry.name, entry.case(seed=5)), compute, Path(folder))


def test_the_workers_of_a_run_compute_a_checks_expected_values_once_and_read_the_same(tmp_path):
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    folder, count_file = tmp_path / "expectations", tmp_path / "computed.txt"
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
        results = list(pool.map(_expectations_in_a_new_process, [str(folder)] * 2, [str(count_file)] * 2))
    assert count_file.read_text() == "computed\n"
    entry = protocol.CHECKS[check_calls("check_add_noise(add_noise, seed=5)")[0].check]
    inputs, expected = entry.expectations(entry.case(seed=5))
    for got in results:
        assert _same(got, (inputs, expected))
    assert [path.suffix for path in folder.iterdir() if path.suffix != ".lock"] == [".pt"]  # no partial file left


#: in a fresh process: the grading worker's set-up imports, then every check call of every source notebook computed;
#: prints the modules that computing imported
_COMPUTE_AFTER_SET_UP = """
import sys
import nbformat
from autograder.course import SOLUTIONS_DIR
from autograder.execute import verdicts
from autograder.execute.notebook import import_grading_modules
from autograder.execute.preprocessors import is_test_cell
import_grading_modules()
before = set(sys.modules)
for path in sorted(SOLUTIONS_DIR.glob("0*.ipynb")):
    for cell in nbformat.read(path, as_version=4).cells:
        if is_test_cell(cell):
            for call in verdicts.check_calls(cell.source):
                verdicts.expectations(call)
print(" ".join(sorted(set(sys.modules) - before)))
"""


def test_a_worker_imports_before_its_first_notebook_what_computing_the_expected_values_needs():
    """Computing every case of the course in a worker set up for grading imports no library (before, the first
    stage-2 notebook of each worker imported ``torch._dynamo`` for the reference's optimiser: 1.2 to 1.7 s of its
    fixed cost)."""
    import subprocess
    import sys

    run = subprocess.run([sys.executable, "-c", _COMPUTE_AFTER_SET_UP], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    imported = run.stdout.split()
    assert [name for name in imported if name.split(".")[0] in {"torch", "torchvision", "nbgrader", "sympy"}] == []
