"""Kernels ready before their notebook arrives: forked from a kernel template that imported torch once per worker.

A notebook's fixed cost was mostly its kernel's: the sandbox and the Python start-up, then importing torch,
matplotlib and ``course_lib``'s checks (3.5 to 4.3 s of CPU per kernel on this project's machines). So a worker (a
``--jobs`` process, a Dask worker's grading child) keeps one kernel template (:mod:`autograder.execute.templates`):
a sandboxed Python that imported, once, what the notebooks of its settings will import
(:func:`autograder.execute.notebook.kernel_imports`; :data:`WARM_UP_MODULES` when that is not known), and that forks
each notebook's kernel in a few tenths of a second, in namespaces and fresh folders of its own, with no capability.
The template runs no notebook code; each kernel serves exactly one notebook and is never reused: :func:`take` forks
one per call, and the notebook's executor shuts it down after its last cell
(:class:`autograder.execute.preprocessors.GuardedExecute`).

A worker's first template starts with the worker (:func:`start_first`), for its first notebook. A worker then holds
two templates: that of the stage it runs (its ``course_lib`` view, the caps, the caches) and that of the next stage
it is expected to run (tasks go stage after stage; :func:`autograder.execute.pool.next_views`), which imports while
this stage's notebooks run; a template of any other settings ends with its last kernel.
A kernel's working folder is the in-sandbox path :data:`WORKDIR`, a tmpfs that starts with the caches (``seed``) and
gets the notebook's other files (:func:`~autograder.execute.sandbox.workdir_copies`: never a notebook) when it is
handed out, before the notebook's first cell.

Templates and their kernels are started from one long-lived thread of the worker, with an event loop of its own:
bwrap's ``--die-with-parent`` follows the *thread* that started it, and a template's kernels end with the template.
A template still importing when its notebook arrives is waited for; one that failed to start or died, or whose
kernel could not be forked, leaves the notebook to a kernel started the usual way (:func:`take` returns None).
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

from .sandbox import workdir_copies
from .templates import WORKDIR, Template, TemplateKernelManager

#: what a template imports when its notebooks' own imports are not known (a Dask worker's grading child)
WARM_UP_MODULES = ("numpy", "matplotlib.pyplot", "torch", "torch._dynamo", "course_lib.checks.protocol")


#: seconds a template has to start and import, and a kernel to be forked from it
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
    """A kernel template being started (``future``: the :class:`Template`, or the error)."""

    def __init__(self, starter: _Starter, config, kernel_name: str, modules):
        self.future = starter.submit(_start_template(config, kernel_name, modules))

    def failed(self) -> bool:
        """Whether its template could not start or has ended."""
        return self.future.done() and (self.future.exception() is not None or not self.future.result().alive)

    def retire(self) -> None:
        """No more kernels from its template: it ends now, or with its last kernel."""
        self.future.add_done_callback(lambda future: future.exception() is None and future.result().retire())


_starter: _Starter | None = None
#: the worker's kernel templates, by settings key: the current stage's and the next stage's
_spares: dict[str, _Spare] = {}


def settings_key(config, kernel_name: str) -> str:
    """What a kernel's start depends on, as one string: the kernel name and the kernel managers' settings of
    ``config`` (a traitlets ``Config``: the ``course_lib`` view on the path, the caps, the caches, the data)."""
    sections = {name: dict(config[name]) for name in ("LimitedKernelManager", "SandboxedKernelManager")
                if name in config}
    return json.dumps({"kernel": kernel_name, **sections}, sort_keys=True, default=str)


async def _start_template(config, kernel_name: str, modules) -> Template:
    """A kernel template with the settings of ``config``, ``modules`` imported in it (blocks the starter's loop while
    it imports: submit forks before templates)."""
    return Template(config, kernel_name, modules)


async def _fork_kernel(template: Template) -> TemplateKernelManager:
    """A kernel forked from ``template``, started (its manager connected, its caps watched)."""
    manager = TemplateKernelManager(template, workdir=WORKDIR)
    try:
        await manager.start_kernel()
    except BaseException:
        await _shut_down(manager)
        raise
    return manager


async def _shut_down(manager: TemplateKernelManager) -> None:
    try:
        await manager.shutdown_kernel(now=True)
    finally:
        await manager.cleanup_resources()


def close() -> None:
    """At the worker's exit: the templates end, with their files."""
    for spare in _spares.values():
        if spare.future.done() and spare.future.exception() is None:
            spare.future.result().close()
    _spares.clear()


