"""Phase 1 of grading for one notebook (:func:`execute_notebook`), in a process set up by :func:`set_up_worker`.

Grading has two phases, so that several processes can run notebooks while exactly one writes the gradebook: this
one, on ``jobs`` worker processes (:mod:`autograder.execute.pool`) or on a Dask cluster
(:mod:`autograder.distributed.cluster`), then scoring (:mod:`autograder.score.gradebook`).

A worker runs nbgrader's own ``Autograde`` converter in a throw-away course folder ``<root>/work/<student>-<stage>/``
that has a *copy* of the gradebook (nbgrader needs one to restore cells, and writes the student into it), with our
pipeline: sanitize (clear outputs, restore deleted and edited cells from the gradebook) -> mark the demo cells the
source tags ``skip_when_grading`` -> inject state resets -> execute with per-cell and per-notebook timeouts ->
remove the injected cells -> cap output. The executed notebooks are moved to ``<root>/executed/<student>/<stage>/``;
the scratch folder is deleted.

The kernel runs in a bubblewrap sandbox (``GradingOptions.sandbox``, :mod:`autograder.execute.sandbox`): all it sees
of this machine is the Python environment, the MNIST folder and :func:`kernel_python_path` (a copy of ``course_lib``
and ``autograder/execute/kernel_state.py`` and ``kernel_template.py``), read-only, and one writable folder, the
notebook's own ``autograded/<student>/<stage>/`` (a size-limited tmpfs holding a copy of it); never the gradebook
copy, ``source/``, ``release/``, the repository (``solutions/``), a home folder or another student's work. With warm
kernels (the default), it is forked from a kernel template of the worker, in a sandbox of its own
(:mod:`autograder.execute.warm_kernels`, :mod:`autograder.execute.templates`).

Caps on each kernel's whole process tree, not on any one process (:mod:`autograder.execute.limits`): a watchdog
thread of the worker kills the kernel and all it started when they hold more than ``memory_gb`` GiB together or
number more than ``max_processes``; the cell that was running then gets an error naming the cap, later cells do not
run, and the points earned before stay. No address-space limit is set, neither on the workers nor on the kernels (an
honest kernel with torch imported has an address space of about 3 GiB).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from pathlib import Path

from ..course import REPO_ROOT, SUBMITTED, nbgrader_config, put_python_tools_on_path, quiet_nbgrader, run_nbgrader_app
from .options import GradingOptions
from .resume import EXECUTED

WORK = "work"
LOGS = "logs"
KERNEL_PYTHON = "_kernel_python"
EXPECTATIONS = "_expectations"


def executed_path(root: Path, student: str, stage: str) -> Path:
    """Where phase 1 leaves the executed notebook of ``student`` for ``stage``."""
    return Path(root) / EXECUTED / student / stage / f"{stage}.ipynb"


def kernel_python_path(root: Path, view_stage: str | None = None) -> Path:
    """A folder to put first on a grading kernel's ``PYTHONPATH`` (read-only in the sandbox), under
    ``<root>/work/_kernel_python/``: ``course_lib`` without the answers of ``view_stage`` and later stages
    (:mod:`autograder.library_view`; all of it when ``None``), ``autograder/execute/kernel_state.py`` and
    ``kernel_template.py``. Never the repository, whose ``solutions/`` hold the hidden tests."""
    from ..library_view import write_library_view

    folder = Path(root) / WORK / KERNEL_PYTHON / (view_stage or "all")
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    if view_stage is None:
        shutil.copytree(REPO_ROOT / "course_lib", folder / "course_lib",
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    else:
        write_library_view(folder, view_stage)
    (folder / "autograder" / "execute").mkdir(parents=True)
    for package in ("autograder", "autograder/execute"):
        (folder / package / "__init__.py").write_text('"""Only what a grading kernel imports."""\n')
    for module in ("kernel_state.py", "kernel_template.py"):
        shutil.copy2(Path(__file__).with_name(module), folder / "autograder" / "execute" / module)
    return folder


def _source_notebook(root: Path, assignment: str):
    """The instructor's source notebook of ``assignment`` in the course folder ``root`` (never a submission)."""
    import nbformat

    return nbformat.read(Path(root) / "source" / assignment / f"{assignment}.ipynb", as_version=4)


def view_stage(root: Path, assignment: str) -> str | None:
    """The stage whose answers (and later ones) the kernels of ``assignment`` must not have: the earliest stage
    whose checks its source notebook's test cells call (:func:`autograder.execute.verdicts.earliest_stage`)."""
    from .verdicts import earliest_stage

    return earliest_stage(_source_notebook(root, assignment))


