"""Verdicts decided by the grader, never by the student's kernel.

An autograded test cell is a list of check calls (``check_add_noise(add_noise)``, then the hidden ones with
other cases). While grading, nothing of it runs as written:

1. :class:`ProbeTestCells` (before execution, in the grader): parses each test cell (:func:`check_calls`),
   computes every call's inputs and expected values with the full ``course_lib`` (the answers are here; once per
   grading run or process, :func:`expectations`), writes
   only the inputs to ``<notebook folder>/.checks/<cell>.inputs.pt``, keeps the expected values in memory, and
   replaces the cell's source by a probe cell (:func:`probe_source`) that runs the student's code on those
   inputs and shows what it gave as the cell's output (:func:`course_lib.checks.protocol.record`).
2. The kernel executes the notebook (in its sandbox, whose ``course_lib`` lacks this stage's answers).
3. :class:`JudgeTestCells` (after execution, in the grader): reads the record from the cell's outputs (exactly
   one, size-capped, ``torch.load(weights_only=True)``, malformed records refused), judges every call against the
   expected values, and writes the verdict as the cell's only output: the passed lines, or the first failure as
   an error (which is what nbgrader scores). The test cell's own source is put back.

Whatever the student's code does in the kernel (rebinding the checks, patching torch or the recorder, showing
a record of its own), only a record of outputs reaches the judge, and only right outputs pass.
"""

from __future__ import annotations

import ast
import base64
import copy
import fcntl
import hashlib
import io
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from nbformat.notebooknode import NotebookNode, from_dict
from nbgrader.preprocessors import NbGraderPreprocessor
from traitlets import Unicode

from course_lib.checks.harness import CheckFailed
from course_lib.checks.protocol import CHECKS, CHECKS_FOLDER, RECORD_MIME, case_key, verdict
from course_lib.stages import STAGES

from .preprocessors import COMPUTED_EXPECTED_VALUES, error_output, is_test_cell

MAX_RECORD_BYTES = 16 * 2**20  # a cell's probe outputs are a few MB at most
VERDICTS = "autograder_verdicts"  # the key of this module's records in the conversion's resources
HIDDEN_TESTS = "### BEGIN HIDDEN TESTS"


@dataclass(frozen=True)
class CheckCall:
    """One call of a test cell: the check's name, the names of the student's objects, the case arguments."""

    check: str
    students: tuple[str, ...]
    case: dict


def load_check_modules() -> None:
    """Import every stage's check module, so that :data:`~course_lib.checks.protocol.CHECKS` knows them all."""
    for stage in STAGES:
        stage.checks  # noqa: B018 - importing the module registers its checks


def check_calls(source: str, cell: str = "a test cell") -> list[CheckCall]:
    """The check calls of a test cell's source, in order. Every statement must be a call of a known check whose
    positional arguments are names and whose keyword arguments are literals; anything else is a ValueError
    (the source notebook is the instructor's, so this is a course error, reported at release and grading)."""
    load_check_modules()
    calls = []
    for statement in ast.parse(source).body:
        call = statement.value if isinstance(statement, ast.Expr) else None
        if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Name) and call.func.id in CHECKS):
            raise ValueError(f"{cell}: line {statement.lineno} is not a call of a course check "
                             f"(known: {', '.join(sorted(CHECKS))}): {ast.unparse(statement)[:80]}")
        if not all(isinstance(arg, ast.Name) for arg in call.args):
            raise ValueError(f"{cell}: line {statement.lineno}: pass the student's objects by name")
        try:
            case = {keyword.arg: ast.literal_eval(keyword.value) for keyword in call.keywords}
        except ValueError:
            raise ValueError(f"{cell}: line {statement.lineno}: case arguments must be literals") from None
        entry = CHECKS[call.func.id]
        entry.case(**case)  # unknown arguments fail here, at release time
        calls.append(CheckCall(entry.name, tuple(arg.id for arg in call.args), case))
    return calls


