"""The long-lived grading processes of a Dask worker (``autograder.distributed.grading_child``): kept between
notebooks, replaced when they die, and never left running when their worker is gone."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

from autograder.distributed.cluster import grading_child
from autograder.execute.options import GradingOptions

pytestmark = pytest.mark.timeout(240)


def _setup(tmp_path, **options) -> dict:
    return {"options": GradingOptions(**options).to_json(), "log_dir": str(tmp_path / "logs")}


@pytest.fixture(autouse=True)
def _no_idle_children():
    yield
    grading_child.close_all()


def test_a_child_is_kept_between_notebooks_and_replaced_for_other_options(tmp_path):
    child = grading_child.take(_setup(tmp_path))
    grading_child.give_back(child)
    assert grading_child.take(_setup(tmp_path)) is child
    grading_child.give_back(child)
    other = grading_child.take(_setup(tmp_path, memory_gb=2))
    assert other is not child and other.alive()
    assert not child.alive()  # the idle child with the old options was ended
    other.close()


def test_a_child_that_dies_during_a_notebook_is_reported_and_dropped(tmp_path):
    child = grading_child.take(_setup(tmp_path))
    # a course folder without a gradebook: execute_notebook fails before its own error handling, the child ends
    record = child.execute({"root": str(tmp_path / "no-course"), "student": "s", "stage": "01_noising",
                            "view": None})
    assert record is None and child.close() != 0
    grading_child.give_back(child)
    assert grading_child.take(_setup(tmp_path)) is not child
    assert "FileNotFoundError" in "".join(p.read_text() for p in (tmp_path / "logs").glob("worker-*.log"))


def _gone(pid: int, seconds: float) -> bool:
    """Whether process ``pid`` ends (or is a zombie) within ``seconds``."""
    deadline = time.monotonic() + seconds
    while psutil.pid_exists(pid) and time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.1)
    return not psutil.pid_exists(pid)


@pytest.fixture
def busy_cpus():
    """Every CPU of this machine kept busy by a spinning process while the test runs."""
    spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(os.cpu_count() or 2)]
    yield
    for spinner in spinners:
        spinner.kill()
        spinner.wait()


def _has_loaded_torch(pid: int) -> bool:
    try:
        return any("libtorch" in region.path for region in psutil.Process(pid).memory_maps())
    except psutil.Error:
        return False


@pytest.mark.parametrize("dies", ["while the child imports", "once the child has imported torch"])
def test_a_child_ends_when_its_worker_is_gone(tmp_path, busy_cpus, dies):
    """A stand-in worker starts a child and is killed (SIGKILL, as by the OOM killer), at once, while the child is
    still starting and importing nbgrader and torch, or later; in both cases the child must end."""
    at_once = dies == "while the child imports"
    worker = subprocess.Popen([sys.executable, "-c", (
        "import json, os, signal, time\n"
        "from autograder.distributed.cluster import grading_child\n"
        f"child = grading_child.GradingChild(json.loads({repr(__import__('json').dumps(_setup(tmp_path)))}))\n"
        "print(child.process.pid, flush=True)\n"
        + ("os.kill(os.getpid(), signal.SIGKILL)\n" if at_once else "time.sleep(600)\n"))],
        stdout=subprocess.PIPE, text=True)
    pid = int(worker.stdout.readline())
    if not at_once:
        deadline = time.monotonic() + 120
        while not _has_loaded_torch(pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _has_loaded_torch(pid)
        worker.kill()
    assert worker.wait() == -signal.SIGKILL
    assert _gone(pid, seconds=60), "the grading child outlived its worker"


def test_a_child_whose_parent_is_not_the_worker_it_names_exits_at_once():
    """The worker died before the child's first instruction: the child, adopted by another process, must not even
    read its set-up (its stdin stays open here)."""
    child = subprocess.Popen([sys.executable, "-m", "autograder.distributed.grading_child", "--parent", "1"],
                             stdin=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert child.wait(timeout=60) == 1
    child.stdin.close()
    usage = subprocess.run([sys.executable, "-m", "autograder.distributed.grading_child"], capture_output=True,
                           text=True, timeout=60)
    assert usage.returncode == 2 and "--parent PID" in usage.stderr


def test_the_options_cross_a_process_boundary_in_one_checked_shape():
    options = GradingOptions(jobs=3, cell_timeout=7, notebook_timeout=30.5, memory_gb=1.5, max_processes=9,
                             sandbox=False)
    assert GradingOptions.from_json(options.to_json()) == options
    with pytest.raises(ValueError, match="`jobs` must be an integer >= 1"):
        GradingOptions.from_json('{"jobs": 0}')
