"""Sandboxed kernels started and warmed before their notebook arrives: one spare kernel per worker process.

A notebook's fixed cost is mostly its kernel's: the sandbox and the Python start-up, then importing torch,
matplotlib and ``course_lib``'s checks (about 3 s of CPU on this project's machines). So while one notebook runs,
its worker (a ``--jobs`` process, a Dask worker's grading child) starts the next notebook's kernel and imports in
it what that notebook will import (:func:`autograder.execute.notebook.kernel_imports`; :data:`WARM_UP_MODULES`
when that is not known), with a *silent* request (no execution count, no history, no names bound in the notebook's
namespace).

A worker's first spare starts with the worker (:func:`start_first`), for its first notebook. Then each
spare is started with the settings of the notebook the worker will most likely run next (its stage's
``course_lib`` view: the tasks go stage after stage, so it is the stage of the task ``jobs`` places further on), and
none when no notebook is left for it. A warm kernel serves exactly one notebook and is never reused: :func:`take`
hands the spare out at most once, and the notebook's executor shuts it down after its last cell
(:class:`autograder.execute.preprocessors.GuardedExecute`).
It runs in a sandbox of its own like any kernel (:mod:`autograder.execute.sandbox`): its working folder is the
in-sandbox path :data:`WORKDIR`, a tmpfs that starts with the caches (``seed``) and gets the notebook's other files
(:func:`~autograder.execute.sandbox.workdir_copies`: never a notebook) when it is handed out, before the
notebook's first cell, while only this module's code has run in it. A spare started for other settings (another
stage's ``course_lib`` view, other caps) is shut down unused, unless they are those of the notebook expected next:
workers take the next task as they become free, so at a change of stage one worker may run the notebook another
warmed for.

Kernels are started from one long-lived thread of the worker, with an event loop of its own: bwrap's
``--die-with-parent`` follows the *thread* that started it, so a kernel started from a short-lived thread would
die with that thread. A spare still starting when its notebook arrives is waited for; one that failed to start,
or died while it waited, is replaced by a kernel started the usual way (:func:`take` returns None).
"""

from __future__ import annotations

import asyncio
import atexit
import json
import logging
import os
import shutil
import threading
from concurrent.futures import Future

from .sandbox import SandboxedKernelManager, workdir_copies

#: the working folder (and home) of a warm kernel, inside its sandbox
WORKDIR = "/grading"
#: what a warm kernel imports when its notebook's own imports are not known (a Dask worker's grading child)
WARM_UP_MODULES = ("numpy", "matplotlib.pyplot", "torch", "torch._dynamo", "course_lib.checks.protocol")


def warm_up_code(modules) -> str:
    """The silent request a warm kernel runs before its notebook arrives: import ``modules`` (one that fails to
    import is left for the notebook to report), in a namespace of its own, so no name is bound in the notebook's."""
    loop = "for name in modules:\n    try:\n        __import__(name)\n    except Exception:\n        pass\n"
    return f"exec({loop!r}, {{'modules': {tuple(modules)!r}}})"


#: seconds a kernel has to start, and its warm-up to finish
START_TIMEOUT = 120.0
_log = logging.getLogger(__name__)


class _Starter:
    """One daemon thread running an event loop that lives as long as the worker process."""

    def __init__(self):
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, name="warm-kernels", daemon=True).start()

    def submit(self, coroutine) -> Future:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop)


class _Spare:
    """A kernel being started (``future``: its manager, or the error) for the settings ``key``."""

    def __init__(self, starter: _Starter, key: str, config, kernel_name: str, modules):
        self.key = key
        self.future = starter.submit(_start_warm(config, kernel_name, modules))


_starter: _Starter | None = None
_spare: _Spare | None = None


def settings_key(config, kernel_name: str) -> str:
    """What a kernel's start depends on, as one string: the kernel name and the kernel managers' settings of
    ``config`` (a traitlets ``Config``: the ``course_lib`` view on the path, the caps, the caches, the data)."""
    sections = {name: dict(config[name]) for name in ("LimitedKernelManager", "SandboxedKernelManager")
                if name in config}
    return json.dumps({"kernel": kernel_name, **sections}, sort_keys=True, default=str)


