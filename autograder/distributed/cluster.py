"""Phase 1 of grading on a Dask distributed cluster (``grade --dask tcp://HOST:8786`` or ``--dask local:N``).

The cut: one Dask task per notebook, running :func:`autograder.execute.notebook.execute_notebook` unchanged on the
worker, in a fresh temporary course folder, in one of the worker's long-lived grading children
(:mod:`autograder.distributed.grading_child`, set up as a ``--jobs`` worker process: memory cap, thread share, quick
mode, stderr into a log; started on every worker before the first task), with the same sandbox. Phase 2 (scoring
into the gradebook) and ``grades.csv`` stay on the client, exactly as with ``--jobs``.

What travels to a worker, as bytes (nothing else; no shared file system is needed):

- once per stage (one task's result, which the scheduler computes again if the worker holding it dies): a copy
  of ``gradebook.db`` (nbgrader's ``Autograde`` restores edited and deleted cells from it, so it holds the test
  cells' code, hidden tests included; never any expected value or score of this run), ``release/<stage>/`` and
  ``source/<stage>/`` with the *solution cells of the source notebook emptied* (only the cells' metadata is read
  there, for ``skip_when_grading``);
- per task: the student's submitted files of that stage, the grading options, the name of the library view of
  the kernel (:func:`autograder.execute.notebook.view_stage`) and the version stamp.

What comes back: the executed notebook folder (``executed/<student>/<stage>/``, the test cells holding only
their verdicts) and the run's record (seconds, problem). The expected values of the checks are computed and
judged by the worker's grading process (outside the student's kernel) from the worker's own installed
``course_lib``; they never cross the network. Hence every worker needs this project installed in the same
environment: :func:`environment_stamp` (``course_lib.__version__`` and a hash of ``course_lib/`` and
``autograder/``) is compared on every worker before grading starts and again in every task.

Faults: a worker that dies mid-notebook has its task rescheduled by the scheduler on another worker, up to
``distributed.scheduler.allowed-failures`` times (``ALLOWED_FAILURES`` for ``local:N``); a notebook that kills
its worker every time becomes that student's problem and the class goes on. Each finished notebook is written
to ``executed/`` and recorded in ``executed/index.json`` (keyed by the submission's content hash, the grading
options and the source notebook's hash) as it arrives, so if the scheduler goes away the run stops with
:class:`SchedulerLostError` and a rerun executes only what is missing.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import logging
import shutil
import tempfile
import urllib.request
from pathlib import Path
from typing import Callable

from ..course import SUBMITTED
from ..execute.notebook import LOGS, executed_path, view_stage
from ..execute.options import GradingOptions
from ..execute.pool import runs_by_student
from ..execute.resume import INDEX, folder_files, load_index, plan, remember, save_index
from ..progress import Progress
from . import grading_child

ALLOWED_FAILURES = 2  # retries after a worker died with the notebook (local:N; a remote scheduler has its own)
PACKAGE_ROOT = Path(__file__).resolve().parent.parent  # autograder/


class WorkerEnvironmentError(RuntimeError):
    """A Dask worker does not have the same course_lib / autograder as the client."""


class SchedulerLostError(RuntimeError):
    """The Dask scheduler went away during grading (what was executed is kept; a rerun resumes)."""


@functools.lru_cache(maxsize=None)
def environment_stamp() -> str:
    """``course_lib.__version__`` and a hash of every file of the installed ``course_lib/`` and ``autograder/``,
    computed once per process (the code a worker process started with)."""
    import course_lib

    digest = hashlib.sha256()
    for package in (Path(course_lib.__file__).resolve().parent, PACKAGE_ROOT):
        for path in sorted(package.rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc":
                digest.update(f"{package.name}/{path.relative_to(package)}\0".encode())
                digest.update(path.read_bytes())
    return f"course_lib {course_lib.__version__}, code {digest.hexdigest()[:16]}"


def _write_files(folder: Path, files: dict[str, bytes]) -> None:
    for relative, data in files.items():
        target = folder / relative
        if target.resolve().parent != folder.resolve() and folder.resolve() not in target.resolve().parents:
            raise ValueError(f"refusing to write outside {folder}: {relative}")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)


def _without_solutions(data: bytes) -> bytes:
    """A source notebook with the code of its solution cells removed (metadata and other cells kept)."""
    import nbformat
    from nbgrader import utils

    notebook = nbformat.reads(data.decode(), as_version=4)
    for cell in notebook.cells:
        if utils.is_solution(cell):
            cell.source = ""
    return nbformat.writes(notebook).encode()


def course_payload(root: Path, stage: str) -> dict[str, bytes]:
    """The course files a worker needs to grade ``stage`` (see the module's docstring), by path in the course."""
    root = Path(root)
    files = {"gradebook.db": (root / "gradebook.db").read_bytes()}
    for name in ("release", "source"):
        for relative, data in folder_files(root / name / stage).items():
            if name == "source" and relative.endswith(".ipynb"):
                data = _without_solutions(data)
            files[f"{name}/{stage}/{relative}"] = data
    return files


def _course_files(files: dict[str, bytes]) -> dict[str, bytes]:
    """A stage's course files as a Dask task's result (see :func:`execute_all_dask`)."""
    return files


# --- the worker's side ---------------------------------------------------------------------------------------

def _setup(options: str, jobs_by_host: dict, host: str) -> dict:
    """The set-up of the grading children (:mod:`autograder.distributed.grading_child`) of a worker on ``host``: the
    options (:meth:`GradingOptions.to_json`) with the kernels' thread share of the host (``jobs``: the Dask worker
    processes on it), and the log folder."""
    jobs = max(1, int(jobs_by_host.get(host, 1)))
    return {"options": dataclasses.replace(GradingOptions.from_json(options), jobs=jobs).to_json(),
            "log_dir": str(Path(tempfile.gettempdir()) / "autograder-worker-logs")}


def start_children(options: str, jobs_by_host: dict, dask_worker) -> int:
    """On a worker (``client.run``): start one grading child per thread, before the first task needs it."""
    host = dask_worker.address.rsplit(":", 1)[0]
    return grading_child.start(_setup(options, jobs_by_host, host), dask_worker.state.nthreads)


def grade_notebook_task(course: dict[str, bytes], submission: dict[str, bytes], student: str, stage: str,
                        options: str, library_view: str | None, stamp: str, jobs_by_host: dict) -> dict:
    """One notebook on a Dask worker: returns ``{"result": execute_notebook's record, "files": the executed
    folder's files}``. Runs ``execute_notebook`` in one of the worker's grading children, in a scratch folder inside
    the worker's own directory: Dask removes it with the worker's, and a worker that was killed mid-task (which
    removes nothing) has its directory removed by the next worker that starts on that machine."""
    local = environment_stamp()
    if local != stamp:
        raise WorkerEnvironmentError(f"worker on {_worker_host()} has {local}, the client has {stamp}")
    setup = _setup(options, jobs_by_host, _worker_host())
    with tempfile.TemporaryDirectory(prefix="autograder-", dir=_worker_directory()) as folder:
        root = Path(folder)
        _write_files(root, course)
        _write_files(root / SUBMITTED / student / stage, submission)
        child = grading_child.take(setup)
        try:
            result = child.execute({"root": str(root), "student": student, "stage": stage, "view": library_view})
        except BaseException:
            child.close()
            raise
        where = f"{setup['log_dir']} on {_worker_host()}"
        if result is None:
            result = {"student": student, "stage": stage, "seconds": 0.0,
                      "problem": f"could not be graded (its grading process ended with {child.close()}; "
                                 f"see {where})"}
            return {"result": result, "files": {}}
        grading_child.give_back(child)
        if result["problem"]:
            result["problem"] = result["problem"].replace(str(root / LOGS), where)
        executed = executed_path(root, student, stage).parent
        files = folder_files(executed) if executed.is_dir() else {}
    return {"result": result, "files": files}


def _current_worker():
    """The Dask worker running this task, or None outside one."""
    try:
        from distributed import get_worker

        return get_worker()
    except (ImportError, ValueError):
        return None


def _worker_host() -> str:
    worker = _current_worker()
    return worker.address.rsplit(":", 1)[0] if worker is not None else "localhost"


def _worker_directory() -> str | None:
    """The running Dask worker's own directory (None outside a worker: the system's temporary folder)."""
    worker = _current_worker()
    return worker.local_directory if worker is not None else None


# --- the client's side ---------------------------------------------------------------------------------------

def connect(spec) -> tuple:
    """``(client, cluster)`` for ``spec``: ``"local:N"`` (a LocalCluster of N one-thread worker processes that
    this call owns), a scheduler address (``tcp://HOST:8786``), or an existing ``distributed.Client``
    (``cluster`` is None unless this call started one)."""
    import dask
    from distributed import Client, LocalCluster

    if isinstance(spec, Client):
        return spec, None
    spec = str(spec)
    if spec.startswith("local:"):
        workers = int(spec.split(":", 1)[1])
        if workers < 1:
            raise ValueError(f"--dask local:N needs N >= 1, got {spec!r}")
        with dask.config.set({"distributed.scheduler.allowed-failures": ALLOWED_FAILURES}):
            cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, memory_limit=0,
                                   dashboard_address=":0", scheduler_port=0)
        return Client(cluster), cluster
    try:
        return Client(spec, timeout="30s"), None
    except (OSError, TimeoutError) as error:
        raise SchedulerLostError(f"no Dask scheduler answers at {spec}: {error}") from None


