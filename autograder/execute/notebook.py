"""Autograde every collected submission, in parallel, into one nbgrader gradebook.

Two phases, so that several processes can run notebooks while exactly one writes the gradebook (several
``nbgrader autograde`` processes on one gradebook would write the same SQLite file at once):

1. **Execute** (``jobs`` worker processes, one notebook at a time each). A worker runs nbgrader's own
   ``Autograde`` converter in a throw-away course folder ``<root>/work/<student>-<stage>/`` that has a *copy* of the
   gradebook (nbgrader needs one to restore cells, and writes the student into it), with our pipeline:
   sanitize (clear outputs, restore deleted and edited cells from the gradebook) -> mark the demo cells the
   source tags ``skip_when_grading`` -> inject state resets ->
   execute with per-cell and per-notebook timeouts -> remove the injected cells -> cap output. The executed
   notebooks are moved to ``<root>/executed/<student>/<stage>/``; the scratch folder is deleted.

   The kernel runs in a bubblewrap sandbox (``GradingOptions.sandbox``, :mod:`autograder.execute.sandbox`): all it
   sees of this machine is the Python environment, the MNIST folder and :func:`kernel_python_path` (a copy
   of ``course_lib`` and ``autograder/execute/kernel_state.py``), read-only, and one writable folder, the notebook's
   own ``autograded/<student>/<stage>/`` (a size-limited tmpfs holding a copy of it); never the gradebook copy,
   ``source/``, ``release/``, the repository (``solutions/``), a home folder or another student's work.
2. **Score** (the main process, no kernel). nbgrader's ``Autograde`` again, reading ``executed/`` instead of
   ``collected/``, with execution switched off: it writes scores into ``<root>/gradebook.db`` and the
   graded notebooks into ``<root>/autograded/``, exactly as a plain ``nbgrader autograde`` would.

Caps on each kernel's whole process tree, not on any one process (:mod:`autograder.execute.limits`): a watchdog thread of
the worker kills the kernel and all it started when they hold more than ``memory_gb`` GiB together or number more
than ``max_processes``; the cell that was running then gets an error naming the cap, later cells do not run, and
the points earned before stay. No address-space limit is set, neither on the workers nor on the kernels (an
honest kernel with torch imported has an address space of about 3 GiB). Workers share the CPU: each kernel gets
``cpu_count // jobs`` torch threads.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import multiprocessing
import os
import shutil
import time
import warnings
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..course import REPO_ROOT, SUBMITTED, nbgrader_config, put_python_tools_on_path, run_nbgrader_app
from ..progress import Progress
from .resume import EXECUTED, load_index, plan, remember, save_index

WORK = "work"
LOGS = "logs"
KERNEL_PYTHON = "_kernel_python"


@dataclass(frozen=True)
class GradingOptions:
    """How a submission is run: one frozen value from the command line to the worker that starts the kernel
    (across a process boundary as :meth:`to_json`).

    Attributes:
        jobs: worker processes that execute notebooks at the same time (>= 1).
        cell_timeout: seconds one cell may run before it is interrupted.
        notebook_timeout: seconds one notebook may run; later cells are marked "not run".
        memory_gb: GiB that all processes of one kernel (the kernel and whatever it starts) may hold together
            (0: no cap).
        max_processes: processes one kernel may run at once, itself included (0: no cap).
        sandbox: run every kernel in a bubblewrap sandbox (False: with this user's rights, as ``--no-sandbox``).
    """

    jobs: int = 1
    cell_timeout: int = 120
    notebook_timeout: float = 600.0
    memory_gb: float = 8.0
    max_processes: int = 256
    sandbox: bool = True

    def __post_init__(self):
        if not isinstance(self.jobs, int) or self.jobs < 1:
            raise ValueError(f"`jobs` must be an integer >= 1, got {self.jobs!r}")
        if self.cell_timeout <= 0 or self.notebook_timeout <= 0:
            raise ValueError(f"`cell_timeout` and `notebook_timeout` must be > 0, got {self.cell_timeout!r} "
                             f"and {self.notebook_timeout!r}")
        if self.memory_gb < 0:
            raise ValueError(f"`memory_gb` must be >= 0 (0: no cap), got {self.memory_gb!r}")
        if not isinstance(self.max_processes, int) or isinstance(self.max_processes, bool) or self.max_processes < 0:
            raise ValueError(f"`max_processes` must be an integer >= 0 (0: no cap), got {self.max_processes!r}")

    def to_json(self) -> str:
        """The options as one JSON object: what crosses a process boundary (a grading child, a Dask task)."""
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> GradingOptions:
        """The options :meth:`to_json` wrote (checked again)."""
        return cls(**json.loads(text))


def executed_path(root: Path, student: str, stage: str) -> Path:
    """Where phase 1 leaves the executed notebook of ``student`` for ``stage``."""
    return Path(root) / EXECUTED / student / stage / f"{stage}.ipynb"


def kernel_python_path(root: Path, view_stage: str | None = None) -> Path:
    """A folder to put first on a grading kernel's ``PYTHONPATH`` (read-only in the sandbox), under
    ``<root>/work/_kernel_python/``: ``course_lib`` without the answers of ``view_stage`` and later stages
    (:mod:`autograder.library_view`; all of it when ``None``) and ``autograder/execute/kernel_state.py``. Never the
    repository, whose ``solutions/`` hold the hidden tests."""
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
    shutil.copy2(Path(__file__).with_name("kernel_state.py"), folder / "autograder" / "execute" / "kernel_state.py")
    return folder


def view_stage(root: Path, assignment: str) -> str | None:
    """The stage whose answers (and later ones) the kernels of ``assignment`` must not have: the earliest stage
    whose checks its source notebook's test cells call (:func:`autograder.execute.verdicts.earliest_stage`)."""
    import nbformat

    from .verdicts import earliest_stage

    return earliest_stage(nbformat.read(Path(root) / "source" / assignment / f"{assignment}.ipynb", as_version=4))


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


def _execute_config(scratch: Path, options: GradingOptions, python_path: Path | None = None):
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
    config.Execute.timeout = int(options.cell_timeout)
    config.GuardedExecute.notebook_timeout = float(options.notebook_timeout)
    config.GuardedExecute.sandbox = options.sandbox
    config.LimitedKernelManager.memory_gb = float(options.memory_gb)  # SandboxedKernelManager's too (a subclass)
    config.LimitedKernelManager.max_processes = options.max_processes
    config.SandboxedKernelManager.python_path = [str(python_path)] if python_path else []
    config.SandboxedKernelManager.seed = home_seed()
    data = _data_dir()
    if data.is_dir():  # the notebooks load MNIST from here (read-only; the sandbox has no network)
        config.SandboxedKernelManager.read_only = [str(data)]
        config.SandboxedKernelManager.env = {"COURSE_DATA_DIR": str(data)}
    return config


def _score_config(root: Path):
    from nbconvert.preprocessors import ClearMetadataPreprocessor
    from nbgrader.preprocessors import (AssignLatePenalties, CheckCellMetadata, DeduplicateIds, IgnorePattern,
                                        LimitOutput, OverwriteCells, OverwriteKernelspec, SaveAutoGrades)

    from .privacy import ScrubPersonalData

    config = nbgrader_config(root)
    config.CourseDirectory.submitted_directory = EXECUTED
    config.Autograde.sanitize_preprocessors = [ScrubPersonalData, DeduplicateIds, OverwriteKernelspec, OverwriteCells,
                                               CheckCellMetadata]
    config.Autograde.autograde_preprocessors = [IgnorePattern, ClearMetadataPreprocessor, LimitOutput,
                                                SaveAutoGrades, AssignLatePenalties, CheckCellMetadata]
    return config


def _run_autograde(config, stage: str, student: str) -> None:
    from nbgrader.converters import Autograde

    from . import schema_once

    schema_once.install()
    run_nbgrader_app(Autograde, config, stage, student)


def quiet_nbgrader() -> None:
    """Keep nbgrader's log and SQLAlchemy's warnings out of the table (nbgrader's errors still show)."""
    import logging

    logger = logging.getLogger("traitlets")
    logger.setLevel(logging.ERROR)
    if not logger.handlers:
        logger.addHandler(logging.StreamHandler())
    warnings.filterwarnings("ignore", module="nbgrader")
    warnings.filterwarnings("ignore", module="nbformat")


def _init_worker(options: GradingOptions, log_dir: str) -> None:
    """Set up a worker process: thread share, quick mode, not the repository on the kernel's path, and stderr
    (its own and its kernels') into ``<log_dir>/worker-<pid>.log``. No memory limit: the caps watch the kernels."""
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


def execute_notebook(root: str, student: str, stage: str, options: GradingOptions, python_path: str) -> dict:
    """Phase 1 for one notebook (runs in a worker): autograde-execute it in a scratch course folder, its kernel
    importing from ``python_path`` (:func:`kernel_python_path`) before the environment.

    Returns ``{"student", "stage", "seconds", "problem"}``; ``problem`` is ``None`` unless a cell was
    interrupted, the run stopped early (kernel died, notebook time limit) or nbgrader could not process it.
    """
    root = Path(root)
    started = time.perf_counter()
    scratch = root / WORK / f"{student}-{stage}"
    shutil.rmtree(scratch, ignore_errors=True)
    (scratch / SUBMITTED / student).mkdir(parents=True)
    shutil.copy2(root / "gradebook.db", scratch / "gradebook.db")
    for name in ("source", "release"):
        (scratch / name).symlink_to(root / name, target_is_directory=True)
    (scratch / SUBMITTED / student / stage).symlink_to(root / SUBMITTED / student / stage, target_is_directory=True)
    try:
        with _kernel_python_path(python_path):
            _run_autograde(_execute_config(scratch, options, Path(python_path)), stage, student)
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
        notes = [f"interrupted after {options.cell_timeout} s in {', '.join(record['timed_out'])}"
                 ] if record.get("timed_out") else []
        notes += [f"stopped {stop['cell']} after {stop['seconds']} s and skipped it: {stop['reason']}"
                  for stop in record.get("stopped", [])]
        notes += [record["problem"]] if record.get("problem") else []
        problem = "; ".join(notes) or None
    shutil.rmtree(scratch, ignore_errors=True)
    return {"student": student, "stage": stage, "seconds": time.perf_counter() - started, "problem": problem}


def execute_all(root: Path, work: dict[str, tuple[str, ...]], options: GradingOptions,
                progress: Callable[[dict], None] | None = None,
                notify: Callable[[str], None] = print) -> list[dict]:
    """Phase 1 on ``options.jobs`` processes, one notebook per task; ``work`` maps students to stages to run.

    Notebooks rather than students are the unit of work, so a class of few students still keeps every
    process busy. A notebook executed by an earlier run with the same submission, options and source is kept
    (:mod:`autograder.execute.resume`; ``notify`` says how many), so a rerun after a crash executes only what is missing.
    ``progress`` gets :func:`execute_notebook`'s result as each notebook finishes, with its line
    ``"progress"`` (:class:`autograder.progress.Progress`: done of all, with problems, time left). Returns one
    ``{"student", "seconds", "problems": {stage: reason}}`` per student, in the order of ``work``; ``seconds``
    is the time their notebooks took to run, added up.
    """
    index = load_index(root)
    tasks, results = plan(root, work, options, index)
    if results:
        notify(f"  {len(results)} notebooks already executed (executed/index.json) are kept")
    python_paths = {stage: str(kernel_python_path(root, view_stage(root, stage))) for stage in {s for _, s, _ in tasks}}
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=min(options.jobs, max(1, len(tasks))), mp_context=context,
                             initializer=_init_worker, initargs=(options, str(Path(root) / LOGS))) as pool:
        futures = {pool.submit(execute_notebook, str(root), student, stage, options, python_paths[stage]): key
                   for student, stage, key in tasks}
        counter = Progress(len(futures))
        for future in as_completed(futures):
            result = future.result()
            remember(root, index, futures[future], result)
            result["progress"] = counter.record(result)
            results.append(result)
            if progress is not None:
                progress(result)
    save_index(root, index)
    shutil.rmtree(Path(root) / WORK / KERNEL_PYTHON, ignore_errors=True)
    return runs_by_student(work, results)


