"""Bring a folder (or zip) of submissions into the course folder as ``<root>/submitted/<student>/<stage>/``.

Two shapes are accepted:

- **nbgrader's layout**: ``<dir>/<student>/<stage>/<any name>.ipynb`` (optionally under ``<dir>/submitted/``).
  A stage folder with one notebook of another name ("Copy of 01_noising.ipynb", as Colab saves it) counts.
- **LMS downloads**: a flat folder or a ``.zip`` of files named ``<student>_<anything>_<stage>.ipynb``
  (Canvas: ``smithjane_12345_67890_01_noising.ipynb``; Moodle: ``Jane Smith_123_assignsubmission_file_01_noising.ipynb``;
  a resubmission suffix ``-1`` is allowed). The student id is the name's part before the first underscore.
  Collected with nbgrader's ``zip_collect`` and its ``FileNameCollectorPlugin`` (:data:`LMS_REGEXP`).

Every collected notebook is then read once: one that is not a valid notebook is reported, and not run,
so it counts as not submitted instead of crashing nbgrader.
"""

from __future__ import annotations

import re
import shutil
import zipfile
from pathlib import Path

import nbformat

from .course import nbgrader_config

#: ``named_regexp`` for nbgrader's FileNameCollectorPlugin; ``{stage}`` is replaced by the stage's name.
LMS_REGEXP = r".*/(?P<student_id>[^/_]+)_(?:[^/]*[_ ])?(?P<file_id>{stage})(?:-\d+)?\.ipynb$"
MISSING = "missing"


def _is_nbgrader_layout(folder: Path, stages) -> bool:
    return any((student / stage).is_dir() for student in folder.iterdir() if student.is_dir() for stage in stages)


def _copy_nbgrader_layout(folder: Path, submitted: Path, stages) -> None:
    for student in sorted(p for p in folder.iterdir() if p.is_dir()):
        (submitted / student.name).mkdir(parents=True, exist_ok=True)  # listed even with nothing handed in
        for stage in stages:
            stage_dir = student / stage
            notebooks = sorted(stage_dir.glob("*.ipynb")) if stage_dir.is_dir() else []
            if not notebooks:
                continue
            chosen = stage_dir / f"{stage}.ipynb" if (stage_dir / f"{stage}.ipynb").exists() else notebooks[0]
            target = submitted / student.name / stage
            target.mkdir(parents=True, exist_ok=True)
            shutil.copy2(chosen, target / f"{stage}.ipynb")
            if (stage_dir / "timestamp.txt").exists():
                shutil.copy2(stage_dir / "timestamp.txt", target / "timestamp.txt")


def _zip_collect(source: Path, root: Path, stages) -> None:
    """Run nbgrader's zip_collect for each stage on ``source`` (a folder of files or a .zip)."""
    from nbgrader.apps import ZipCollectApp

    for stage in stages:
        downloaded = root / "downloaded" / stage
        shutil.rmtree(downloaded, ignore_errors=True)
        archive = downloaded / "archive"
        if source.is_dir():
            shutil.copytree(source, archive)
        else:
            archive.mkdir(parents=True)
            shutil.copy2(source, archive / source.name)
        config = nbgrader_config(root)
        config.CourseDirectory.assignment_id = stage
        config.ZipCollectApp.strict = True
        config.ZipCollectApp.force = True
        config.FileNameCollectorPlugin.named_regexp = LMS_REGEXP.format(stage=re.escape(stage))
        app = ZipCollectApp(config=config)
        app.initialize([])
        app.log.setLevel("ERROR")
        app.start()


def _invalid_notebooks(submitted: Path, stages) -> dict[tuple[str, str], str]:
    problems = {}
    for notebook in sorted(submitted.glob("*/*/*.ipynb")):
        student, stage = notebook.parent.parent.name, notebook.parent.name
        if stage not in stages:
            continue
        try:
            nbformat.validate(nbformat.read(notebook, as_version=4))
        except Exception as error:  # noqa: BLE001 - any unreadable file is reported the same way
            reason = str(error).splitlines()[0] if str(error) else type(error).__name__
            problems[student, stage] = f"not a valid notebook ({reason[:120]})"
    return problems


def collect_submissions(source: Path, root: Path, stages) -> tuple[list[str], dict[tuple[str, str], str]]:
    """Fill ``<root>/submitted`` from ``source``; return the students and the problems by (student, stage).

    ``<root>/submitted`` is rebuilt from scratch unless ``source`` is that folder itself. A stage a student
    did not hand in has the problem :data:`MISSING`; an invalid notebook, the reason it cannot be read.
    """
    source, root = Path(source).resolve(), Path(root).resolve()
    if not source.exists():
        raise FileNotFoundError(f"`submissions`: no such file or folder: {source}")
    if source.is_file() and not zipfile.is_zipfile(source):
        raise ValueError(f"`submissions` must be a folder or a .zip file, got {source}")
    submitted = root / "submitted"
    if source.is_dir() and (source / "submitted").is_dir():
        source = source / "submitted"
    if source != submitted:
        shutil.rmtree(submitted, ignore_errors=True)
        submitted.mkdir(parents=True)
        if source.is_dir() and _is_nbgrader_layout(source, stages):
            _copy_nbgrader_layout(source, submitted, stages)
        else:
            _zip_collect(source, root, stages)
    problems = _invalid_notebooks(submitted, stages)
    students = sorted(p.name for p in submitted.iterdir() if p.is_dir())
    for student in students:
        for stage in stages:
            if not (submitted / student / stage / f"{stage}.ipynb").exists():
                problems.setdefault((student, stage), MISSING)
    return students, problems
