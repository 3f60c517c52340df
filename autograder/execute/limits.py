"""Caps on the memory and the number of processes of a kernel's whole process tree, kept by a watchdog.

A limit on one process (``RLIMIT_AS``) misses what matters: a notebook can start children that each stay under
it while they hold far more together, and the address space of a process that imported torch is about 3 GiB
before it holds anything. So :class:`TreeWatchdog`, a daemon thread of the grading process, looks at every process
of a kernel's tree every ``interval`` seconds (0.1 s) and kills the whole tree when

- its processes hold more than ``memory_gb`` GiB together: their resident set sizes (``/proc/N/statm``) summed,
  and only when that sum passes the cap, their proportional set sizes (``Pss`` in ``/proc/N/smaps_rollup``: a page
  that k processes share counts 1/k in each, so what a forked child shares with its parent counts once);
- or more than ``max_processes`` processes run at once.

It records a one-line reason (:attr:`TreeWatchdog.reason`) before it kills. Between two looks a tree may pass a
cap for up to ``interval``. Not counted: memory held outside the processes (the sandbox's tmpfs folders, capped
by their own sizes, see :mod:`autograder.execute.sandbox`; GPU memory) and threads.

Which tree: for a sandboxed kernel (:class:`autograder.execute.sandbox.SandboxedKernelManager`) every process of its PID
namespace, listed in the sandbox's own ``/proc`` (opened once, so a PID used again on the host can never point the
watchdog elsewhere) and killed all at once through its PID 1. For a kernel without the sandbox
(:class:`LimitedKernelManager`, ``--no-sandbox``, trusted notebooks only) the kernel process and its descendants,
killed one by one: a process that left the tree (a double fork) is neither counted nor killed.
"""

from __future__ import annotations

import logging
import os
import signal
import threading

import psutil
from jupyter_client.asynchronous import AsyncKernelClient
from jupyter_client.manager import AsyncKernelManager
from traitlets import DottedObjectName, Float, Integer, Type

from .client import PromptKernelClient

#: seconds between two looks at a tree
INTERVAL = 0.1
GIB = 2**30
_PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")
_log = logging.getLogger(__name__)


def _read(proc: int, path: str) -> bytes:
    """The start (8 KiB) of the file ``path`` of the /proc folder open as ``proc``."""
    handle = os.open(path, os.O_RDONLY, dir_fd=proc)
    try:
        return os.read(handle, 8192)
    finally:
        os.close(handle)


def _rss(proc: int, pid: int) -> int:
    """The resident set size of ``pid`` in bytes (0 when it is gone)."""
    try:
        return int(_read(proc, f"{pid}/statm").split()[1]) * _PAGE_BYTES
    except (OSError, IndexError, ValueError):
        return 0


def _pss(proc: int, pid: int) -> int:
    """The proportional set size of ``pid`` in bytes; its resident set size where ``smaps_rollup`` cannot be read
    (a process not open to this user, a Linux before 4.14) or holds none (a zombie)."""
    try:
        for line in _read(proc, f"{pid}/smaps_rollup").splitlines():
            if line.startswith(b"Pss:"):
                return int(line.split()[1]) * 1024  # kB
    except (OSError, IndexError, ValueError):
        pass
    return _rss(proc, pid)


def tree_bytes(proc: int, pids: list[int], threshold: int) -> int:
    """The memory ``pids`` hold together, in bytes: their resident set sizes summed or, when that sum passes
    ``threshold`` bytes, their proportional set sizes summed (each shared page counted once)."""
    resident = sum(_rss(proc, pid) for pid in pids)
    return resident if resident <= threshold else sum(_pss(proc, pid) for pid in pids)


class _Namespace:
    """Every process of a sandbox's PID namespace, in its /proc open as ``proc``."""

    def __init__(self, proc: int):
        self.proc = proc

    def pids(self) -> list[int]:
        return [int(name) for name in os.listdir(self.proc) if name.isdigit()]

    def kill(self) -> None:
        """SIGKILL to the namespace's PID 1: the kernel ends every other process of the namespace with it."""
        try:
            init = os.open("1", os.O_RDONLY | os.O_DIRECTORY, dir_fd=self.proc)  # a pidfd of that process
        except FileNotFoundError:  # already gone
            return
        try:
            signal.pidfd_send_signal(init, signal.SIGKILL)
        except ProcessLookupError:
            pass
        finally:
            os.close(init)


class _HostTree:
    """A process of this machine and its descendants (psutil, which checks a PID was not used again)."""

    def __init__(self, pid: int):
        self._root = psutil.Process(pid)
        self.proc = os.open("/proc", os.O_RDONLY | os.O_DIRECTORY)
        self._seen: list[psutil.Process] = []

    def pids(self) -> list[int]:
        try:
            alive = self._root.is_running() and self._root.status() != psutil.STATUS_ZOMBIE
            self._seen = [self._root, *self._root.children(recursive=True)] if alive else []
        except psutil.NoSuchProcess:
            self._seen = []
        return [process.pid for process in self._seen]

    def kill(self) -> None:
        for process in self._seen:
            try:
                process.kill()
            except psutil.NoSuchProcess:
                pass


