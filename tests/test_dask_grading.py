"""Phase 1 on a Dask cluster (``grade --dask``): same grades as ``--jobs``, a killed worker loses and doubles
nothing, a notebook that kills its worker every time costs only its student, a rerun executes only what is
missing, and a scheduler that goes away stops grading with what was executed kept for the rerun.

A small class of the toy course of ``tests/test_autograder.py`` (``tests/submissions/toy/``) on a LocalCluster of
two one-thread worker processes, and on a scheduler and workers started as on lab machines (``dask scheduler``,
``dask worker``).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import nbformat
import pytest

pytest.importorskip("distributed")

import dask  # noqa: E402
from distributed import Client, LocalCluster  # noqa: E402

from autograder.commands import grade, release  # noqa: E402
from autograder.distributed.cluster import ALLOWED_FAILURES, WorkerEnvironmentError, check_workers  # noqa: E402
from autograder.execute.notebook import executed_path  # noqa: E402
from autograder.execute.options import GradingOptions  # noqa: E402
from autograder.execute.resume import EXECUTED, INDEX, resume_key  # noqa: E402
from autograder.execute.sandbox import sandbox_unavailable  # noqa: E402

TOY_DIR = Path(__file__).parent / "submissions" / "toy"
STAGE = "00_toy"
STAGES = (STAGE,)
OPTIONS = GradingOptions(jobs=2, cell_timeout=20, notebook_timeout=120, memory_gb=6,
                         sandbox=sandbox_unavailable() is None)

pytestmark = pytest.mark.timeout(300)


def _solution() -> nbformat.NotebookNode:
    return nbformat.read(TOY_DIR / f"{STAGE}.ipynb", as_version=4)


def _with_first_in(notebook, grade_id: str, code: str) -> nbformat.NotebookNode:
    cell = next(c for c in notebook.cells if c.metadata.get("nbgrader", {}).get("grade_id") == grade_id)
    cell.source = code + "\n" + cell.source
    return notebook


def _write_class(folder: Path, released: Path) -> Path:
    students = {
        "solution": _solution(),
        "exits": _with_first_in(_solution(), "ddpm_schedule", "import os\nos._exit(1)"),
        "slow": _with_first_in(_solution(), "ddpm_schedule", "import time\ntime.sleep(6)"),
    }
    for student, notebook in students.items():
        (folder / student / STAGE).mkdir(parents=True)
        nbformat.write(notebook, folder / student / STAGE / f"{STAGE}.ipynb")
    return folder


def _grades(table) -> dict[str, tuple[float, tuple]]:
    return {row.student: (row.points[STAGE], tuple(sorted(row.problems))) for row in table.rows}


@pytest.fixture(scope="module")
def client():
    with dask.config.set({"distributed.scheduler.allowed-failures": ALLOWED_FAILURES}):
        cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, memory_limit=0,
                               dashboard_address=":0", scheduler_port=0)
    client = Client(cluster)
    yield client
    client.close()
    cluster.close()


@pytest.fixture(scope="module")
def course(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("course")
    release(root, STAGES, TOY_DIR, notebooks_dir=None)
    submissions = _write_class(tmp_path_factory.mktemp("class"), root / "release" / STAGE / f"{STAGE}.ipynb")
    return root, submissions


@pytest.fixture(scope="module")
def by_jobs(course, tmp_path_factory):
    """The class graded with ``--jobs 2`` in a course folder of its own."""
    root = tmp_path_factory.mktemp("jobs")
    release(root, STAGES, TOY_DIR, notebooks_dir=None)
    table, _ = grade(course[1], root, STAGES, OPTIONS, TOY_DIR)
    return _grades(table)


def _counting(client) -> list:
    """The keys of the notebooks (``grade-<student>-...``) that ``client`` is asked to run from now on."""
    submitted, submit = [], client.submit

    def counted(*args, **kwargs):
        if kwargs.get("key", "").startswith("grade-"):
            submitted.append(kwargs["key"])
        return submit(*args, **kwargs)

    client.submit = counted
    return submitted


def test_dask_cluster_gives_the_same_grades_as_jobs(course, by_jobs, client, capsys):
    root, submissions = course
    table, runs = grade(submissions, root, STAGES, OPTIONS, TOY_DIR, dask=client)
    link = capsys.readouterr().out.split("; dashboard ")[1].split()[0]
    with urllib.request.urlopen(link, timeout=10) as page:
        assert page.status == 200 and b"Dask" in page.read()
    assert _grades(table) == by_jobs
    assert by_jobs["solution"][0] == 4.0 and by_jobs["exits"][1] == (STAGE,)
    assert (root / "grades.csv").is_file()
    assert all(executed_path(root, student, STAGE).is_file() for student in by_jobs)


def test_a_killed_worker_loses_and_doubles_nothing(course, by_jobs, client, tmp_path):
    root, submissions = course
    (root / EXECUTED / INDEX).unlink()  # execute everything again
    pids = client.run(os.getpid)
    directories = client.run(lambda dask_worker: dask_worker.local_directory)
    scratch_before = _scratch_in_tmp()
    killed = []

    def kill_one_running_notebook():
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not killed:
            busy = [address for address, keys in client.processing().items()
                    if any(str(key).startswith("grade-slow") for key in keys)]
            if busy:
                time.sleep(3)  # inside the notebook (its kernel sleeps 6 s)
                os.kill(pids[busy[0]], 9)
                killed.append(busy[0])
            time.sleep(0.1)

    watcher = threading.Thread(target=kill_one_running_notebook, daemon=True)
    watcher.start()
    lines = []
    table, runs = grade(submissions, root, STAGES, OPTIONS, TOY_DIR, progress=lines.append, dask=client)
    watcher.join()
    assert killed, "no worker was running the slow notebook"
    assert [row.student for row in table.rows].count("slow") == 1
    assert sorted(row.student for row in table.rows) == sorted(by_jobs)
    assert _grades(table) == by_jobs
    assert sorted(line["student"] for line in lines) == sorted(by_jobs)  # each notebook reported once
    assert int(lines[-1]["progress"].split(", ")[-1].split()[0]) >= 1  # "... N retried"
    assert sorted(p.name for p in (root / EXECUTED / "slow").iterdir()) == [STAGE]
    # the killed worker's scratch copy of the course and the submission goes when its replacement starts
    assert _scratch_in_tmp() <= scratch_before
    deadline = time.monotonic() + 60
    while Path(directories[killed[0]]).exists():
        assert time.monotonic() < deadline, f"the killed worker left {directories[killed[0]]}"
        time.sleep(0.5)


def _scratch_in_tmp() -> set[Path]:
    """The grading tasks' scratch folders in the system's temporary folder (not the workers' log folder)."""
    return {path for path in Path(tempfile.gettempdir()).glob("autograder-*") if path.name != "autograder-worker-logs"}


def test_a_rerun_executes_only_what_is_missing(course, by_jobs, client):
    root, submissions = course
    if not (root / EXECUTED / INDEX).is_file():  # run alone: execute and index everything first
        grade(submissions, root, STAGES, OPTIONS, TOY_DIR, dask=client)
    submitted = _counting(client)
    table, _ = grade(submissions, root, STAGES, OPTIONS, TOY_DIR, dask=client)
    assert submitted == [] and _grades(table) == by_jobs

    notebook = submissions / "solution" / STAGE / f"{STAGE}.ipynb"  # one student hands in again
    notebook.write_text(notebook.read_text().replace('"cells": [', '"cells": [{"cell_type": "markdown", '
                                                     '"metadata": {}, "source": "resubmitted"}, ', 1))
    table, _ = grade(submissions, root, STAGES, OPTIONS, TOY_DIR, dask=client)
    assert [key.split("-")[1] for key in submitted] == ["solution"]
    assert _grades(table) == by_jobs

    key = resume_key(root, "slow", STAGE, OPTIONS)  # other grading options: executed again
    assert resume_key(root, "slow", STAGE, dataclasses.replace(OPTIONS, cell_timeout=21)) != key
    assert resume_key(root, "slow", STAGE, dataclasses.replace(OPTIONS, jobs=7)) == key
    assert resume_key(root, "slow", STAGE, dataclasses.replace(OPTIONS, memory_gb=float(OPTIONS.memory_gb))) == key


def test_a_worker_with_other_code_is_refused_before_grading(client):
    with pytest.raises(WorkerEnvironmentError, match="do not run this project's code"):
        check_workers(client, "course_lib 0.0.0, code 0000", sandbox=False)


def _pod_memory_limit(limit_bytes: int):
    """A worker plugin that does what a Kubernetes pod's memory limit (or the kernel's OOM killer) does: SIGKILL
    the worker when its process tree (the worker, its grading children and their sandboxed kernels, seen from
    outside the sandbox) holds more than ``limit_bytes`` of resident memory."""
    import psutil
    from distributed.diagnostics.plugin import WorkerPlugin

    class PodMemoryLimit(WorkerPlugin):  # local, so that cloudpickle sends it by value
        name = "pod-memory-limit"

        def setup(self, worker):
            def watch():
                worker_process = psutil.Process()
                while True:
                    resident = 0
                    for process in [worker_process, *worker_process.children(recursive=True)]:
                        try:
                            resident += process.memory_info().rss
                        except psutil.Error:
                            pass
                    if resident > limit_bytes:
                        os.kill(os.getpid(), signal.SIGKILL)
                    time.sleep(0.05)

            threading.Thread(target=watch, daemon=True).start()

    return PodMemoryLimit()


def _cli_grade(submissions: Path, root: Path, address: str) -> subprocess.Popen:
    """``python -m autograder grade`` on the cluster at ``address``, with this module's options, in its own process."""
    command = [sys.executable, "-m", "autograder", "grade", str(submissions), "--course", str(root), "--stages", STAGE,
               "--solutions", str(TOY_DIR), "--dask", address, "--cell-timeout", str(OPTIONS.cell_timeout),
               "--notebook-timeout", str(OPTIONS.notebook_timeout), "--memory-gb", str(OPTIONS.memory_gb)]
    command += [] if OPTIONS.sandbox else ["--no-sandbox"]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "COURSE_MODE": "quick"})


