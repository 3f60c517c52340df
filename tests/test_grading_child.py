"""The long-lived grading processes of a Dask worker (``autograder.grading_child``): kept between notebooks, replaced
when they die, and never left running when their worker is gone."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

from autograder import grading_child
from autograder.grading import GradingOptions

pytestmark = pytest.mark.timeout(120)


def _setup(tmp_path, **options) -> dict:
    return {"options": dataclasses.asdict(GradingOptions(**options)), "log_dir": str(tmp_path / "logs")}


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


def test_a_child_ends_when_its_worker_is_gone(tmp_path):
    """A stand-in worker starts a child and is killed (SIGKILL, as by the OOM killer); the child must follow."""
    worker = subprocess.Popen([sys.executable, "-c", (
        "import json, sys, time\n"
        "from autograder import grading_child\n"
        f"child = grading_child.GradingChild(json.loads({repr(__import__('json').dumps(_setup(tmp_path)))}))\n"
        "print(child.process.pid, flush=True)\n"
        "time.sleep(600)\n")], stdout=subprocess.PIPE, text=True)
    pid = int(worker.stdout.readline())
    assert psutil.pid_exists(pid)
    os.kill(worker.pid, signal.SIGKILL)
    worker.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and psutil.pid_exists(pid) and psutil.Process(pid).status() != "zombie":
        time.sleep(0.1)
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == "zombie"
