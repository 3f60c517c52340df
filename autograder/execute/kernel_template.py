"""A kernel template: a Python process in a sandbox that imports torch and the rest once, then forks one kernel per
request, each in fresh namespaces of its own (:mod:`autograder.execute.templates` starts it and asks).

Run inside the sandbox as ``python -m autograder.execute.kernel_template SETTINGS`` (JSON: ``modules`` to import,
``workdir``, ``disk_mb``, ``tmp_mb``, ``copies``: ``[source, target]`` pairs copied into its working folder and
each kernel's), with ``CAP_SYS_ADMIN`` and ``CAP_SETPCAP`` in its user namespace and as its sandbox's PID 1. It runs no
code of a notebook: only its own imports. It reads one request per line on stdin (a kernel's connection file, JSON)
and answers each on stdout with the PID of the kernel's sandbox process in its own PID namespace (``{"pid": N}``) or
why it could not fork (``{"error": ...}``); its first line says it is ready (``{"ready": true}``). It forks a kernel
only once the last one's sandbox has ended: two kernels of one template could read each other's memory.

For each request (:func:`_sandbox`), a child of the template:

1. leaves the template's mount, PID, IPC, network and UTS namespaces for new ones;
2. mounts fresh tmpfs folders on the working folder (``disk_mb``, with the ``copies``), ``/tmp`` and ``/dev/shm``
   (``tmp_mb`` each) and ``/run/kernel`` (the connection file and the kernel's sockets): nothing the template or an
   earlier kernel wrote there is visible; the sandbox's read-only binds below them (a course folder under ``/tmp``)
   are bound again, still read-only;
3. forks the PID 1 of the new PID namespace (:func:`_init`), which forks the kernel and reaps orphans until the
   kernel exits; when it exits every process of the namespace ends with it;
4. the kernel (:func:`_kernel`) drops every capability (effective, permitted, inheritable, ambient and bounding
   sets), sets ``no_new_privs``, starts a session of its own, closes every inherited file but stdout and stderr, and
   runs ipykernel in this process, with what the template imported already imported.

The template makes itself non-dumpable and keeps its capabilities, so a kernel (none, same user) can neither read
nor write its memory through ``/proc``; it cannot signal it either, its PID namespace being a child of the
template's. Its ``/proc`` is the template's (a new one cannot be mounted under the sandbox's covered ``/proc``), so
it sees that PIDs 1 (the template) and its parent exist, no more.
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import stat
import sys
import time

_libc = ctypes.CDLL(None, use_errno=True)
_NEW_NAMESPACES = 0x00020000 | 0x20000000 | 0x08000000 | 0x40000000 | 0x04000000  # mount, PID, IPC, net, UTS
_MS_NOSUID, _MS_NODEV, _MS_BIND, _MS_REC, _MS_PRIVATE = 0x2, 0x4, 0x1000, 0x4000, 0x40000
_PR_SET_DUMPABLE, _PR_CAPBSET_DROP, _PR_SET_NO_NEW_PRIVS, _PR_CAP_AMBIENT = 4, 24, 38, 47
_PR_CAP_AMBIENT_CLEAR_ALL, _CAP_LAST = 4, 63
_KERNEL_DIR = "/run/kernel"


def _check(result: int, what: str) -> None:
    if result != 0:
        error = ctypes.get_errno()
        raise OSError(error, f"{what}: {os.strerror(error)}")


def _mounts_below(folder: str) -> list[str]:
    """The mount points strictly below ``folder`` (the sandbox's read-only binds of host folders that lie there, such
    as a course under ``/tmp``), parents first."""
    found = []
    with open("/proc/self/mountinfo") as mounts:
        for line in mounts:
            point = line.split()[4].encode().decode("unicode_escape")  # octal escapes such as \040 for a space
            if point.startswith(folder.rstrip("/") + "/"):
                found.append(point)
    return sorted(set(found), key=lambda path: path.count("/"))


def _mount_tmpfs(target: str, megabytes: int) -> None:
    """A fresh tmpfs of ``megabytes`` MiB on ``target``, with the read-only binds that were below it bound again at
    the same places (through file descriptors taken before they were covered; they stay read-only)."""
    below = [(path, os.open(path, os.O_PATH)) for path in _mounts_below(target)]
    data = f"size={int(megabytes) * 2**20},mode=0755".encode()
    _check(_libc.mount(b"tmpfs", target.encode(), b"tmpfs", _MS_NOSUID | _MS_NODEV, data), f"mount {target}")
    for path, handle in below:
        if stat.S_ISDIR(os.fstat(handle).st_mode):
            os.makedirs(path, exist_ok=True)
        else:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            open(path, "a").close()
        _check(_libc.mount(f"/proc/self/fd/{handle}".encode(), path.encode(), None, _MS_BIND | _MS_REC, None),
               f"binding {path} again")
        os.close(handle)


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


def drop_privileges() -> None:
    """No capability left in any set, none to gain by ``execve`` (``no_new_privs``)."""
    for capability in range(_CAP_LAST + 1):
        if _libc.prctl(_PR_CAPBSET_DROP, capability, 0, 0, 0) != 0 and ctypes.get_errno() != 22:  # EINVAL: no such
            _check(-1, f"dropping capability {capability} from the bounding set")
    _check(_libc.prctl(_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0), "clearing the ambient capabilities")
    _check(_libc.capset(ctypes.byref(_CapHeader(0x20080522, 0)), (_CapData * 2)()), "capset")  # version 3
    _check(_libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")


def _kernel(settings: dict) -> None:
    """In the new PID namespace: become the kernel (never returns). Dumpable again (the template is not), so that
    its own ``/proc`` files are its user's; the processes above it stay out of its reach."""
    _check(_libc.prctl(_PR_SET_DUMPABLE, 1, 0, 0, 0), "making the kernel dumpable")
    drop_privileges()
    os.setsid()
    os.chdir(settings["workdir"])
    os.closerange(3, os.sysconf("SC_OPEN_MAX"))
    from ipykernel.kernelapp import IPKernelApp

    app = IPKernelApp.instance()
    app.initialize(["-f", f"{_KERNEL_DIR}/connection.json"])
    app.start()
    os._exit(0)