def _worker_sandbox() -> str | None:
    from ..execute.sandbox import sandbox_unavailable

    return sandbox_unavailable()


def check_workers(client, stamp: str, sandbox: bool = True) -> dict[str, int]:
    """Raise :class:`WorkerEnvironmentError` unless every worker has ``stamp`` (and can make the sandbox when
    ``sandbox``); returns workers per host."""
    workers = client.scheduler_info()["workers"]
    if not workers:
        client.wait_for_workers(1, timeout=120)
        workers = client.scheduler_info()["workers"]
    try:
        stamps = client.run(environment_stamp)
    except Exception as error:  # noqa: BLE001 - e.g. no autograder module at all on a worker
        raise WorkerEnvironmentError(f"Nothing was graded: a Dask worker cannot run this project's code "
                                     f"({type(error).__name__}: {error}); install it there") from None
    wrong = {address: found for address, found in stamps.items() if found != stamp}
    if wrong:
        lines = "\n".join(f"  {address}: {found}" for address, found in sorted(wrong.items()))
        raise WorkerEnvironmentError(
            f"Nothing was graded: these Dask workers do not run this project's code ({stamp}):\n{lines}\n"
            "Install the same version of course_lib/autograder in the workers' environment "
            "(pip install -c constraints.txt -e \".[dev]\" from the same checkout) and restart them.")
    if sandbox:
        reasons = {address: reason for address, reason in client.run(_worker_sandbox).items() if reason}
        if reasons:
            lines = "\n".join(f"  {address}: {reason}" for address, reason in sorted(reasons.items()))
            raise WorkerEnvironmentError(f"Nothing was graded: these Dask workers cannot make the sandbox:\n{lines}")
    hosts: dict[str, int] = {}
    for address in workers:
        host = address.rsplit(":", 1)[0]
        hosts[host] = hosts.get(host, 0) + 1
    return hosts


