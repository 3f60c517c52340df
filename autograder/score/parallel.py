"""Phase 2 on several processes: workers convert and score, one writer commits the scores in batches.

Each worker process runs the same nbgrader ``Autograde`` as :func:`autograder.score.gradebook.score_all` does in one
process, but against a private copy of the gradebook (a snapshot taken before any worker starts): it writes the
graded notebook into ``<root>/autograded/<student>/<stage>/`` (a folder no other task touches) and reads back from
its copy what nbgrader recorded for that notebook: the submission's time, the late penalty, each graded cell's
automatic score and whether it needs a manual grade, and each cell's automatic comment. Only this process writes
the real gradebook (:func:`write_scores`), committing every ``batch`` notebooks, so the gradebook has one writer
however many processes score.
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

from ..course import quiet_nbgrader
from ..execute.notebook import WORK, run_autograde
from .config import score_config
from .engines import share_engines_for_good

SCORING = "scoring"  # under <root>/work/: the snapshot and the workers' copies of the gradebook
_worker: dict = {}


def _set_up(root: str, snapshot: str) -> None:
    """A worker's initializer: its own copy of the gradebook snapshot, the scoring config pointing at it, and one
    database engine for all its notebooks (:mod:`autograder.score.engines`).

    The copy is thrown away, so it is written without waiting for the disk (``PRAGMA synchronous=OFF``: nbgrader
    commits once per graded cell); this process opens no other database.
    """
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    event.listen(Engine, "connect", lambda connection, _: connection.execute("PRAGMA synchronous=OFF"))
    share_engines_for_good()
    quiet_nbgrader()
    copy = Path(snapshot).with_name(f"worker-{os.getpid()}.db")
    shutil.copy2(snapshot, copy)
    config = score_config(Path(root))
    config.CourseDirectory.db_url = f"sqlite:///{copy}"
    _worker.update(config=config, db_url=config.CourseDirectory.db_url)


def _score(student: str, stage: str) -> dict:
    """A worker's task: score one executed notebook into the worker's copy; what nbgrader recorded for it
    (:func:`read_scores`), with ``"failure"`` (a message) when it could not be scored: then what nbgrader had
    recorded before it failed (the submission, unscored), when it had."""
    task = {"student": student, "stage": stage}
    try:
        run_autograde(_worker["config"], stage, student)
    except Exception as error:  # noqa: BLE001 - recorded in the table, the others go on
        task["failure"] = f"could not be scored: {type(error).__name__}: {error}"
    try:
        return {**task, **read_scores(_worker["db_url"], student, stage)}
    except Exception:  # noqa: BLE001 - nbgrader failed before recording the submission
        return task


def read_scores(db_url: str, student: str, stage: str) -> dict:
    """What nbgrader recorded for ``student``'s notebook of ``stage`` (one notebook per assignment, named as it):
    ``{"timestamp", "penalty", "grades": {cell: [auto_score, needs_manual_grade]}, "comments": {cell: text}}``."""
    from nbgrader.api import Gradebook

    with Gradebook(db_url) as gradebook:
        submission = gradebook.find_submission(stage, student)
        notebook = gradebook.find_submission_notebook(stage, stage, student)
        return {"timestamp": submission.timestamp.isoformat() if submission.timestamp else None,
                "penalty": notebook.late_submission_penalty,
                "grades": {grade.name: [grade.auto_score, grade.needs_manual_grade] for grade in notebook.grades},
                "comments": {comment.name: comment.auto_comment for comment in notebook.comments}}


def write_scores(gradebook, result: dict) -> None:
    """Record one notebook's scores (:func:`read_scores`) in ``gradebook`` as nbgrader's ``Autograde`` would (the
    student and the submission made when missing); committed by the caller, except that nbgrader commits a new
    submission's rows when it adds them."""
    from nbgrader.api import Comment, Grade, MissingEntry
    from nbgrader.utils import parse_utc

    student, stage = result["student"], result["stage"]
    timestamp = parse_utc(result["timestamp"]) if result["timestamp"] is not None else None
    try:
        gradebook.find_student(student)
    except MissingEntry:
        gradebook.add_student(student)
    try:
        submission = gradebook.find_submission(stage, student)
    except MissingEntry:  # a new submission: nbgrader adds it with a row per graded cell (and commits)
        gradebook.add_submission(stage, student, **({"timestamp": timestamp} if timestamp is not None else {}))
    else:
        if timestamp is not None:
            submission.timestamp = timestamp
    notebook = gradebook.find_submission_notebook(stage, stage, student)
    with gradebook.db.no_autoflush:  # else reading each cell's name flushes the scores set before it
        notebook.late_submission_penalty = result["penalty"]
        for grade in _with_cells(gradebook, Grade, notebook):
            grade.auto_score, grade.needs_manual_grade = result["grades"][grade.name]
        for comment in _with_cells(gradebook, Comment, notebook):
            comment.auto_comment = result["comments"][comment.name]


def _with_cells(gradebook, table, notebook) -> list:
    """The rows of ``table`` (nbgrader's ``Grade`` or ``Comment``) of ``notebook``, each with its cell (its name)
    loaded in the same query rather than one query per row."""
    from sqlalchemy.orm import joinedload

    return gradebook.db.query(table).options(joinedload(table.cell)).filter(table.notebook_id == notebook.id).all()


def score_in_parallel(root: Path, tasks: list[tuple[str, str]], jobs: int,
                      batch: int = 50) -> dict[tuple[str, str], str]:
    """Score ``tasks`` (``(student, stage)`` pairs) on ``jobs`` processes, this one writing the gradebook every
    ``batch`` notebooks; returns the failures by (student, stage)."""
    from nbgrader.api import Gradebook

    if not tasks:
        return {}
    root = Path(root)
    folder = root / WORK / SCORING
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    snapshot = folder / "snapshot.db"
    shutil.copy2(root / "gradebook.db", snapshot)
    failures, pending = {}, 0
    context = multiprocessing.get_context("spawn")
    try:
        with ProcessPoolExecutor(max_workers=min(jobs, len(tasks)), mp_context=context, initializer=_set_up,
                                 initargs=(str(root), str(snapshot))) as pool, \
                Gradebook(f"sqlite:///{root / 'gradebook.db'}") as gradebook:
            for future in as_completed([pool.submit(_score, student, stage) for student, stage in tasks]):
                result = future.result()
                if "failure" in result:
                    failures[result["student"], result["stage"]] = result["failure"]
                if "grades" in result:
                    write_scores(gradebook, result)
                pending += 1
                if pending >= batch:
                    gradebook.db.commit()
                    pending = 0
            gradebook.db.commit()
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return failures