def probe_modules(calls: list[CheckCall]) -> set[str]:
    """The modules of the checks that ``calls`` name: what their probe cell imports in the kernel."""
    return {CHECKS[call.check].module for call in calls}


def probe_source(cell: str, calls: list[CheckCall]) -> str:
    """The code that stands in for a test cell in the kernel: run the probes, record the outputs."""
    modules = sorted(probe_modules(calls))
    entries = "".join(f"    ({call.check!r}, lambda: ({''.join(name + ', ' for name in call.students)})),\n"
                      for call in calls)
    imports = "".join(f"import {module}\n" for module in modules)
    return f"{imports}import course_lib.checks.protocol\ncourse_lib.checks.protocol.record({cell!r}, [\n{entries}])\n"


def earliest_stage(nb: NotebookNode) -> str | None:
    """The key of the earliest stage whose checks the notebook's test cells call (``None``: no check calls).

    A notebook graded with the checks of stage k is run with a ``course_lib`` that lacks the answers of k and later.
    """
    modules = {CHECKS[call.check].module for cell in nb.cells if is_test_cell(cell)
               for call in check_calls(cell.source, cell.metadata.get("nbgrader", {}).get("grade_id", "a test cell"))}
    keys = [stage.key for stage in STAGES if stage.checks.__name__ in modules]
    return keys[0] if keys else None


#: the inputs and expected values of every check call this process has prepared, by case
_PREPARED: dict[str, tuple[dict, dict]] = {}
#: how many cases this process computed with the reference itself (not read from its own cache or a shared folder)
computed_cases = 0


def expectations(call: CheckCall, shared_folder: Path | None = None) -> tuple[dict, dict]:
    """``(inputs, expected)`` of ``call``, computed by the reference once per process and copied for each notebook:
    they are the same for every student (the test cells are the source notebook's, restored before grading), and
    the reference of some checks trains small models (a second per stage-2 notebook). With ``shared_folder``
    (:func:`computed_once`), once per grading run for all the workers that share it."""
    entry = CHECKS[call.check]
    case = entry.case(**call.case)
    key = case_key(entry.name, case)
    if key not in _PREPARED:
        def compute():
            global computed_cases
            computed_cases += 1
            return entry.expectations(case)

        _PREPARED[key] = computed_once(key, compute, shared_folder) if shared_folder else compute()
    return copy.deepcopy(_PREPARED[key])