def _ensure_starter() -> _Starter:
    global _starter
    if _starter is None:
        _starter = _Starter()
        atexit.register(close)
    return _starter


def start_first(config, kernel_name: str, modules=WARM_UP_MODULES) -> None:
    """At a worker's start: the template for its first notebook (settings ``config``, importing ``modules``) starts
    while the worker imports what grading needs and prepares that notebook; nothing when a template exists."""
    if not _spares:
        key = settings_key(config, kernel_name)
        _spares[key] = _Spare(_ensure_starter(), config, kernel_name, modules)


def take(config, kernel_name: str, folder: str, next_config=None,
         next_modules=WARM_UP_MODULES) -> TemplateKernelManager | None:
    """A kernel forked from the template of these settings (``config``), if there is one and it is alive, with the
    files of ``folder`` (the notebook's working folder on this machine) copied into its working folder; None
    otherwise. Then the worker holds the templates of this notebook's settings (started now if missing: the
    notebooks after it are most likely of its stage) and of ``next_config``, those of the next stage it is expected
    to run (started now if missing, importing ``next_modules``; None: none expected); any other ends with its last
    kernel.

    The caller owns the kernel it gets and shuts it down after its one notebook.
    """
    starter = _ensure_starter()
    key = settings_key(config, kernel_name)
    next_key = None if next_config is None else settings_key(next_config, kernel_name)
    for other, spare in list(_spares.items()):
        failed = spare.failed()
        if failed:
            _log.warning("a kernel template ended or did not start (%s)", spare.future.exception() or
                         f"it ended with status {spare.future.result().process.returncode}")
        if failed or other not in (key, next_key):
            spare.retire()
            del _spares[other]
    manager = _forked(starter, _spares[key], folder) if key in _spares else None  # forks go before template starts
    for wanted, settings, modules in ((key, config, next_modules if key == next_key else None),
                                      (next_key, next_config, next_modules)):
        if wanted is not None and wanted not in _spares:
            _spares[wanted] = _Spare(starter, settings, kernel_name, modules or WARM_UP_MODULES)
    return manager


def _forked(starter: _Starter, spare: _Spare, folder: str) -> TemplateKernelManager | None:
    """A kernel forked from the template of ``spare`` with the files of ``folder``, or None (said in the log)."""
    try:
        manager = starter.submit(_fork_kernel(spare.future.result(timeout=START_TIMEOUT))).result(timeout=START_TIMEOUT)
    except Exception as error:  # noqa: BLE001 - a kernel started the usual way takes its place
        _log.warning("no kernel from the template (%s: %s); starting one the usual way", type(error).__name__, error)
        return None
    try:
        hand_over(manager, folder)
    except Exception as error:  # noqa: BLE001
        _log.warning("a forked kernel could not be used (%s: %s)", type(error).__name__, error)
        starter.submit(_shut_down(manager))
        return None
    return manager


def hand_over(manager: TemplateKernelManager, folder: str) -> None:
    """Copy the files of ``folder`` (:func:`workdir_copies`: no notebook, no link) into the working folder of
    ``manager``'s running kernel, through the kernel's root (``/proc/<pid>/root``); only ipykernel's start has run in
    that kernel, so nothing in its folder can point elsewhere."""
    root = f"/proc/{manager.kernel_pid}/root{WORKDIR}"
    for source, target in workdir_copies(folder):
        destination = os.path.join(root, target)
        os.makedirs(os.path.dirname(destination), exist_ok=True)
        shutil.copyfile(source, destination)