def kernel_name(root: Path, assignment: str) -> str:
    """The kernel the notebooks of ``assignment`` run in: their source notebook's kernelspec (nbgrader gives every
    submission that one), ``python3`` when it names none."""
    return _source_notebook(root, assignment).metadata.get("kernelspec", {}).get("name") or "python3"


def kernel_imports(root: Path, assignment: str) -> tuple[str, ...]:
    """The modules a grading kernel of ``assignment`` imports, read from its source notebook (the instructor's, never
    a submission), for its warm kernel (:mod:`autograder.execute.warm_kernels`): those imported by the code cells
    that run when grading (not ``skip_when_grading``), the checks' modules its test cells' probes import, and
    ``torch._dynamo``, which the checks' runs on the ``meta`` device import (through ``torch._refs``), as do
    ``torchvision`` and ``torch.optim``."""
    import ast

    from IPython.core.inputtransformer2 import TransformerManager

    from .preprocessors import SKIP_TAG, is_test_cell
    from .verdicts import check_calls, probe_modules

    modules = {"torch._dynamo", "course_lib.checks.protocol"}
    for cell in _source_notebook(root, assignment).cells:
        if cell.cell_type != "code" or SKIP_TAG in cell.metadata.get("tags", []):
            continue
        if is_test_cell(cell):
            modules |= probe_modules(check_calls(cell.source))
            continue
        try:
            tree = ast.parse(TransformerManager().transform_cell(cell.source))  # magics become Python
        except SyntaxError:  # the notebook's own error to report
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                modules |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules.add(node.module)
    return tuple(sorted(modules))


def _cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))


def _data_dir() -> Path:
    """The MNIST folder of :func:`course_lib.data.default_root` (outside Colab), without importing torch here."""
    if os.environ.get("COURSE_DATA_DIR"):
        return Path(os.environ["COURSE_DATA_DIR"]).expanduser().resolve()
    return (_cache_dir() / "course_lib" / "data").resolve()


def home_seed() -> dict[str, str]:
    """This machine's caches that a sandboxed kernel (whose home folder starts empty) gets a copy of: course_lib's
    classifier statistics of the MNIST test digits (public data; 10 s and more to compute again in every
    notebook) and matplotlib's font list."""
    cache = _cache_dir()
    seed = {str(path): f".cache/course_lib/{path.name}"
            for path in sorted((cache / "course_lib").glob("test-feature-statistics-*.pt"))}
    fonts = Path(os.environ["MPLCONFIGDIR"]) if os.environ.get("MPLCONFIGDIR") else cache / "matplotlib"
    seed.update({str(path): f".cache/matplotlib/{path.name}" for path in sorted(fonts.glob("fontlist-*.json"))})
    return seed


def _execute_config(scratch: Path, options: GradingOptions, python_path: Path | None = None,
                    next_python_path: str | None = None, expectations_folder: str | None = None,
                    next_warm_up: tuple[str, ...] | None = None):
    from nbgrader.preprocessors import (CheckCellMetadata, DeduplicateIds, LimitOutput, OverwriteCells,
                                        OverwriteKernelspec)

    from .preprocessors import (CapOutputSize, GuardedExecute, InjectStateReset, RemoveInjectedCells,
                                RestoreDeletedCells, SkipDemoCells, StderrIsNotFailure)
    from .privacy import SanitizeOutputs, ScrubPersonalData
    from .submitted_outputs import KeepDemoOutputs
    from .verdicts import JudgeTestCells, ProbeTestCells

    config = nbgrader_config(scratch)
    # KeepDemoOutputs is nbgrader's ClearOutput, except the student's saved outputs of the demo cells it never runs
    config.Autograde.sanitize_preprocessors = [KeepDemoOutputs, ScrubPersonalData, DeduplicateIds, OverwriteKernelspec,
                                               RestoreDeletedCells, OverwriteCells, CheckCellMetadata]
    config.Autograde.autograde_preprocessors = [SkipDemoCells, ProbeTestCells, InjectStateReset, GuardedExecute,
                                                RemoveInjectedCells, JudgeTestCells, StderrIsNotFailure,
                                                SanitizeOutputs, CapOutputSize, LimitOutput]
    config.SkipDemoCells.source_root = str(scratch / "source")
    config.ProbeTestCells.expectations_folder = expectations_folder
    config.Execute.timeout = int(options.cell_timeout)
    config.GuardedExecute.notebook_timeout = float(options.notebook_timeout)
    config.GuardedExecute.sandbox = options.sandbox
    config.GuardedExecute.warm_kernels = options.warm_kernels
    config.GuardedExecute.next_python_path = next_python_path
    config.GuardedExecute.next_warm_up = list(next_warm_up) if next_warm_up else None
    config.LimitedKernelManager.memory_gb = float(options.memory_gb)  # SandboxedKernelManager's too (a subclass)
    config.LimitedKernelManager.max_processes = options.max_processes
    config.SandboxedKernelManager.python_path = [str(python_path)] if python_path else []
    config.SandboxedKernelManager.seed = home_seed()
    data = _data_dir()
    if data.is_dir():  # the notebooks load MNIST from here (read-only; the sandbox has no network)
        config.SandboxedKernelManager.read_only = [str(data)]
        config.SandboxedKernelManager.env = {"COURSE_DATA_DIR": str(data)}
    return config