def test_a_notebook_that_kills_its_worker_every_time_costs_only_its_student(tmp_path):
    """The real command line on a scheduler and workers started as on lab machines, whose workers are killed
    whenever their process tree goes over a pod's memory limit."""
    root = tmp_path / "course"
    release(root, STAGES, TOY_DIR, notebooks_dir=None)
    hog = "import torch, time\nhog = torch.ones(2**29)  # 2 GiB, over the pod's limit\ntime.sleep(60)"
    students = {"solution": _solution(), "hog": _with_first_in(_solution(), "ddpm_schedule", hog)}
    for student, notebook in students.items():
        (tmp_path / "class" / student / STAGE).mkdir(parents=True)
        nbformat.write(notebook, tmp_path / "class" / student / STAGE / f"{STAGE}.ipynb")
    scheduler, workers, address = _lab_cluster(tmp_path / "lab")
    scratch_before = _scratch_in_tmp()
    try:
        with Client(address, timeout="60s") as lab:
            # 3 GiB: above what a worker grading the toy notebook holds with its child and kernel (1.9 GiB here)
            lab.register_plugin(_pod_memory_limit(3 * 2**30))
            cli = _cli_grade(tmp_path / "class", root, address)
            printed, error = cli.communicate(timeout=280)
            assert cli.returncode == 0, printed + error
            lab.wait_for_workers(2, timeout=60)  # the nannies restarted the killed workers
    finally:
        _stop(scheduler, workers)
    with open(root / "grades.csv") as handle:
        grades = {row["student"]: row for row in csv.DictReader(handle)}
    assert (grades["solution"][STAGE], grades["solution"]["problems"]) == ("4", "")
    assert grades["hog"][STAGE] == "0"
    assert "killed the grading worker every time it ran" in grades["hog"]["problems"]
    ran = [line.split()[1] for line in printed.splitlines() if line.startswith("  ran ")]
    assert sorted(ran) == ["hog", "solution"]  # each notebook reported once
    assert not executed_path(root, "hog", STAGE).exists()
    assert "hog/" + STAGE not in (root / EXECUTED / INDEX).read_text()  # a rerun tries it again
    assert _scratch_in_tmp() <= scratch_before  # the killed workers' copies of the course went with their folders


