"""Kernels forked from a kernel template: a sandboxed Python that imported torch once (host side).

A :class:`Template` runs :mod:`autograder.execute.kernel_template` in a sandbox of its own
(:func:`autograder.execute.sandbox.bwrap_command` with ``template=True``), with the settings of a kernel manager
(``course_lib`` view, data, caches, environment, folder sizes), and imports the modules its kernels will need. Each
:meth:`Template.fork` then makes a kernel in a few tenths of a second instead of seconds of imports: a fork of the
template in new namespaces, with fresh folders and no capabilities. A :class:`TemplateKernelManager` drives such a
kernel as :class:`~autograder.execute.sandbox.SandboxedKernelManager` drives one started by bwrap: connection
through the kernel's root, interrupts, the caps' watchdog (over the kernel's own PID namespace), kill.

A template runs no notebook code. Its kernels live in PID namespaces nested in its own, so they end with it: a
template that is no longer wanted (:meth:`Template.retire`) ends once its last kernel is shut down.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from .limits import TreeWatchdog
from .sandbox import (COPY_DIR, ENV_ALLOWED, KERNEL_DIR, SandboxedKernelManager, _children, bwrap_command,
                      read_bwrap_info, write_identity)

#: the working folder (and home) of a forked kernel, inside its sandbox
WORKDIR = "/grading"
#: seconds a template has to import its modules, and a fork to show its kernel process
START_TIMEOUT = 120.0
FORK_TIMEOUT = 30.0
_NATIVE_ARGV = ["-m", "ipykernel_launcher", "-f", "{connection_file}"]


class TemplateUnavailableError(RuntimeError):
    """No kernel can be forked from this template (the message says why)."""


def native_kernel(manager: SandboxedKernelManager) -> bool:
    """Whether the kernel spec of ``manager`` runs this Python's ipykernel (which a template's kernels run): its
    command is this Python, or ``python`` or ``python3``, which jupyter_client replaces with this Python."""
    argv = manager.kernel_spec.argv
    if argv[1:] != _NATIVE_ARGV:
        return False
    if argv[0] in {"python", f"python{sys.version_info[0]}", "python{}.{}".format(*sys.version_info[:2])}:
        return True
    command = shutil.which(argv[0])
    return command is not None and os.path.realpath(command) == os.path.realpath(sys.executable)


class _Lines:
    """Lines read from a pipe, each within a deadline."""

    def __init__(self, fd: int):
        self.fd, self.buffer = fd, b""

    def read(self, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.fd], [], [], left)[0]:
                raise TemplateUnavailableError(f"the kernel template did not answer within {timeout:g} s")
            chunk = os.read(self.fd, 65536)
            if not chunk:
                raise TemplateUnavailableError("the kernel template ended (its error is in the worker's log)")
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        return json.loads(line)


def _namespace_pid(pid: int) -> int | None:
    """The PID that the host process ``pid`` has in the PID namespace one level below the host's (None: gone)."""
    try:
        with open(f"/proc/{pid}/status") as status:
            fields = next(line for line in status if line.startswith("NSpid:")).split()[1:]
    except (OSError, StopIteration):
        return None
    return int(fields[1]) if len(fields) > 1 else None


