"""Which notebooks of a grading run were executed already and can be kept: ``<root>/executed/index.json``.

Each notebook's execution is recorded as it finishes, keyed by what decides its outcome: the collected
submission's files, the grading options (not ``jobs``) and the source notebook. A rerun of ``grade`` (after a crash,
a lost Dask scheduler, or for a class where a few students handed in again) keeps every notebook whose key and
executed file are unchanged, and executes only the rest. Used by both ``--jobs`` (:mod:`autograder.execute.pool`) and
``--dask`` (:mod:`autograder.distributed.cluster`).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

from ..atomic import atomic_write_bytes
from ..course import SUBMITTED
from .options import GradingOptions

INDEX = "index.json"
EXECUTED = "executed"


def folder_files(folder: Path) -> dict[str, bytes]:
    """Every file below ``folder`` by its relative path."""
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


def options_key(options: GradingOptions) -> dict:
    """The options that change a notebook's run: :meth:`GradingOptions.to_json` without ``jobs``, numbers as floats
    (120 and 120.0 are one limit)."""
    fields = json.loads(options.to_json())
    del fields["jobs"]
    return {key: float(value) if type(value) in (int, float) else value for key, value in fields.items()}


def resume_key(root: Path, student: str, stage: str, options: GradingOptions) -> str:
    """What decides whether an executed notebook can be reused: the submission's files, the grading options
    (not ``jobs``) and the source notebook."""
    digest = hashlib.sha256()
    for relative, data in folder_files(Path(root) / SUBMITTED / student / stage).items():
        digest.update(relative.encode() + b"\0" + hashlib.sha256(data).digest())
    digest.update(json.dumps(options_key(options), sort_keys=True).encode())
    digest.update((Path(root) / "source" / stage / f"{stage}.ipynb").read_bytes())
    return digest.hexdigest()


def load_index(root: Path) -> dict:
    try:
        return json.loads((Path(root) / EXECUTED / INDEX).read_text())
    except (OSError, ValueError):
        return {}


def save_index(root: Path, index: dict) -> None:
    atomic_write_bytes(Path(root) / EXECUTED / INDEX, json.dumps(index, indent=1, sort_keys=True).encode())


def notebook_hash(root: Path, student: str, stage: str) -> str | None:
    path = Path(root) / EXECUTED / student / stage / f"{stage}.ipynb"
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None


def plan(root: Path, work: dict[str, tuple[str, ...]], options: GradingOptions, index: dict) -> tuple[list, list[dict]]:
    """The ``(student, stage, key)`` of the notebooks of ``work`` to execute, stage after stage (so a worker's
    kernel template, :mod:`autograder.execute.warm_kernels`, serves most of its notebooks), and the results
    of those kept; every executed folder of a student of ``work`` that is not kept is removed, and its entry of
    ``index``."""
    tasks, kept = [], []
    for student, stages in work.items():
        done = set()
        for stage in stages:
            key = resume_key(root, student, stage, options)
            entry = index.get(f"{student}/{stage}")
            if entry and entry["key"] == key and entry["notebook"] == notebook_hash(root, student, stage):
                done.add(stage)
                kept.append({**entry["result"], "resumed": True})
            else:
                tasks.append((student, stage, key))
        folder = Path(root) / EXECUTED / student
        for stale in (folder.iterdir() if folder.is_dir() else ()):
            if stale.name not in done:
                shutil.rmtree(stale, ignore_errors=True)
                index.pop(f"{student}/{stale.name}", None)
    return sorted(tasks, key=lambda task: task[1]), kept


def remember(root: Path, index: dict, key: str, result: dict) -> None:
    """Record ``result`` (a notebook's, executed under ``key``) unless it could not be graded at all."""
    if (result["problem"] or "").startswith("could not be graded"):
        return
    student, stage = result["student"], result["stage"]
    index[f"{student}/{stage}"] = {"key": key, "result": {name: result[name] for name in ("student", "stage",
                                                                                      "seconds", "problem")},
                                   "notebook": notebook_hash(root, student, stage)}
    save_index(root, index)
