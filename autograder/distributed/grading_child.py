"""Long-lived grading processes on a Dask worker: what a ``--jobs`` worker process is, for a Dask task.

A Dask worker must not run a notebook itself: phase 1 sets the kernels' thread share and quick mode in its
environment and sends its stderr into a log (:func:`autograder.execute.notebook.set_up_worker`). So every notebook runs
in a child process of the worker, ``python -m autograder.distributed.grading_child``, set up that way once and then
kept: importing nbgrader, nbconvert and torch takes about a second, which a child started per notebook paid every
time. (The caps
on a kernel's memory and processes are kept by a watchdog thread in that child, :mod:`autograder.execute.limits`.)

Protocol (one JSON document per line): the child reads its set-up ``{"options": GradingOptions.to_json(),
"log_dir"}`` from stdin, imports what grading needs, then answers each request ``{"root", "student", "stage",
"view"}`` with :func:`autograder.execute.notebook.execute_notebook`'s record on stdout. Anything else the child or
nbgrader prints goes to the log. The child ends when stdin closes or when the worker that started it is gone: the
worker passes its PID (``--parent``), and the child's first instruction starts a watch that exits as soon as its
parent is another process, before the imports that take seconds. A sandboxed kernel ends with it
(``bwrap --die-with-parent``). (Not ``PR_SET_PDEATHSIG``: it fires when the *thread* that started the child ends,
and a Dask worker's threads come and go.)

:func:`take` and :func:`give_back` keep the idle children of this worker process; a worker with several threads
gets one child per notebook it runs at the same time.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path


class GradingChild:
    """One ``python -m autograder.distributed.grading_child`` process; ``setup`` is
    ``{"options": GradingOptions.to_json(), "log_dir": str}``."""

    def __init__(self, setup: dict):
        self.setup = setup
        command = [sys.executable, "-m", "autograder.distributed.grading_child", "--parent", str(os.getpid())]
        self.process = subprocess.Popen(command,
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)
        self.process.stdin.write(json.dumps(setup) + "\n")
        self.process.stdin.flush()

    def alive(self) -> bool:
        return self.process.poll() is None

    def execute(self, request: dict) -> dict | None:
        """The record of one notebook (``request``: see the module's docstring), or None when the child died."""
        try:
            self.process.stdin.write(json.dumps(request) + "\n")
            self.process.stdin.flush()
            line = self.process.stdout.readline()
        except (OSError, ValueError):  # broken pipe; closed file
            line = ""
        if not line:
            self.close()
            return None
        return json.loads(line)

    def close(self) -> int | None:
        """End the child (stdin closed, then killed if it does not stop); returns its exit status."""
        if self.alive():
            try:
                self.process.stdin.close()
                self.process.wait(timeout=5)
            except (OSError, subprocess.TimeoutExpired):
                self.process.kill()
        return self.process.wait()


_IDLE: list[GradingChild] = []
_LOCK = threading.Lock()


def take(setup: dict) -> GradingChild:
    """An idle child of this process with ``setup`` (started now when none is idle; idle children with another
    set-up are ended)."""
    with _LOCK:
        while _IDLE:
            child = _IDLE.pop()
            if child.setup == setup and child.alive():
                return child
            child.close()
    return GradingChild(setup)


def give_back(child: GradingChild) -> None:
    """Keep ``child`` for the next notebook (a dead one is dropped)."""
    if child.alive():
        with _LOCK:
            _IDLE.append(child)


def start(setup: dict, count: int) -> int:
    """Start ``count`` idle children with ``setup`` now, so that their imports overlap with the client's
    preparation; returns how many are idle."""
    children = [GradingChild(setup) for _ in range(count)]
    for child in children:
        give_back(child)
    return len(_IDLE)


def close_all() -> int:
    """End every idle child of this process (after a grading run); returns how many there were."""
    with _LOCK:
        children, _IDLE[:] = list(_IDLE), []
    for child in children:
        child.close()
    return len(children)


# --- the child's side ----------------------------------------------------------------------------------------

def _end_when_orphaned(parent: int) -> None:
    """In the child: exit at once when ``parent`` (the worker's PID, from the command line) is no longer this
    process's parent, and as soon as it stops being so (checked twice a second). Started before any import that
    takes time, so a worker that dies while the child imports torch is followed too."""
    if os.getppid() != parent:
        os._exit(1)

    def watch():
        while os.getppid() == parent:
            threading.Event().wait(0.5)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


def main(argv: list[str]) -> int:
    """``python -m autograder.distributed.grading_child --parent PID``: the set-up line, then one record per request
    line."""
    if len(argv) != 2 or argv[0] != "--parent" or not argv[1].isdigit():
        print("usage: python -m autograder.distributed.grading_child --parent PID "
              "(the PID of the process that starts it)", file=sys.stderr)
        return 2
    _end_when_orphaned(int(argv[1]))  # first: the imports below take seconds
    from ..execute.notebook import execute_notebook, import_grading_modules, kernel_python_path, set_up_worker
    from ..execute.options import GradingOptions

    setup = json.loads(sys.stdin.readline())
    options = GradingOptions.from_json(setup["options"])
    records = os.dup(1)
    set_up_worker(options, setup["log_dir"])  # stderr into the worker's log, as a --jobs worker
    os.dup2(2, 1)  # whatever else prints goes to the log too; the records go to the saved stdout
    import_grading_modules()  # now, not when a notebook waits
    for line in sys.stdin:
        request = json.loads(line)
        root = Path(request["root"])
        python_path = kernel_python_path(root, request["view"])
        record = execute_notebook(str(root), request["student"], request["stage"], options, str(python_path))
        os.write(records, (json.dumps(record) + "\n").encode())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