def dashboard_link(client) -> str | None:
    """The address of the scheduler's dashboard when it serves one: ``dask scheduler`` serves its status page
    only with ``bokeh`` installed and without ``--no-dashboard`` (it lists a dashboard port either way)."""
    if not client.scheduler_info().get("services", {}).get("dashboard"):
        return None
    link = client.dashboard_link
    try:
        with urllib.request.urlopen(link, timeout=3) as response:
            return link if response.status == 200 else None
    except (OSError, ValueError):
        return None


def _retries(client, keys: list[str]) -> int:
    def count(dask_scheduler, keys):
        return sum(getattr(dask_scheduler.tasks.get(key), "suspicious", 0) for key in keys)

    try:
        return int(client.run_on_scheduler(count, keys=keys))
    except Exception:  # noqa: BLE001 - the count is for the progress line only
        return 0


def execute_all_dask(root: Path, work: dict[str, tuple[str, ...]], options: GradingOptions, dask,
                     progress: Callable[[dict], None] | None = None,
                     notify: Callable[[str], None] = print) -> list[dict]:
    """:func:`autograder.execute.pool.execute_all` on a Dask cluster (``dask``: see :func:`connect`); same return."""
    root = Path(root)
    client, cluster = connect(dask)
    with _client_log_quiet():
        try:
            stamp, hosts = _prepare_workers(client, options, notify)
            index = load_index(root)
            tasks, results = plan(root, work, options, index)
            if results:
                notify(f"  {len(results)} notebooks already executed (executed/{INDEX}) are kept")
            futures = _submit(client, root, tasks, options.to_json(), stamp, hosts)
            results += _gather(client, root, futures, index, progress)
            save_index(root, index)
        finally:
            _release(client, cluster, dask)
    return runs_by_student(work, results)


@contextlib.contextmanager
def _client_log_quiet():
    """The Dask client's log silenced while the block runs: a lost scheduler is :class:`SchedulerLostError`, not the
    reconnection's traceback."""
    client_log = logging.getLogger("distributed.client")
    level = client_log.level
    client_log.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        client_log.setLevel(level)


def _prepare_workers(client, options: GradingOptions, notify: Callable[[str], None]) -> tuple[str, dict[str, int]]:
    """Check the workers (:func:`check_workers`), say where the run goes, and start their grading children (whose
    imports overlap with the client's preparation); returns the version stamp and the workers per host."""
    stamp = environment_stamp()
    hosts = check_workers(client, stamp, options.sandbox)
    link = dashboard_link(client)
    notify(f"Dask: {sum(hosts.values())} workers on {len(hosts)} machine(s) at {client.scheduler.address}; "
           + (f"dashboard {link}" if link else "no dashboard (the scheduler serves one when bokeh is installed "
                                               "beside it)"))
    client.run(start_children, options.to_json(), hosts)
    return stamp, hosts