class Template:
    """A kernel template started with the kernel settings of ``config`` (a traitlets ``Config``) for kernel
    ``kernel_name``, importing ``modules``; start it from a thread that lives as long as its kernels (bwrap's
    ``--die-with-parent`` follows the starting thread). Starting it does not wait for its imports; the first
    :meth:`fork` does."""

    def __init__(self, config, kernel_name: str, modules):
        settings = SandboxedKernelManager(config=config, kernel_name=kernel_name)
        if not native_kernel(settings):
            raise TemplateUnavailableError(f"kernel {kernel_name!r} is not this Python's ipykernel")
        self.config, self.kernel_name = config, kernel_name
        self._kernels, self._retired, self._lock = 0, False, threading.Lock()
        self._runtime = tempfile.mkdtemp(prefix="kernel-template-")
        write_identity(self._runtime, WORKDIR)
        copies = [(source, target) for source, target in settings.seed.items() if os.path.exists(source)]
        program = {"modules": list(modules), "workdir": WORKDIR, "disk_mb": settings.disk_mb,
                   "tmp_mb": settings.tmp_mb, "copies": [(f"{COPY_DIR}/{number}", target)
                                                         for number, (_, target) in enumerate(copies)]}
        env = {name: os.environ[name] for name in ENV_ALLOWED if name in os.environ}
        env.update({"JPY_PARENT_PID": "1", **settings.env})
        info_read, info_write = os.pipe()
        try:
            command = bwrap_command([sys.executable, "-m", "autograder.execute.kernel_template", json.dumps(program)],
                                    WORKDIR, python_path=settings.python_path, read_only=settings.read_only, env=env,
                                    disk_mb=settings.disk_mb, tmp_mb=settings.tmp_mb, kernel_dir=self._runtime,
                                    copies=copies, info_fd=info_write, template=True)
            self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                            pass_fds=(info_write,), cwd=self._runtime)
        finally:
            os.close(info_write)
        self._replies, self._ready = _Lines(self.process.stdout.fileno()), False
        try:
            self.pid = int(read_bwrap_info(info_read, START_TIMEOUT)["child-pid"])
        except BaseException:
            self.close()
            raise
        finally:
            os.close(info_read)

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def fork(self, connection: str) -> tuple[int, int]:
        """A new kernel with the connection file ``connection`` (JSON text): the host PIDs of its sandbox's PID 1 and
        of the kernel process."""
        with self._lock:
            if self._retired or not self.alive:
                raise TemplateUnavailableError("the kernel template is gone")
            if not self._ready:  # its first line, {"ready": true}, comes once its imports are done
                self._ready = bool(self._replies.read(START_TIMEOUT).get("ready"))
            self.process.stdin.write(json.dumps(json.loads(connection)).encode() + b"\n")
            self.process.stdin.flush()
            reply = self._replies.read(FORK_TIMEOUT)
            if "error" in reply:
                raise TemplateUnavailableError(f"the kernel template could not fork: {reply['error']}")
            self._kernels += 1
        try:
            sandbox = self._wait_for(lambda: next((pid for _, pid in _children(self.pid)
                                                   if _namespace_pid(pid) == reply["pid"]), None))
            init = self._wait_for(lambda: next((pid for _, pid in _children(sandbox)), None))
            return init, self._wait_for(lambda: next((pid for _, pid in _children(init)), None))
        except BaseException:
            self.release()
            raise

    @staticmethod
    def _wait_for(find):
        deadline = time.monotonic() + FORK_TIMEOUT
        while (found := find()) is None:
            if time.monotonic() > deadline:
                raise TemplateUnavailableError("a kernel forked from the template did not start (see the worker's log)")
            time.sleep(0.002)
        return found

    def release(self) -> None:
        """One of its kernels was shut down; a retired template with no kernel left ends."""
        with self._lock:
            self._kernels -= 1
            done = self._retired and self._kernels <= 0
        if done:
            self.close()

    def retire(self) -> None:
        """No more kernels from this template: it ends now, or with its last kernel."""
        with self._lock:
            self._retired = True
            done = self._kernels <= 0
        if done:
            self.close()

    def close(self) -> None:
        """End the template (and every kernel still running from it) and remove its files."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        for pipe in (self.process.stdin, self.process.stdout):
            pipe.close()
        shutil.rmtree(self._runtime, ignore_errors=True)


class ForeignProcess:
    """What jupyter_client asks of a kernel's ``Popen``, for a process that is not a child of this one (the PID 1
    of a forked kernel's sandbox): watched and signalled through a pidfd, so a PID used again is never signalled."""

    stdin = stdout = stderr = None

    def __init__(self, pid: int):
        self.pid, self.returncode = pid, None
        self._fd = os.pidfd_open(pid)

    def poll(self) -> int | None:
        if self.returncode is None and select.select([self._fd], [], [], 0)[0]:  # readable: it ended
            self.returncode = -signal.SIGKILL  # its status belongs to its parent, the template's
        return self.returncode

    def __del__(self):
        if getattr(self, "_fd", None) is not None:
            os.close(self._fd)  # never earlier: a watchdog thread may be signalling through it

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(str(self.pid), timeout)
            select.select([self._fd], [], [], 0.1)
        return self.returncode

    def send_signal(self, signum: int) -> None:
        if self.poll() is None:
            try:
                signal.pidfd_send_signal(self._fd, signum)
            except ProcessLookupError:
                pass

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)


class _KernelNamespace:
    """Every process of a forked kernel's PID namespace, in the template's ``/proc`` (open as ``proc``): those whose
    PID namespace is the kernel's (the template and the sandbox process above it are not)."""

    def __init__(self, proc: int, kernel_pid: int, init: ForeignProcess):
        self.proc, self._init = proc, init
        self._namespace = os.stat(f"/proc/{kernel_pid}/ns/pid").st_ino

    def pids(self) -> list[int]:
        found = []
        for name in os.listdir(self.proc):
            try:
                if name.isdigit() and os.stat(f"{name}/ns/pid", dir_fd=self.proc).st_ino == self._namespace:
                    found.append(int(name))
            except OSError:  # ended meanwhile
                continue
        return found

    def kill(self) -> None:
        self._init.kill()


class TemplateKernelManager(SandboxedKernelManager):
    """A :class:`SandboxedKernelManager` whose kernel is forked from ``template`` rather than started by bwrap;
    shutting it down tells the template (:meth:`Template.release`)."""

    def __init__(self, template: Template, **kwargs):
        super().__init__(config=template.config, kernel_name=template.kernel_name, **kwargs)
        self.template = template
        self._forked = False

    async def _async_launch_kernel(self, kernel_cmd, **kw):
        init, kernel = self.template.fork(Path(self.connection_file).read_text())
        self._forked = True
        self.provisioner.process, self.provisioner.pid, self.provisioner.pgid = ForeignProcess(init), init, None
        self._sandbox_pid, self._kernel_pid = init, kernel
        self.ip = f"/proc/{kernel}/root{KERNEL_DIR}/ipc"

    def _watchdog_of_kernel(self, caps: dict) -> TreeWatchdog:
        proc = os.open(f"/proc/{self._kernel_pid}/root/proc", os.O_RDONLY | os.O_DIRECTORY)
        return TreeWatchdog(_KernelNamespace(proc, self._kernel_pid, self.provisioner.process), **caps)

    async def _async_cleanup_resources(self, restart: bool = False) -> None:
        await super()._async_cleanup_resources(restart=restart)
        if self._forked:
            self._forked = False
            self.template.release()

    cleanup_resources = _async_cleanup_resources
