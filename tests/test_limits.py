"""The caps on the memory and the number of processes of a kernel's whole process tree
(``autograder/execute/limits.py``), with real kernels: sandboxed ones (every process of the sandbox counts) and one
without the sandbox (the kernel's descendants). The same caps through the command line, on a class:
``tests/test_grading_limits.py``.

The processes a cell starts name themselves (``/proc/self/comm``), so the host can tell they are gone.
"""

from __future__ import annotations

import logging
import os
import subprocess
import threading
import time

import psutil
import pytest
from nbclient.exceptions import DeadKernelError

from autograder.execute.limits import GIB, LimitedKernelManager, TreeWatchdog
from test_sandbox import _kernel, _run, _stdout, _stop, needs_sandbox

pytestmark = pytest.mark.timeout(180)

#: a cell: three children of ``sys.executable`` that each touch {gib} GiB, then wait for them
CHILDREN = """import subprocess, sys, time
child = "import time; open('/proc/self/comm', 'w').write({marker!r}); held = b'x' * int({gib} * 2**30); time.sleep(120)"
children = [subprocess.Popen([sys.executable, '-c', child]) for _ in range(3)]
time.sleep(60)
"""
#: a cell: a linear loop of forks, each child sleeps (not an exponential fork bomb)
FORKS = """import os, time
for _ in range(5000):
    if os.fork() == 0:
        open('/proc/self/comm', 'w').write({marker!r})
        time.sleep(120)
        os._exit(0)
time.sleep(60)
"""
#: a cell: a 512 MiB array, then four forked children that read all of it and sleep
SHARED = """import os, time
data = b'x' * 2**29
for number in range(4):
    if os.fork() == 0:
        data.count(b'y')
        open(f'read-{number}', 'w').close()
        time.sleep(120)
        os._exit(0)
while len([name for name in os.listdir('.') if name.startswith('read-')]) < 4:
    time.sleep(0.05)
time.sleep(1)  # ten looks of the watchdog
print('shared')
"""


def _named(marker: str) -> list[int]:
    """The PIDs of this machine's live processes named ``marker``."""
    found = []
    for process in psutil.process_iter(["name", "status"]):
        if process.info["name"] == marker and process.info["status"] != psutil.STATUS_ZOMBIE:
            found.append(process.pid)
    return found


def _gone(marker: str, seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while _named(marker) and time.monotonic() < deadline:
        time.sleep(0.1)
    return not _named(marker)


def _watchdogs() -> int:
    return sum(thread.name == "tree-watchdog" for thread in threading.enumerate())


def _killed(km, tmp_path, cell: str) -> str:
    """Run ``cell`` in ``km`` (which the watchdog must kill); returns its reason."""
    try:
        with pytest.raises(DeadKernelError):
            _run(km, tmp_path, [cell], timeout=90)
        return km.limit_exceeded
    finally:
        _stop(km)


@needs_sandbox
def test_children_each_under_the_cap_but_over_it_together_stop_the_sandbox(tmp_path):
    marker = f"hog{os.getpid()}"
    started = time.monotonic()
    reason = _killed(_kernel(memory_gb=2), tmp_path, CHILDREN.format(marker=marker, gib=1))
    assert reason.startswith("the notebook's processes held ") and "over the 2 GiB memory cap (--memory-gb)" in reason
    held = float(reason.split("held ")[1].split(" GiB")[0])
    assert 2 < held < 3.5, reason
    assert time.monotonic() - started < 60  # stopped, not waited for
    assert _gone(marker)


@needs_sandbox
def test_thousands_of_forks_stop_the_sandbox_at_the_process_cap_and_leave_nothing(tmp_path):
    marker = f"fork{os.getpid()}"
    reason = _killed(_kernel(memory_gb=2, max_processes=200), tmp_path, FORKS.format(marker=marker))
    assert reason.startswith("the notebook ran ") and "over the cap of 200 processes (--max-processes)" in reason
    assert 200 < int(reason.split("ran ")[1].split()[0]) < 5000
    assert _gone(marker)
    assert subprocess.run(["true"]).returncode == 0  # this machine can start processes again


@needs_sandbox
def test_an_honest_kernel_with_torch_under_a_1_gib_cap_is_untouched(tmp_path):
    km = _kernel(memory_gb=1, max_processes=256)
    try:
        notebook = _run(km, tmp_path, ["import torch\nx = torch.randn(500, 500)\nprint(float((x @ x.T).trace()) > 0)",
                                       "import time\ntime.sleep(1)\nprint('done')"])
        assert km.limit_exceeded is None and km.provisioner.process.poll() is None
        assert _stdout(notebook.cells[0]) == "True\n" and _stdout(notebook.cells[1]) == "done\n"
        assert _watchdogs() >= 1
    finally:
        _stop(km)
    deadline = time.monotonic() + 2
    while _watchdogs() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _watchdogs() == 0  # the watch ended with the kernel


@needs_sandbox
def test_pages_a_forked_child_shares_with_its_parent_count_once(tmp_path):
    cap = 1.5
    km = _kernel(memory_gb=cap)
    try:
        notebook = _run(km, tmp_path, [SHARED], timeout=90)
        tree = psutil.Process(km.sandbox_pid).children(recursive=True)  # not bwrap's init: it may not be open to us
        resident = sum(process.memory_info().rss for process in tree)
        proportional = sum(process.memory_full_info().pss for process in tree)
        assert _stdout(notebook.cells[0]) == "shared\n" and km.limit_exceeded is None
    finally:
        _stop(km)
    assert len(tree) == 5  # the kernel and its four children
    assert resident > cap * GIB > 2 * proportional  # the summed RSS would have stopped it


def test_without_the_sandbox_the_kernels_descendants_are_capped_too(tmp_path):
    marker = f"nsb{os.getpid()}"
    km = LimitedKernelManager(kernel_name="python3", memory_gb=1)
    reason = _killed(km, tmp_path, CHILDREN.format(marker=marker, gib=0.5))
    assert "over the 1 GiB memory cap (--memory-gb)" in reason
    assert _gone(marker)


def test_without_caps_no_watchdog_runs_and_a_failing_watch_never_raises(tmp_path, caplog):
    km = LimitedKernelManager(kernel_name="python3")
    try:
        _run(km, tmp_path, ["x = 1"])
        assert km._watchdog is None and km.limit_exceeded is None
    finally:
        _stop(km)

    class Broken:
        proc = os.open("/proc", os.O_RDONLY | os.O_DIRECTORY)

        def pids(self):
            raise RuntimeError("a tree that cannot be listed")

    with caplog.at_level(logging.ERROR, logger="autograder.execute.limits"):
        watchdog = TreeWatchdog(Broken(), memory_gb=1, interval=0.01)
        watchdog._thread.join(5)
    assert not watchdog._thread.is_alive() and watchdog.reason is None
    assert "its caps no longer hold" in caplog.text
    with pytest.raises(OSError):
        os.fstat(Broken.proc)  # closed by the watch
