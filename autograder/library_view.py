"""``course_lib`` without the answers of a stage and later: what a student of that stage may have.

The answers of each stage are one module, ``course_lib/answers/<key>.py`` (see :mod:`course_lib.answers`),
so the view is a copy of the package with those modules left out. The grading sandbox of a stage puts this
view on the kernel's path, and the student package of that stage is built from it.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import course_lib
from course_lib import stages

LIBRARY_DIR = Path(course_lib.__file__).resolve().parent


def left_out(stage: str) -> tuple[str, ...]:
    """The answers modules (stage keys) that a view for ``stage`` (key or notebook name) leaves out: its own and
    every later stage's."""
    first = stages.STAGES.index(stages.get(stage))
    return tuple(entry.key for entry in stages.STAGES[first:])


def write_library_view(destination: Path, stage: str) -> Path:
    """Copy ``course_lib`` into ``destination/course_lib`` without the answers of ``stage`` and later stages.

    ``destination`` must not hold a ``course_lib`` already. Returns the copied package's folder.
    """
    target = Path(destination) / "course_lib"
    if target.exists():
        raise FileExistsError(f"`destination` already holds a course_lib: {target}")
    excluded = {f"{key}.py" for key in left_out(stage)}

    def ignore(folder: str, names: list[str]) -> set[str]:
        skipped = {name for name in names if name == "__pycache__" or name.endswith(".pyc")}
        if Path(folder).resolve() == LIBRARY_DIR / "answers":
            skipped |= excluded & set(names)
        return skipped

    shutil.copytree(LIBRARY_DIR, target, ignore=ignore)
    return target