def computed_once(key: str, compute, folder: Path):
    """``compute()`` for the case ``key``, by the first process that asks and read from ``folder`` by the others:
    a ``torch.save`` file per case, written whole (renamed into place) under a lock that the others wait on.
    ``folder`` belongs to one grading run (the grader's ``work/``, never in a kernel's sandbox); expected values
    hold tensors, numbers and strings only, so they are read back with ``weights_only``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{hashlib.sha256(key.encode()).hexdigest()[:40]}.pt"
    with open(path.with_suffix(".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if path.exists():
            return torch.load(path, weights_only=True)
        value = compute()
        partial = path.with_suffix(f".{os.getpid()}.partial")
        torch.save(value, partial)
        os.replace(partial, path)
        return value


def _grade_id(cell: NotebookNode) -> str:
    return cell.metadata["nbgrader"]["grade_id"]


class ProbeTestCells(NbGraderPreprocessor):
    """Before execution: test cells become probe cells; inputs go to the notebook's ``.checks/`` folder. The
    resource :data:`COMPUTED_EXPECTED_VALUES` says whether this notebook computed any case's expected values itself
    (the first notebook of its stage in a grading run) rather than reading them."""

    expectations_folder = Unicode(None, allow_none=True,
                                  help="Where the workers of a grading run share the checks' expected values "
                                       "(:func:`computed_once`); None: each process computes its own.").tag(config=True)

    def preprocess(self, nb, resources):
        shared = Path(self.expectations_folder) if self.expectations_folder else None
        folder = Path(resources["metadata"]["path"]) / CHECKS_FOLDER
        folder.mkdir(exist_ok=True)
        records, computed_before = {}, computed_cases
        for cell in nb.cells:
            if not is_test_cell(cell):
                continue
            calls = check_calls(cell.source, _grade_id(cell))
            prepared = [expectations(call, shared) for call in calls]
            torch.save([inputs for inputs, _ in prepared], folder / f"{_grade_id(cell)}.inputs.pt")
            visible = len(check_calls(cell.source.split(HIDDEN_TESTS)[0], _grade_id(cell)))
            records[_grade_id(cell)] = {"source": cell.source, "calls": calls, "prepared": prepared,
                                        "visible": visible}
            cell.source = probe_source(_grade_id(cell), calls)
        resources[VERDICTS] = records
        resources[COMPUTED_EXPECTED_VALUES] = computed_cases > computed_before
        return nb, resources


def load_record(cell: NotebookNode, count: int) -> list:
    """The outputs the kernel recorded for a test cell of ``count`` calls; a CheckFailed when there is none, more
    than one, or a malformed one."""
    payloads = [output["data"][RECORD_MIME] for output in cell.get("outputs", [])
                if output.get("output_type") == "display_data" and RECORD_MIME in output.get("data", {})]
    if not payloads:
        raise CheckFailed("your code did not finish this test (an error or a time limit before its checks ran)")
    if len(payloads) > 1:
        raise CheckFailed("this test shows more than one record of results: refused")
    if len(payloads[0]) > MAX_RECORD_BYTES * 4 // 3 + 4:
        raise CheckFailed(f"the recorded results are larger than {MAX_RECORD_BYTES // 2**20} MB: refused")
    try:
        outputs = torch.load(io.BytesIO(base64.b64decode(payloads[0], validate=True)), weights_only=True)
    except Exception as error:  # noqa: BLE001 - anything that is not our record
        raise CheckFailed(f"the recorded results could not be read ({type(error).__name__}): refused") from None
    if not isinstance(outputs, list) or len(outputs) != count:
        raise CheckFailed("the recorded results are not the ones this test asked for: refused")
    return outputs


class JudgeTestCells(NbGraderPreprocessor):
    """After execution: judge each test cell's record; the verdict becomes the cell's only output."""

    def preprocess(self, nb, resources):
        folder = Path(resources["metadata"]["path"]) / CHECKS_FOLDER
        records = resources.pop(VERDICTS, {})
        for cell in nb.cells:
            record = records.get(cell.metadata.get("nbgrader", {}).get("grade_id")) if is_test_cell(cell) else None
            if record is None:
                continue
            cell.source = record["source"]
            not_run = [output for output in cell.get("outputs", []) if output.get("ename") == "NotRun"]
            cell.outputs = not_run or self._verdict(cell, record)
        shutil.rmtree(folder, ignore_errors=True)  # the graded copy keeps no probe files
        return nb, resources

    @staticmethod
    def _verdict(cell: NotebookNode, record: dict) -> list[NotebookNode]:
        """The passed lines of the visible calls (the hidden ones as one line, so their cases stay unseen), or
        those before the first failure and the failure as an error."""
        lines = []
        try:
            outputs = load_record(cell, len(record["calls"]))
            for call, (inputs, expected), recorded in zip(record["calls"], record["prepared"], outputs):
                entry = CHECKS[call.check]
                lines.append(f"✓ {verdict(entry, entry.case(**call.case), inputs, recorded, expected)}")
        except CheckFailed as failure:
            shown = lines[:record["visible"]]
            return [_stream(shown), error_output("CheckFailed", str(failure))] if shown else \
                [error_output("CheckFailed", str(failure))]
        hidden = len(lines) - record["visible"]
        return [_stream(lines[:record["visible"]] + ([f"✓ {hidden} hidden tests passed"] if hidden else []))]


def _stream(lines: list[str]) -> NotebookNode:
    return from_dict({"output_type": "stream", "name": "stdout", "text": "".join(line + "\n" for line in lines)})