def _init(settings: dict) -> None:
    """PID 1 of the kernel's namespace: fork the kernel, reap every process that ends, exit with the kernel."""
    kernel = os.fork()
    if kernel == 0:
        _kernel(settings)
    drop_privileges()
    while True:
        pid, status = os.wait()
        if pid == kernel:
            os._exit(os.waitstatus_to_exitcode(status) & 0xFF)


def _copy(settings: dict) -> None:
    """Copy ``settings["copies"]`` (the caches: matplotlib's font list, course_lib's statistics) into the working
    folder."""
    for source, target in settings["copies"]:
        target = os.path.join(settings["workdir"], target)
        if os.path.isdir(source):
            shutil.copytree(source, target, symlinks=True, dirs_exist_ok=True)
        else:
            os.makedirs(os.path.dirname(target), exist_ok=True)
            shutil.copy2(source, target)


def _sandbox(settings: dict, connection: str, replies) -> None:
    """In a child of the template: the kernel's namespaces and folders, then its PID 1 (never returns)."""
    replies.close()
    _check(_libc.unshare(_NEW_NAMESPACES), "unshare")
    _check(_libc.mount(b"none", b"/", None, _MS_REC | _MS_PRIVATE, None), "making the mounts private")
    _mount_tmpfs(settings["workdir"], settings["disk_mb"])
    for folder in ("/tmp", "/dev/shm"):
        _mount_tmpfs(folder, settings["tmp_mb"])
    _mount_tmpfs(_KERNEL_DIR, 4)
    with open(f"{_KERNEL_DIR}/connection.json", "w") as handle:
        handle.write(connection)
    _copy(settings)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)  # the kernel never reads the template's requests
    init = os.fork()
    if init == 0:
        _init(settings)
    os._exit(os.waitstatus_to_exitcode(os.waitpid(init, 0)[1]) & 0xFF)


def _ended(sandbox: int | None, seconds: float = 5.0) -> bool:
    """Whether the sandbox process ``sandbox`` of the last kernel (None: there is none) has ended, waiting up to
    ``seconds`` for it (its kernel was shut down just before: its PID 1 is ending)."""
    deadline = time.monotonic() + seconds
    while sandbox is not None:
        if os.waitpid(sandbox, os.WNOHANG)[0] == sandbox:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


def _reply(replies, message: dict) -> None:
    """Send ``message`` to the host; end quietly when the host has closed the pipe (it shut the template down)."""
    try:
        print(json.dumps(message), file=replies, flush=True)
    except BrokenPipeError:
        os._exit(0)


def serve(settings: dict) -> None:
    """Import ``settings["modules"]``, say so, then fork a kernel for each request line until stdin closes."""
    _check(_libc.prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0), "making the template non-dumpable")
    replies = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # what the imports and the kernels print goes to the log, never into the replies
    _copy(settings)  # its imports read the caches too (matplotlib would build its font list again)
    for name in settings["modules"]:
        try:
            __import__(name)
        except Exception:  # noqa: BLE001 - left for the notebook to report
            pass
    import ipykernel.kernelapp  # noqa: F401 - what every kernel runs

    _reply(replies, {"ready": True})
    last = None
    for line in sys.stdin:
        if not _ended(last):  # never two kernels at once: each could read the other's memory
            _reply(replies, {"error": "the template's last kernel is still running"})
            continue
        try:
            last = pid = os.fork()
        except OSError as error:
            last = None
            _reply(replies, {"error": str(error)})
            continue
        if pid == 0:
            try:
                _sandbox(settings, line, replies)
            except BaseException as error:  # noqa: BLE001 - said on the log; the host sees the sandbox end
                print(f"a kernel's sandbox could not be made: {error!r}", file=sys.stderr, flush=True)
            os._exit(1)
        _reply(replies, {"pid": pid})


if __name__ == "__main__":
    serve(json.loads(sys.argv[1]))