async def _start_warm(config, kernel_name: str, modules) -> SandboxedKernelManager:
    """A sandboxed kernel started with ``config`` in :data:`WORKDIR`, with ``modules`` imported in it
    (:func:`warm_up_code`)."""
    manager = SandboxedKernelManager(config=config, kernel_name=kernel_name, workdir=WORKDIR)
    await manager.start_kernel()
    client = manager.client()
    try:
        client.start_channels()
        await client.wait_for_ready(timeout=START_TIMEOUT)
        reply = await client.execute_interactive(warm_up_code(modules), silent=True, store_history=False,
                                                 timeout=START_TIMEOUT, output_hook=lambda message: None)
        if reply["content"]["status"] != "ok":
            raise RuntimeError(f"the warm-up failed: {reply['content'].get('ename')}")
    except BaseException:
        await _shut_down(manager)
        raise
    finally:
        client.stop_channels()
    return manager


async def _shut_down(manager: SandboxedKernelManager) -> None:
    try:
        await manager.shutdown_kernel(now=True)
    finally:
        await manager.cleanup_resources()


def _discard(spare: _Spare) -> None:
    """Shut the kernel of ``spare`` down (in the background; a start that failed is only logged)."""
    def shut_down(future: Future) -> None:
        if future.exception() is None:
            _starter.submit(_shut_down(future.result()))

    spare.future.add_done_callback(shut_down)


def close() -> None:
    """At the worker's exit: the spare's kernel is shut down and its files removed."""
    if _spare is None:
        return
    try:
        _starter.submit(_shut_down(_spare.future.result(timeout=START_TIMEOUT))).result(timeout=30)
    except Exception:  # noqa: BLE001 - it did not start; the sandbox dies with this process anyway
        pass


def _ensure_starter() -> _Starter:
    global _starter
    if _starter is None:
        _starter = _Starter()
        atexit.register(close)
    return _starter


def start_first(config, kernel_name: str, modules=WARM_UP_MODULES) -> None:
    """At a worker's start: the spare for its first notebook (settings ``config``, importing ``modules``) starts
    while the worker imports what grading needs and prepares that notebook; nothing when a spare exists."""
    global _spare
    if _spare is None:
        _spare = _Spare(_ensure_starter(), settings_key(config, kernel_name), config, kernel_name, modules)


def take(config, kernel_name: str, folder: str, next_config=None,
         next_modules=WARM_UP_MODULES) -> SandboxedKernelManager | None:
    """The spare kernel, if it was started with these settings (``config``) and is alive, with the files of
    ``folder`` (the notebook's working folder on this machine) copied into its working folder; None otherwise.
    Either way the spare is no longer the spare (it is handed out once), and a new spare starts with the settings
    of the notebook expected next, ``next_config`` (None: no spare, none is expected), importing ``next_modules``
    (the modules that notebook's kernel will import); except that a spare of other
    settings than ``config`` but those of ``next_config`` stays the spare (another worker took the notebook it was
    started for, and the one after this is likely of its settings).

    The caller owns the kernel it gets and shuts it down after its one notebook.
    """
    global _spare
    starter = _ensure_starter()
    key, spare = settings_key(config, kernel_name), _spare
    next_key = None if next_config is None else settings_key(next_config, kernel_name)
    if spare is not None and spare.key != key and spare.key == next_key:
        return None  # another worker took the notebook it was started for: it stays, for the next one
    _spare = None if next_config is None else _Spare(starter, next_key, next_config, kernel_name, next_modules)
    if spare is None:
        return None
    if spare.key != key:
        _discard(spare)
        return None
    try:
        manager = spare.future.result(timeout=START_TIMEOUT)
    except Exception as error:  # noqa: BLE001 - a kernel started the usual way takes its place
        _log.warning("a warm kernel did not start (%s: %s); starting one the usual way", type(error).__name__, error)
        return None
    try:
        if not manager.provisioner or manager.provisioner.process.poll() is not None:
            raise RuntimeError("the warm kernel died while it waited")
        hand_over(manager, folder)
    except Exception as error:  # noqa: BLE001
        _log.warning("a warm kernel could not be used (%s: %s)", type(error).__name__, error)
        starter.submit(_shut_down(manager))
        return None
    return manager


def hand_over(manager: SandboxedKernelManager, folder: str) -> None:
    """Copy the files of ``folder`` (:func:`workdir_copies`: no notebook, no link) into the working folder of
    ``manager``'s running kernel, through the kernel's root (``/proc/<pid>/root``); only this module's warm-up has
    run in that kernel, so nothing in its folder can point elsewhere."""
    root = f"/proc/{manager.kernel_pid}/root{WORKDIR}"
    for source, target in workdir_copies(folder):
        destination = os.path.join(root, target)
        os.makedirs(os.path.dirname(destination), exist_ok=True)
        shutil.copyfile(source, destination)