def run_autograde(config, stage: str, student: str) -> None:
    """nbgrader's ``Autograde`` with ``config`` on one stage and student, each JSON schema of the cell metadata
    checked once per process (:mod:`autograder.execute.schema_once`): phase 1 here, phase 2 in
    :mod:`autograder.score.gradebook`."""
    from nbgrader.converters import Autograde

    from . import schema_once

    schema_once.install()
    run_nbgrader_app(Autograde, config, stage, student)


def set_up_worker(options: GradingOptions, log_dir: str) -> None:
    """Set up a process that executes notebooks (a ``--jobs`` worker, a Dask worker's grading child): thread share,
    quick mode, not the repository on the kernel's path, and stderr (its own and its kernels') into
    ``<log_dir>/worker-<pid>.log``. No memory limit: the caps watch the kernels."""
    Path(log_dir).mkdir(parents=True, exist_ok=True)
    log = os.open(Path(log_dir) / f"worker-{os.getpid()}.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(log, 2)
    os.close(log)
    quiet_nbgrader()
    threads = max(1, (os.cpu_count() or 1) // options.jobs)
    inherited = [entry for entry in os.environ.get("PYTHONPATH", "").split(os.pathsep)
                 if entry and Path(entry).resolve() != REPO_ROOT]
    os.environ.update(
        COURSE_MODE="quick",
        MPLBACKEND="Agg",
        OMP_NUM_THREADS=str(threads),
        MKL_NUM_THREADS=str(threads),
        PYTHONPATH=os.pathsep.join(inherited),
    )
    put_python_tools_on_path()


def warm_first_kernel(options: GradingOptions, python_path: str, modules: tuple[str, ...], name: str) -> None:
    """In a worker set up by :func:`set_up_worker`: start the kernel template of its first notebook, for kernel
    ``name`` (:func:`kernel_name`), that imports from ``python_path`` and imports ``modules``
    (:func:`autograder.execute.warm_kernels.start_first`), when the options use warm kernels."""
    if not (options.sandbox and options.warm_kernels and python_path):
        return
    from . import warm_kernels

    config = _execute_config(Path(python_path), options, Path(python_path))  # only the kernel's settings are read
    warm_kernels.start_first(config, name, modules)


def import_grading_modules() -> None:
    """In a worker, before its first notebook arrives (and while its first kernel template starts): import what phase 1
    imports in the worker itself, so that no notebook's fixed cost pays for it: nbgrader's converters, every stage's
    checks and the reference side that computes their expected values, and ``torch._dynamo``, which the references'
    optimisers (``torch.optim``) import on their first use (1.2 to 1.7 s of CPU here). The worker's own torch runs on
    one thread: the expected values are small computations, made while a kernel imports or runs on the other cores
    (with two threads, those of stage 3 took 3.5 to 4.9 s instead of 0.2 s beside a warming kernel)."""
    import importlib

    import torch

    from course_lib.stages import STAGES

    from .verdicts import load_check_modules

    torch.set_num_threads(1)
    for module in ("nbgrader.converters", "torch._dynamo"):
        importlib.import_module(module)
    load_check_modules()
    for stage in STAGES:
        stage.reference  # noqa: B018 - importing the module is the point


@contextlib.contextmanager
def _kernel_python_path(python_path: str):
    """``python_path`` first on ``PYTHONPATH`` while the block runs: what a kernel started without the sandbox
    inherits (the sandbox sets its kernel's path itself)."""
    inherited = os.environ.get("PYTHONPATH", "")
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [python_path, inherited]))
    try:
        yield
    finally:
        os.environ["PYTHONPATH"] = inherited


