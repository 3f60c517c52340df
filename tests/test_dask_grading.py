"""Phase 1 on a Dask cluster (``grade --dask``): same grades as ``--jobs``, a killed worker loses and doubles
nothing, a rerun executes only what is missing.

A small class of the toy course of ``tests/test_autograder.py`` (``tests/submissions/toy/``) on a LocalCluster of
two one-thread worker processes.
"""

from __future__ import annotations

import dataclasses
import os
import threading
import time
from pathlib import Path

import nbformat
import pytest

pytest.importorskip("distributed")

import dask  # noqa: E402
from distributed import Client, LocalCluster  # noqa: E402

from autograder.commands import grade, release  # noqa: E402
from autograder.distributed import (ALLOWED_FAILURES, INDEX, WorkerEnvironmentError, check_workers,  # noqa: E402
                                    resume_key)
from autograder.grading import EXECUTED, GradingOptions, executed_path  # noqa: E402
from autograder.sandbox import sandbox_unavailable  # noqa: E402

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
    """Count the tasks that ``client`` is asked to run from now on."""
    submitted, submit = [], client.submit
    client.submit = lambda *args, **kwargs: submitted.append(kwargs.get("key")) or submit(*args, **kwargs)
    return submitted


def test_dask_cluster_gives_the_same_grades_as_jobs(course, by_jobs, client):
    root, submissions = course
    table, runs = grade(submissions, root, STAGES, OPTIONS, TOY_DIR, dask=client)
    assert _grades(table) == by_jobs
    assert by_jobs["solution"][0] == 4.0 and by_jobs["exits"][1] == (STAGE,)
    assert (root / "grades.csv").is_file()
    assert all(executed_path(root, student, STAGE).is_file() for student in by_jobs)


def test_a_killed_worker_loses_and_doubles_nothing(course, by_jobs, client, tmp_path):
    root, submissions = course
    (root / EXECUTED / INDEX).unlink()  # execute everything again
    pids = client.run(os.getpid)
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


def test_a_worker_with_other_code_is_refused_before_grading(client):
    with pytest.raises(WorkerEnvironmentError, match="do not run this project's code"):
        check_workers(client, "course_lib 0.0.0, code 0000", sandbox=False)
