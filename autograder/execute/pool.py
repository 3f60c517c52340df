"""Phase 1 on this machine: ``options.jobs`` worker processes, one notebook per task (:func:`execute_all`).

Each worker is set up once (:func:`~autograder.execute.notebook.set_up_worker`) and runs
:func:`~autograder.execute.notebook.execute_notebook` for one notebook at a time. Workers share the CPU: each kernel
gets ``cpu_count // jobs`` torch threads. A notebook executed by an earlier run with the same submission, options and
source is kept (:mod:`autograder.execute.resume`).
"""

from __future__ import annotations

import multiprocessing
import shutil
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Callable

from ..progress import Progress
from .notebook import (EXPECTATIONS, KERNEL_PYTHON, LOGS, WORK, execute_notebook, import_grading_modules, kernel_imports,
                       kernel_name, kernel_python_path, set_up_worker, view_stage, warm_first_kernel)
from .options import GradingOptions
from .resume import load_index, plan, remember, save_index


def _set_up(options: str, log_dir: str, first_python_path: str, first_imports: tuple[str, ...],
            first_kernel: str) -> None:
    """A worker's initializer: :func:`set_up_worker` with the options :meth:`GradingOptions.to_json` wrote, then the
    kernel template of its first notebook (:func:`warm_first_kernel`), with the first task's ``course_lib`` view, imports
    and kernel name, and the worker's own imports (:func:`import_grading_modules`) while that kernel starts."""
    set_up_worker(GradingOptions.from_json(options), log_dir)
    warm_first_kernel(GradingOptions.from_json(options), first_python_path, first_imports, first_kernel)
    import_grading_modules()


def _execute(root: str, student: str, stage: str, options: str, python_path: str, next_python_path: str,
             next_imports: tuple[str, ...]) -> dict:
    """A worker's task: :func:`execute_notebook` with the options :meth:`GradingOptions.to_json` wrote, the checks'
    expected values shared by the workers."""
    return execute_notebook(root, student, stage, GradingOptions.from_json(options), python_path, next_python_path,
                            share_expectations=True, next_warm_up=next_imports or None)


def next_views(tasks: list, python_paths: dict, jobs: int) -> list:
    """For each task (in order), the value (``course_lib`` view, kernel imports) for the next stage its worker most
    likely runs: the stage of the first task among those ``jobs``, 2 ``jobs``, ... places further on whose stage
    differs from its own ("" when none does), for which the worker starts a kernel template while it still runs this
    stage's notebooks."""
    values = [""] * len(tasks)
    for i in range(len(tasks) - 1 - jobs, -1, -1):
        stage, later = tasks[i][1], tasks[i + jobs][1]
        values[i] = python_paths[later] if later != stage else values[i + jobs]
    return values


def execute_all(root: Path, work: dict[str, tuple[str, ...]], options: GradingOptions,
                progress: Callable[[dict], None] | None = None,
                notify: Callable[[str], None] = print) -> list[dict]:
    """Phase 1 on ``options.jobs`` processes, one notebook per task; ``work`` maps students to stages to run.

    Notebooks rather than students are the unit of work, so a class of few students still keeps every
    process busy. A notebook executed by an earlier run with the same submission, options and source is kept
    (:mod:`autograder.execute.resume`; ``notify`` says how many), so a rerun after a crash executes only what is
    missing.
    ``progress`` gets :func:`execute_notebook`'s result as each notebook finishes, with its line
    ``"progress"`` (:class:`autograder.progress.Progress`: done of all, with problems, time left). Returns one
    ``{"student", "seconds", "problems": {stage: reason}}`` per student, in the order of ``work``; ``seconds``
    is the time their notebooks took to run, added up.
    """
    index = load_index(root)
    tasks, results = plan(root, work, options, index)
    if results:
        notify(f"  {len(results)} notebooks already executed (executed/index.json) are kept")
    python_paths = {stage: str(kernel_python_path(root, view_stage(root, stage))) for stage in {s for _, s, _ in tasks}}
    imports = {stage: kernel_imports(root, stage) for stage in python_paths}
    shutil.rmtree(Path(root) / WORK / EXPECTATIONS, ignore_errors=True)  # this run's, not a crashed run's
    context = multiprocessing.get_context("spawn")
    options_json = options.to_json()  # what crosses to the workers
    first = tasks[0][1] if tasks else None
    set_up = (options_json, str(Path(root) / LOGS), python_paths.get(first, ""), imports.get(first, ()),
              kernel_name(root, first) if first else "")
    with ProcessPoolExecutor(max_workers=min(options.jobs, max(1, len(tasks))), mp_context=context,
                             initializer=_set_up, initargs=set_up) as pool:
        following = zip(next_views(tasks, python_paths, options.jobs), next_views(tasks, imports, options.jobs))
        futures = {pool.submit(_execute, str(root), student, stage, options_json, python_paths[stage], *after): key
                   for (student, stage, key), after in zip(tasks, following)}
        counter = Progress(len(futures))
        for future in as_completed(futures):
            result = future.result()
            remember(root, index, futures[future], result)
            result["progress"] = counter.record(result)
            results.append(result)
            if progress is not None:
                progress(result)
    save_index(root, index)
    for scratch in (KERNEL_PYTHON, EXPECTATIONS):
        shutil.rmtree(Path(root) / WORK / scratch, ignore_errors=True)
    return runs_by_student(work, results)


def runs_by_student(work: dict[str, tuple[str, ...]], results: list[dict]) -> list[dict]:
    """:func:`execute_notebook`'s results gathered per student, in the order of ``work``: ``{"student", "seconds",
    "problems": {stage: reason}}``, ``seconds`` being the time their notebooks took to run, added up."""
    runs = {student: {"student": student, "seconds": 0.0, "problems": {}} for student in work}
    for result in results:
        run = runs[result["student"]]
        run["seconds"] += result["seconds"]
        if result["problem"]:
            run["problems"][result["stage"]] = result["problem"]
    return list(runs.values())
