"""``course_lib`` without the answers of a stage and later: what a student of that stage may have.

Each stage is a package, ``course_lib/stages/<key>/`` (see :mod:`course_lib.stages.stage`), split into files by
who may see them, so the view is a copy of ``course_lib`` with whole files left out (:func:`left_out_files`): the
``answers.py`` of the stage and every later one, and every stage's ``reference.py`` (the checks' reference side,
which only the grader runs). Nothing is rewritten. The grading sandbox of a stage puts this view on the kernel's
path, and the student package of that stage is built from it.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import course_lib
from course_lib import stages

LIBRARY_DIR = Path(course_lib.__file__).resolve().parent


def _stage_file(stage: stages.Stage, name: str) -> str:
    """``course_lib/stages/ddpm/answers.py`` for the ddpm stage and ``"answers.py"``."""
    return f"{stage.package.replace('.', '/')}/{name}"


def left_out_files(stage: str) -> tuple[str, ...]:
    """The files (``course_lib/...`` paths) that a view for ``stage`` (key or notebook name) leaves out: the
    answers of that stage and every later one, and the reference side of every stage's checks."""
    first = stages.STAGES.index(stages.get(stage))
    answers = [_stage_file(entry, "answers.py") for entry in stages.STAGES[first:]]
    return tuple(answers + [_stage_file(entry, "reference.py") for entry in stages.STAGES])


def write_library_view(destination: Path, stage: str) -> Path:
    """Copy ``course_lib`` into ``destination/course_lib`` without :func:`left_out_files` of ``stage``.

    ``destination`` must not hold a ``course_lib`` already. Returns the copied package's folder.
    """
    target = Path(destination) / "course_lib"
    if target.exists():
        raise FileExistsError(f"`destination` already holds a course_lib: {target}")
    excluded = {LIBRARY_DIR.parent / path for path in left_out_files(stage)}

    def ignore(folder: str, names: list[str]) -> set[str]:
        skipped = {name for name in names if name == "__pycache__" or name.endswith(".pyc")}
        return skipped | {name for name in names if Path(folder).resolve() / name in excluded}

    shutil.copytree(LIBRARY_DIR, target, ignore=ignore)
    return target