def runs_by_student(work: dict[str, tuple[str, ...]], results: list[dict]) -> list[dict]:
    """:func:`execute_notebook`'s results gathered per student, in the order of ``work``: ``{"student", "seconds",
    "problems": {stage: reason}}``, ``seconds`` being the time their notebooks took to run, added up."""
    runs = {student: {"student": student, "seconds": 0.0, "problems": {}} for student in work}
    for result in results:
        run = runs[result["student"]]
        run["seconds"] += result["seconds"]
        if result["problem"]:
            run["problems"][result["stage"]] = result["problem"]
    return list(runs.values())


def score_all(root: Path, stages: tuple[str, ...], only: list[str] | None = None) -> dict[tuple[str, str], str]:
    """Phase 2: write the scores of every executed notebook (of the students ``only``, when given) into the
    gradebook; returns failures by (student, stage)."""
    quiet_nbgrader()
    config = _score_config(Path(root))
    failures = {}
    for stage in stages:
        students = sorted(p.parent.parent.name for p in (Path(root) / EXECUTED).glob(f"*/{stage}/{stage}.ipynb"))
        for student in [s for s in students if only is None or s in only]:
            try:
                _run_autograde(config, stage, student)
            except Exception as error:  # noqa: BLE001 - recorded in the table, the others go on
                failures[student, stage] = f"could not be scored: {type(error).__name__}: {error}"
    return failures