def _start(command: list[str], log: Path, environment: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen([str(Path(sys.executable).with_name("dask")), *command], stdout=log.open("ab"),
                            stderr=subprocess.STDOUT, env=environment, start_new_session=True)


def _lab_cluster(folder: Path) -> tuple[subprocess.Popen, subprocess.Popen, str]:
    """A scheduler and two one-thread workers started as on lab machines (``dask scheduler``, ``dask worker``),
    with the scheduler's retry bound; returns both processes and the scheduler's address once both workers are
    there (as an instructor starts grading once the lab's workers are up)."""
    folder.mkdir(parents=True, exist_ok=True)
    file = folder / "scheduler.json"
    file.unlink(missing_ok=True)
    environment = {**os.environ, "DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES": str(ALLOWED_FAILURES)}
    scheduler = _start(["scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard", "--scheduler-file",
                        str(file)], folder / "scheduler.log", environment)
    workers = _start(["worker", "--scheduler-file", str(file), "--host", "127.0.0.1", "--nworkers", "2",
                      "--nthreads", "1", "--no-dashboard", "--death-timeout", "10"], folder / "workers.log")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            address = json.loads(file.read_text())["address"]
        except (OSError, ValueError, KeyError):  # not written yet, or half written
            time.sleep(0.2)
            continue
        try:
            with Client(address, timeout="60s") as lab:
                lab.wait_for_workers(2, timeout=120)
        except BaseException:
            _stop(scheduler, workers)
            raise
        return scheduler, workers, address
    _stop(scheduler, workers)
    raise TimeoutError(f"no scheduler file after 60 s; see {folder}")


def _stop(*processes: subprocess.Popen) -> None:
    for process in processes:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def test_a_lost_scheduler_stops_grading_and_the_rerun_executes_only_what_is_missing(course, by_jobs, tmp_path):
    """The first run is the real command line, whose scheduler is killed after its first notebook."""
    root, submissions = course
    (root / EXECUTED / INDEX).unlink(missing_ok=True)
    scheduler, workers, address = _lab_cluster(tmp_path / "lab")
    try:
        cli = _cli_grade(submissions, root, address)
        printed = []
        for line in cli.stdout:
            printed.append(line)
            if line.startswith("  ran "):
                os.killpg(scheduler.pid, signal.SIGKILL)
                break
        printed += cli.stdout.readlines()
        error = cli.stderr.read()
        assert cli.wait(timeout=120) == 3, "".join(printed) + error
    finally:
        _stop(scheduler, workers)
    assert printed[0].startswith(f"Dask: 2 workers on 1 machine(s) at {address}; no dashboard")  # --no-dashboard
    kept = next(line.split()[1] for line in printed if line.startswith("  ran "))
    assert error.strip() == (
        f"The Dask scheduler at {address} went away after 1 of 3 notebooks (the client lost its connection to "
        f"it). The executed one is kept in executed/ ({INDEX}). Start the scheduler and its workers again and "
        "rerun the same command: it executes only the notebooks that are missing.")
    assert [p.parent.parent.name for p in (root / EXECUTED).glob(f"*/{STAGE}/{STAGE}.ipynb")] == [kept]
    assert f"{kept}/{STAGE}" in (root / EXECUTED / INDEX).read_text()

    scheduler, workers, address = _lab_cluster(tmp_path / "lab")  # the scheduler is back
    try:
        with Client(address, timeout="60s") as lab:
            lab.wait_for_workers(2, timeout=120)
            submitted = _counting(lab)
            table, _ = grade(submissions, root, STAGES, OPTIONS, TOY_DIR, dask=lab)
    finally:
        _stop(scheduler, workers)
    assert sorted(key.split("-")[1] for key in submitted) == sorted(
        set(by_jobs) - {kept})
    assert _grades(table) == by_jobs