class TreeWatchdog:
    """A daemon thread that kills ``tree`` when it passes a cap (see the module's docstring), started at once.

    ``memory_gb``: GiB the tree's processes may hold together; ``max_processes``: processes it may run at once
    (0: no cap). The thread ends when the tree is gone, after a kill, or at :meth:`stop`; it closes the tree's
    /proc folder then, and never raises (a failure is logged and ends the watch).
    """

    def __init__(self, tree, *, memory_gb: float = 0.0, max_processes: int = 0, interval: float = INTERVAL):
        #: why the tree was killed (one line), or None
        self.reason: str | None = None
        self._tree, self._memory_gb, self._max_processes = tree, memory_gb, max_processes
        self._cap = int(memory_gb * GIB)
        self._interval = interval
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="tree-watchdog", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """End the watch (within ``interval``; the tree is left as it is)."""
        self._stopped.set()

    def over(self, pids: list[int]) -> str | None:
        """Why the processes ``pids`` are over a cap (one line), or None."""
        if self._max_processes and len(pids) > self._max_processes:
            return (f"the notebook ran {len(pids)} processes at once, over the cap of {self._max_processes} "
                    "processes (--max-processes)")
        if self._cap:
            held = tree_bytes(self._tree.proc, pids, self._cap)
            if held > self._cap:
                return (f"the notebook's processes held {held / GIB:.2f} GiB together, over the "
                        f"{self._memory_gb:g} GiB memory cap (--memory-gb)")
        return None

    def _watch(self) -> None:
        try:
            while not self._stopped.wait(self._interval):
                pids = self._tree.pids()
                if not pids:  # the tree is gone
                    return
                self.reason = self.over(pids)
                if self.reason:
                    self._tree.kill()
                    return
        except Exception:  # noqa: BLE001 - never into the grader; the kernel runs on without the caps
            _log.exception("the watchdog of a kernel's processes failed; its caps no longer hold")
        finally:
            os.close(self._tree.proc)


def sandbox_watchdog(kernel_pid: int, **caps) -> TreeWatchdog:
    """A :class:`TreeWatchdog` of the sandbox that the kernel process ``kernel_pid`` (a host PID) runs in."""
    return TreeWatchdog(_Namespace(os.open(f"/proc/{kernel_pid}/root/proc", os.O_RDONLY | os.O_DIRECTORY)), **caps)


class LimitedKernelManager(AsyncKernelManager):
    """An ``AsyncKernelManager`` whose kernel's process tree is kept under ``memory_gb`` and ``max_processes`` by a
    :class:`TreeWatchdog` from the kernel's start to its end; :attr:`limit_exceeded` says why it killed the kernel.

    This class watches the kernel process and its descendants (``--no-sandbox``); the sandbox's manager watches
    its whole PID namespace instead (:meth:`_watchdog_of_kernel`). Its clients are ready as soon as the kernel is
    (:class:`autograder.execute.client.PromptKernelClient`).
    """

    client_class = DottedObjectName("autograder.execute.client.PromptKernelClient")
    client_factory = Type(PromptKernelClient, klass=AsyncKernelClient)
    memory_gb = Float(0.0, help="GiB the kernel's processes may hold together (0: no cap).").tag(config=True)
    max_processes = Integer(0, help="Processes the kernel may run at once, itself included (0: no cap).").tag(
        config=True)

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._watchdog: TreeWatchdog | None = None

    @property
    def limit_exceeded(self) -> str | None:
        """Why the watchdog killed the kernel (one line), or None."""
        return self._watchdog.reason if self._watchdog is not None else None

    def _watchdog_of_kernel(self, caps: dict) -> TreeWatchdog:
        return TreeWatchdog(_HostTree(self.provisioner.process.pid), **caps)

    async def _async_post_start_kernel(self, **kw) -> None:
        await super()._async_post_start_kernel(**kw)
        self._stop_watchdog()
        self._watchdog = None
        if not (self.memory_gb or self.max_processes):
            return
        try:
            self._watchdog = self._watchdog_of_kernel({"memory_gb": self.memory_gb,
                                                       "max_processes": self.max_processes})
        except (OSError, psutil.Error) as error:  # the kernel is already gone: the client finds it dead
            self.log.warning("the kernel's processes cannot be watched: %s", error)

    def _stop_watchdog(self) -> None:
        if self._watchdog is not None:
            self._watchdog.stop()

    async def _async_kill_kernel(self, restart: bool = False) -> None:
        self._stop_watchdog()
        await super()._async_kill_kernel(restart=restart)

    async def _async_cleanup_resources(self, restart: bool = False) -> None:
        self._stop_watchdog()
        await super()._async_cleanup_resources(restart=restart)

    cleanup_resources = _async_cleanup_resources
