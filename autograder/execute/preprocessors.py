"""nbgrader preprocessors that make grading fair to every student and safe for the machine.

Autograding (see :mod:`autograder.execute.notebook` for the order they run in):

- :class:`RestoreDeletedCells`: puts back read-only and test cells a student deleted (nbgrader's own
  ``OverwriteCells`` then restores the source of the ones that were edited).
- :class:`InjectStateReset` / :class:`RemoveInjectedCells`: before execution, a cell that records the kernel's
  settings and, before each graded test cell, one that restores them (:mod:`autograder.execute.kernel_state`);
  removed after execution.
- :class:`SkipDemoCells`: read-only cells the source notebook tags ``skip_when_grading`` are not run (they keep
  the outputs the student saved with them, marked: :mod:`autograder.execute.submitted_outputs`).
- :class:`GuardedExecute`: nbgrader's ``Execute`` that runs the kernel in a sandbox (:mod:`autograder.execute.sandbox`)
  under caps on the memory and processes of its whole process tree (:mod:`autograder.execute.limits`), survives a kernel
  that dies, is stopped at a cap or ignores interrupts, and caps the whole notebook's run time; every cell it
  could not run gets an error output that says why.
- :class:`StderrIsNotFailure`: nbgrader scores a test cell 0 when anything was written to stderr (a progress
  bar, a warning); this turns such output into stdout so only errors fail a test.
- :class:`CapOutputSize`: truncates huge text outputs and drops huge rich outputs (nbgrader's
  ``LimitOutput`` only counts lines).

Feedback:

- :class:`HideHiddenTests`: removes hidden-test regions from the source and reduces the error output of
  those cells to the error's name and message, so feedback never shows the hidden tests' code.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path

import nbformat
from nbclient.exceptions import CellTimeoutError, DeadKernelError
from nbformat.notebooknode import NotebookNode, from_dict
from nbformat.v4 import new_code_cell, new_markdown_cell
from nbgrader import utils
from nbgrader.api import Gradebook
from nbgrader.preprocessors import Execute, NbGraderPreprocessor
from nbgrader.preprocessors.clearhiddentests import ClearHiddenTests
from traitlets import Bool, Float, Integer, List, Unicode

INJECTED = "autograder_injected"
SKIPPED = "autograder_skipped"
SKIP_TAG = "skip_when_grading"
#: the key of the conversion's resources that says whether the notebook computed checks' expected values itself
COMPUTED_EXPECTED_VALUES = "computed_expected_values"
CAPTURE_SOURCE = "import autograder.execute.kernel_state\nautograder.execute.kernel_state.capture()"
RESTORE_SOURCE = "__import__('autograder.execute.kernel_state', fromlist=['restore']).restore()"


def error_output(name: str, message: str) -> NotebookNode:
    """An nbformat error output (what a failed cell shows) with a one-line traceback."""
    return from_dict({"output_type": "error", "ename": name, "evalue": message,
                      "traceback": [f"\x1b[0;31m{name}\x1b[0m: {message}"]})


def is_test_cell(cell: NotebookNode) -> bool:
    """A graded cell the student cannot edit: an autograder test (visible or hidden)."""
    return cell.cell_type == "code" and utils.is_grade(cell) and not utils.is_solution(cell)


class RestoreDeletedCells(NbGraderPreprocessor):
    """Re-insert every cell of the source notebook (test, read-only, answer) that the submission lacks.

    Each missing cell comes back from the gradebook, right after the cell that preceded it in the source
    notebook, with its nbgrader metadata; a test cell keeps its points. Hidden tests come back too.
    """

    def preprocess(self, nb, resources):
        info = resources["nbgrader"]
        with Gradebook(info["db_url"]) as gradebook:
            notebook = gradebook.find_notebook(info["notebook"], info["assignment"])
            points = {cell.name: cell.max_score for cell in notebook.grade_cells}
            solutions = {cell.name for cell in notebook.solution_cells}
            tasks = {cell.name for cell in notebook.task_cells}
            present = {cell.metadata.get("nbgrader", {}).get("grade_id") for cell in nb.cells}
            position = 0  # insert after the last source cell seen in the submission
            for source in notebook.source_cells:  # in the order of the source notebook
                if source.name in present:
                    position = 1 + next(i for i, cell in enumerate(nb.cells)
                                        if cell.metadata.get("nbgrader", {}).get("grade_id") == source.name)
                    continue
                self.log.warning("Cell %s was deleted from the submission: restoring it", source.name)
                nb.cells.insert(position, self._restored(source, points.get(source.name),
                                                         source.name in solutions, source.name in tasks))
                position += 1
        return nb, resources

    @staticmethod
    def _restored(source, points, is_solution, is_task) -> NotebookNode:
        nbgrader = {"grade_id": source.name, "locked": source.locked, "solution": is_solution,
                    "grade": points is not None and not is_task, "task": is_task, "schema_version": 3,
                    "checksum": source.checksum}
        if points is not None:
            nbgrader["points"] = points
        new_cell = new_code_cell if source.cell_type == "code" else new_markdown_cell
        return new_cell(source.source, metadata={"nbgrader": nbgrader})


def _injected_cell(source: str) -> NotebookNode:
    return new_code_cell(source, metadata={INJECTED: True})


class InjectStateReset(NbGraderPreprocessor):
    """Insert a settings-capturing cell first and a settings-restoring cell before each test cell."""

    def preprocess(self, nb, resources):
        cells = [_injected_cell(CAPTURE_SOURCE)]
        for cell in nb.cells:
            if is_test_cell(cell):
                cells.append(_injected_cell(RESTORE_SOURCE))
            cells.append(cell)
        nb.cells = cells
        return nb, resources


class RemoveInjectedCells(NbGraderPreprocessor):
    """Remove the cells :class:`InjectStateReset` added (after execution)."""

    def preprocess(self, nb, resources):
        nb.cells = [cell for cell in nb.cells if not cell.metadata.get(INJECTED)]
        return nb, resources


class SkipDemoCells(NbGraderPreprocessor):
    """Mark read-only cells that the *source* notebook tags ``skip_when_grading`` (long training runs,
    sampling demos whose results no test reads) so :class:`GuardedExecute` does not run them.

    Tags are read from ``<source_root>/<assignment>/<notebook>.ipynb`` by ``grade_id``, never from the
    submission, so a student cannot skip anything; graded and answer cells are never skipped.
    """

    source_root = Unicode("", help="The course's source/ folder.").tag(config=True)

    def preprocess(self, nb, resources):
        info = resources["nbgrader"]
        source = nbformat.read(Path(self.source_root) / info["assignment"] / f"{info['notebook']}.ipynb", as_version=4)
        skipped = {cell.metadata["nbgrader"]["grade_id"] for cell in source.cells
                   if SKIP_TAG in cell.metadata.get("tags", []) and utils.is_locked(cell)
                   and not utils.is_grade(cell) and not utils.is_solution(cell)}
        for cell in nb.cells:
            if cell.metadata.get("nbgrader", {}).get("grade_id") in skipped and not utils.is_grade(cell):
                cell.metadata[SKIPPED] = True
        return nb, resources


class GuardedExecute(Execute):
    """nbgrader's ``Execute`` (per-cell ``timeout``, interrupt on timeout) made robust for hostile notebooks.

    - ``sandbox``: the kernel runs in a bubblewrap sandbox (:class:`autograder.execute.sandbox.SandboxedKernelManager`,
      configured through ``config.SandboxedKernelManager``); else it runs as this user, in a
      :class:`autograder.execute.limits.LimitedKernelManager`. The caps on the memory and processes of the kernel's tree
      are both managers' ``memory_gb`` and ``max_processes`` (``config.LimitedKernelManager``).
    - A kernel that dies (``os._exit``, a segfault) or that the watchdog of the caps stops no longer aborts the
      notebook: the cell gets an error output naming the cause (the cap and what the processes held), every later
      code cell a "not run" error, and the outputs of the cells before are kept, so the tests that passed keep
      their points.
    - A cell that does not stop within ``interrupt_grace`` seconds of its timeout's interrupt (it ignores
      SIGINT) costs only itself: the kernel is killed, a new one runs the notebook's earlier code cells
      again (but not the demo cells that were skipped nor cells that were themselves stopped; their outputs
      are kept as they were), the cell gets a "stopped" error output and the run goes on with the next cell.
    - ``notebook_timeout`` caps the run time of the whole notebook.

    The notebook's metadata ``autograder`` records ``problem`` (why the run stopped early, or ``None``),
    ``timed_out`` (the cells interrupted by the per-cell timeout, by ``grade_id`` or position) and ``stopped``
    (``{"cell", "seconds", "reason"}`` of each cell that ignored its interrupt and was skipped) and
    ``first_cell_at`` (the wall-clock time, ``time.time()``, when the first code cell started to run),
    ``executor_started_at`` (the same, when this preprocessor started: nbgrader's pre-processing and the checks'
    expected values came before), ``warm_kernel`` (whether the notebook ran in a kernel forked from a kernel template),
    ``warm_kernel_wait`` (seconds spent getting that kernel: waiting for the template's imports, the fork, handing
    it the notebook's files; 0 for a kernel started here) and
    ``computed_expected_values`` (whether, before it ran, the grader computed checks' expected values for it rather
    than reading those of an earlier notebook: :class:`autograder.execute.verdicts.ProbeTestCells`).
    """

    notebook_timeout = Float(600.0, help="Seconds for the whole notebook; later cells are not run.").tag(config=True)
    sandbox = Bool(False, help="Run the kernel in a bubblewrap sandbox (autograder.execute.sandbox).").tag(config=True)
    warm_kernels = Bool(False, help="With the sandbox: run the notebook in a kernel started and warmed while the "
                                    "previous one ran (autograder.execute.warm_kernels).").tag(config=True)
    next_python_path = Unicode(None, allow_none=True,
                               help="The course_lib view of the next stage this worker is expected to run, for which a "
                                    "kernel template starts; None: this notebook's; '': none.").tag(config=True)
    next_warm_up = List(Unicode(), default_value=None, allow_none=True,
                        help="The modules the kernels of that stage import, which its template imports first "
                             "(autograder.execute.notebook.kernel_imports); None: "
                             "warm_kernels.WARM_UP_MODULES.").tag(config=True)
    interrupt_grace = Float(5.0, help="Seconds a timed-out cell has to stop after the interrupt before its kernel "
                                      "is replaced.").tag(config=True)
    shutdown_kernel = "immediate"

    def create_kernel_manager(self):
        from .limits import LimitedKernelManager
        from .sandbox import SandboxedKernelManager

        self.kernel_manager_class = SandboxedKernelManager if self.sandbox else LimitedKernelManager
        return super().create_kernel_manager()

    def preprocess(self, nb, resources=None, km=None):
        self._problem = None
        self._timed_out = []
        self._stopped = []
        self._first_cell_at = None  # wall clock when the first cell started: the notebook's fixed cost ends there
        self._not_replayed = set()  # indices of the code cells a replacement kernel must not run again
        self._deadline = time.monotonic() + self.notebook_timeout
        self.iopub_timeout = max(1, round(self.interrupt_grace))
        started_at = time.time()
        warm = self._warm_kernel(nb, resources) if km is None else None
        waited = time.time() - started_at
        try:
            nb, resources = super().preprocess(nb, resources, warm or km)
        finally:
            if warm is not None and self.km is not None:  # nbclient shuts down only the kernels it started
                self._cleanup_kernel()
        nb.metadata["autograder"] = {"problem": self._problem, "timed_out": self._timed_out,
                                     "stopped": self._stopped, "first_cell_at": self._first_cell_at,
                                     "executor_started_at": started_at, "warm_kernel": warm is not None,
                                     "warm_kernel_wait": waited if warm is not None else 0.0,
                                     COMPUTED_EXPECTED_VALUES: bool((resources or {}).get(COMPUTED_EXPECTED_VALUES))}
        return nb, resources

    def _warm_kernel(self, nb, resources):
        """A warm kernel for this notebook (:func:`autograder.execute.warm_kernels.take`), or None."""
        if not (self.sandbox and self.warm_kernels):
            return None
        from . import warm_kernels

        name = self.kernel_name or nb.metadata.get("kernelspec", {}).get("name") or "python3"
        return warm_kernels.take(self.config, name, (resources or {}).get("metadata", {}).get("path") or ".",
                                 self._next_config(), self.next_warm_up or warm_kernels.WARM_UP_MODULES)

    def _next_config(self):
        """The kernel settings of the next stage this worker is expected to run (None: none)."""
        if self.next_python_path is None:
            return self.config
        if not self.next_python_path:
            return None
        config = copy.deepcopy(self.config)
        config.SandboxedKernelManager.python_path = [self.next_python_path]
        return config

    def preprocess_cell(self, cell, resources, index):
        if cell.metadata.pop(SKIPPED, False):  # never run: keeps the student's saved outputs, if any
            self._not_replayed.add(index)
            return cell, resources
        if self._problem is None and time.monotonic() > self._deadline:
            self._problem = f"the notebook ran longer than its limit of {self.notebook_timeout:g} s"
        if self._problem is not None:
            if cell.cell_type == "code":
                cell.outputs = [error_output("NotRun", f"this cell did not run: {self._problem}")]
            return cell, resources
        position = 1 + sum(not other.metadata.get(INJECTED) for other in self.nb.cells[:index])
        name = cell.metadata.get("nbgrader", {}).get("grade_id") or f"cell {position}"
        started = time.monotonic()
        if self._first_cell_at is None and cell.cell_type == "code":
            self._first_cell_at = time.time()
        try:
            cell, resources = super().preprocess_cell(cell, resources, index)
        except CellTimeoutError:  # the interrupt did not stop it within iopub_timeout (interrupt_grace) s
            seconds = round(time.monotonic() - started)
            reason = (f"it went on for {self.interrupt_grace:g} s after the interrupt at its {self.timeout} s limit "
                      "(SIGINT ignored?), so the kernel was restarted and the cells before it run again")
            self._stopped.append({"cell": name, "seconds": seconds, "reason": reason})
            self._not_replayed.add(index)
            cell.outputs.append(error_output("CellStopped", f"this cell was stopped after {seconds} s and skipped: "
                                                            f"{reason}"))
            self._replace_kernel(index)
            return cell, resources
        except DeadKernelError:
            limit = getattr(self.km, "limit_exceeded", None)
            self._problem = (f"{limit}; the kernel was stopped in {name}" if limit else
                             f"the kernel died in {name} (os._exit, a crash such as a segfault)"
                             ) + "; later cells did not run"
            cell.outputs.append(error_output("LimitExceeded" if limit else "DeadKernelError", self._problem))
            return cell, resources
        if any(output.get("ename") == self.error_on_timeout["ename"] for output in cell.get("outputs", [])):
            self._timed_out.append(name)
            self._not_replayed.add(index)
        return cell, resources

    def _replace_kernel(self, index: int) -> None:
        """Kill the kernel, start a new one and run the code cells before ``index`` in it again (their outputs
        in the notebook stay those of the first run); on failure, ``_problem`` says why."""
        self._cleanup_kernel()
        self.km = self.kc = None
        try:
            self.km = self.create_kernel_manager()
            self.start_new_kernel()
            self.start_new_kernel_client()
        except Exception as error:  # noqa: BLE001 - later cells are marked "not run" with the reason
            self._problem = f"no new kernel could be started after a stopped cell ({type(error).__name__}: {error})"
            return
        for position, cell in enumerate(self.nb.cells[:index]):
            if cell.cell_type != "code" or position in self._not_replayed:
                continue
            if time.monotonic() > self._deadline:
                self._problem = f"the notebook ran longer than its limit of {self.notebook_timeout:g} s"
                return
            try:
                self.execute_cell(copy.deepcopy(cell), position, store_history=True)
            except (CellTimeoutError, DeadKernelError) as error:
                cause = getattr(self.km, "limit_exceeded", None) or type(error).__name__
                self._problem = (f"the cells before a stopped cell could not be run again in a new kernel "
                                 f"({cause}); later cells did not run")
                return
            finally:
                self.nb.cells[position] = cell  # execute_cell stores the copy; keep the first run's outputs


class StderrIsNotFailure(NbGraderPreprocessor):
    """Turn stderr stream outputs of test cells into stdout, so only an error fails a test."""

    def preprocess_cell(self, cell, resources, index):
        if is_test_cell(cell):
            for output in cell.outputs:
                if output.output_type == "stream" and output.name == "stderr":
                    output.name = "stdout"
        return cell, resources


class CapOutputSize(NbGraderPreprocessor):
    """Truncate text outputs longer than ``max_chars`` and drop rich outputs larger than ``max_bytes``."""

    max_chars = Integer(20_000, help="Characters kept of one text output.").tag(config=True)
    max_bytes = Integer(2_000_000, help="Largest rich output (image, HTML) kept, in bytes.").tag(config=True)

    def _truncate(self, text):
        text = "".join(text) if isinstance(text, list) else text
        if len(text) <= self.max_chars:
            return text
        return text[: self.max_chars] + f"\n... [{len(text) - self.max_chars} more characters cut by the autograder]\n"

    def preprocess_cell(self, cell, resources, index):
        if cell.cell_type != "code":
            return cell, resources
        for output in cell.outputs:
            if output.output_type == "stream":
                output.text = self._truncate(output.text)
            elif output.output_type in ("display_data", "execute_result"):
                data = output.get("data", {})
                for mime in list(data):
                    if mime == "text/plain":
                        data[mime] = self._truncate(data[mime])
                    elif len(str(data[mime])) > self.max_bytes:
                        del data[mime]
                        data.setdefault("text/plain", f"[a {mime} output over {self.max_bytes} bytes was dropped]")
        return cell, resources


class HideHiddenTests(NbGraderPreprocessor):
    """For feedback: cut hidden-test regions from test cells and reduce their errors to name and message."""

    def preprocess_cell(self, cell, resources, index):
        if not is_test_cell(cell):
            return cell, resources
        if ClearHiddenTests(parent=self)._remove_hidden_test_region(cell):
            for i, output in enumerate(cell.outputs):
                if output.output_type == "error":
                    cell.outputs[i] = error_output(output.ename, output.evalue)
        return cell, resources