def fixed_cost_parts(record: dict, arrived_at: float) -> dict[str, float] | None:
    """A notebook's fixed cost (seconds from ``arrived_at``, its arrival at the worker, to the start of its first
    cell) in three parts, from its executed copy's ``record`` (``metadata["autograder"]``, written by
    :class:`autograder.execute.preprocessors.GuardedExecute`): ``preparing`` (its scratch folder, nbgrader's
    pre-processing, the checks' inputs and expected values), ``waiting_for_kernel`` (forking its kernel from the
    kernel template, which may still be importing) and ``starting`` (the kernel's start-up, connecting to it and the
    state resets; a cold kernel's whole start). ``None`` when no cell ran."""
    if record.get("first_cell_at") is None or record.get("executor_started_at") is None:
        return None
    waited = record.get("warm_kernel_wait") or 0.0
    return {"preparing": record["executor_started_at"] - arrived_at, "waiting_for_kernel": waited,
            "starting": record["first_cell_at"] - record["executor_started_at"] - waited}


def execute_notebook(root: str, student: str, stage: str, options: GradingOptions, python_path: str,
                     next_python_path: str | None = None, share_expectations: bool = False,
                     next_warm_up: tuple[str, ...] | None = None) -> dict:
    """Phase 1 for one notebook (runs in a worker): autograde-execute it in a scratch course folder, its kernel
    importing from ``python_path`` (:func:`kernel_python_path`) before the environment. ``next_python_path``: that
    of the next stage this worker is expected to run, for its kernel template (None: the same; "": none), which
    imports ``next_warm_up`` (:func:`kernel_imports`; None: a fixed list).
    ``share_expectations``: the checks' expected values are computed once for all the workers of this run, in
    ``<root>/work/_expectations/`` (:func:`autograder.execute.verdicts.computed_once`).

    Returns ``{"student", "stage", "seconds", "first_cell_seconds", "fixed_cost_parts", "warm_kernel",
    "computed_expected_values", "problem"}``; ``first_cell_seconds`` is the notebook's fixed cost, from its arrival
    here to the start of its first cell (``None`` when no cell ran), and ``fixed_cost_parts`` splits it
    (:func:`fixed_cost_parts`); ``warm_kernel``, whether it ran in a kernel started before it arrived
    (:mod:`autograder.execute.warm_kernels`); ``computed_expected_values``, whether its fixed cost includes computing
    checks' expected values (once per grading run and case, :func:`autograder.execute.verdicts.expectations`);
    ``problem`` is ``None`` unless a cell was interrupted, the run stopped early (kernel died, notebook time limit)
    or nbgrader could not process it.
    """
    root = Path(root)
    started, arrived_at = time.perf_counter(), time.time()
    record, warm, computed = {}, False, False
    scratch = root / WORK / f"{student}-{stage}"
    shutil.rmtree(scratch, ignore_errors=True)
    (scratch / SUBMITTED / student).mkdir(parents=True)
    shutil.copy2(root / "gradebook.db", scratch / "gradebook.db")
    for name in ("source", "release"):
        (scratch / name).symlink_to(root / name, target_is_directory=True)
    (scratch / SUBMITTED / student / stage).symlink_to(root / SUBMITTED / student / stage, target_is_directory=True)
    try:
        with _kernel_python_path(python_path):
            shared = str(root / WORK / EXPECTATIONS) if share_expectations else None
            config = _execute_config(scratch, options, Path(python_path), next_python_path, shared, next_warm_up)
            run_autograde(config, stage, student)
    except Exception as error:  # noqa: BLE001 - one broken notebook must not stop the class
        problem = f"could not be graded ({type(error).__name__}; see {root / LOGS})"
    else:
        target = executed_path(root, student, stage).parent
        shutil.rmtree(target, ignore_errors=True)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(scratch / "autograded" / student / stage, target)
        timestamp = root / SUBMITTED / student / stage / "timestamp.txt"
        if timestamp.exists():
            shutil.copy2(timestamp, target / "timestamp.txt")
        record = json.loads((target / f"{stage}.ipynb").read_text()).get("metadata", {}).get("autograder", {})
        warm = bool(record.get("warm_kernel"))
        computed = bool(record.get("computed_expected_values"))
        notes = [f"interrupted after {options.cell_timeout} s in {', '.join(record['timed_out'])}"
                 ] if record.get("timed_out") else []
        notes += [f"stopped {stop['cell']} after {stop['seconds']} s and skipped it: {stop['reason']}"
                  for stop in record.get("stopped", [])]
        notes += [record["problem"]] if record.get("problem") else []
        problem = "; ".join(notes) or None
    shutil.rmtree(scratch, ignore_errors=True)
    parts = fixed_cost_parts(record, arrived_at)
    return {"student": student, "stage": stage, "seconds": time.perf_counter() - started,
            "first_cell_seconds": None if parts is None else sum(parts.values()), "fixed_cost_parts": parts,
            "warm_kernel": warm, "computed_expected_values": computed, "problem": problem}