def _submit(client, root: Path, tasks: list, options: str, stamp: str, hosts: dict[str, int]) -> dict:
    """One :func:`grade_notebook_task` per ``(student, stage, key)`` of ``tasks``, and one task per stage holding its
    course files; returns the futures, each with its ``(student, stage, key)``."""
    # a task rather than scattered data: the scheduler recomputes it when the worker holding it dies
    courses = {stage: client.submit(_course_files, course_payload(root, stage))
               for stage in {stage for _, stage, _ in tasks}}
    views = {stage: view_stage(root, stage) for stage in courses}
    futures = {}
    for student, stage, key in tasks:
        submission = folder_files(root / SUBMITTED / student / stage)
        future = client.submit(grade_notebook_task, courses[stage], submission, student, stage, options,
                               views[stage], stamp, hosts, key=f"grade-{student}-{stage}-{key[:12]}",
                               pure=False, retries=0)
        futures[future] = (student, stage, key)
    return futures


def _gather(client, root: Path, futures: dict, index: dict, progress: Callable[[dict], None] | None) -> list[dict]:
    """The results of ``futures`` (see :func:`_submit`) as they finish, each executed folder written to
    ``executed/`` and recorded in ``index`` as it arrives; a scheduler that goes away is :class:`SchedulerLostError`."""
    from distributed import as_completed

    results, counter = [], Progress(len(futures))
    try:
        for future in as_completed(list(futures)):
            student, stage, key = futures[future]
            answer = _answer(client, future, student, stage, len(results), len(futures))
            result = _keep(root, student, stage, key, answer, index)
            results.append(result)
            result["progress"] = f"{counter.record(result)}, {_retries(client, [f.key for f in futures])} retried"
            if progress is not None:
                progress(result)
    except Exception as error:
        if isinstance(error, (SchedulerLostError, WorkerEnvironmentError)) or client.status == "running":
            raise
        raise SchedulerLostError(_lost_message(client, len(results), len(futures), error)) from None
    return results


def _answer(client, future, student: str, stage: str, finished: int, total: int) -> dict:
    """What :func:`grade_notebook_task` returned for ``future``; a notebook that killed the grading worker every time
    it ran becomes its own problem, and a lost connection :class:`SchedulerLostError`."""
    from distributed.client import FutureCancelledError
    from distributed.scheduler import KilledWorker

    try:
        return future.result()
    except KilledWorker:
        return {"result": {"student": student, "stage": stage, "seconds": 0.0,
                           "problem": "not graded: its notebook killed the grading worker "
                                      "every time it ran (tried on several workers)"}, "files": {}}
    except WorkerEnvironmentError:
        raise
    except (FutureCancelledError, OSError, TimeoutError) as error:
        raise SchedulerLostError(_lost_message(client, finished, total, error)) from None


def _keep(root: Path, student: str, stage: str, key: str, answer: dict, index: dict) -> dict:
    """Write the executed folder of ``answer`` (see :func:`grade_notebook_task`) into ``executed/`` and record it in
    ``index`` under ``key``; returns its result."""
    result = answer["result"]
    target = executed_path(root, student, stage).parent
    shutil.rmtree(target, ignore_errors=True)
    if answer["files"]:
        target.mkdir(parents=True)
        _write_files(target, answer["files"])
        remember(root, index, key, result)
    return result


def _release(client, cluster, dask) -> None:
    """End the workers' idle grading children (they hold torch in memory on the lab machines), then close what
    :func:`connect` opened: a client passed in as ``dask`` stays open for its owner."""
    if client.status == "running":
        with contextlib.suppress(Exception):
            client.run(grading_child.close_all)
    if client is not dask:
        client.close()
    if cluster is not None:
        cluster.close()


def _lost_message(client, finished: int, total: int, error: BaseException) -> str:
    from distributed.client import FutureCancelledError

    cause = ("the client lost its connection to it" if isinstance(error, FutureCancelledError)
             else f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}")
    return (f"The Dask scheduler at {client.scheduler.address} went away after {finished} of {total} notebooks "
            f"({cause}). {'The executed one is' if finished == 1 else f'The {finished} executed are'} kept in "
            f"executed/ ({INDEX}). Start the scheduler and its workers again and rerun the same command: it "
            "executes only the notebooks that are missing.")
