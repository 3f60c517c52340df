"""Phase 2 done again, on one process or on several with one writer, to compare the two (imported by the test
modules, which pytest runs from tests/)."""

from __future__ import annotations

import shutil
from pathlib import Path

from autograder.score.gradebook import score_all


def gradebook_scores(root: Path) -> dict:
    """Everything phase 2 writes into ``<root>/gradebook.db``, by (student, assignment, cell): automatic scores,
    needs-manual-grade flags, automatic comments, late penalties and submission times."""
    from nbgrader.api import Gradebook

    found = {}
    with Gradebook(f"sqlite:///{Path(root) / 'gradebook.db'}") as gradebook:
        for assignment in gradebook.assignments:
            for submission in assignment.submissions:
                key = (submission.student.id, assignment.name)
                found[key] = submission.timestamp
                for notebook in submission.notebooks:
                    found[(*key, notebook.name, "penalty")] = notebook.late_submission_penalty
                    found.update({(*key, grade.name): (grade.auto_score, grade.needs_manual_grade)
                                  for grade in notebook.grades})
                    found.update({(*key, comment.name, "comment"): comment.auto_comment
                                  for comment in notebook.comments})
    return found


def graded_copies(root: Path) -> dict[str, bytes]:
    """The graded notebooks phase 2 wrote, by path below ``autograded/``."""
    folder = Path(root) / "autograded"
    return {path.relative_to(folder).as_posix(): path.read_bytes() for path in sorted(folder.rglob("*.ipynb"))}


def rescored(root: Path, copy: Path, stages, jobs: int) -> tuple[Path, dict]:
    """A copy of the graded course ``root`` whose phase 2 ran again on ``jobs`` processes; and its failures."""
    shutil.copytree(root, copy, symlinks=True)
    shutil.rmtree(copy / "autograded", ignore_errors=True)
    return copy, score_all(copy, tuple(stages), jobs=jobs)


def rescored_plainly(root: Path, copy: Path, stages) -> tuple[Path, set]:
    """A copy of the graded course ``root`` whose phase 2 ran again as nbgrader alone runs it: every ``Gradebook``
    with an engine of its own, the notebook validated after each preprocessor (none of
    :mod:`autograder.score.engines` and ``optimistic_validation``), every cell put back from the gradebook and its
    metadata checked again; and the (student, stage) it could not score."""
    from nbgrader.preprocessors import CheckCellMetadata, DeduplicateIds, OverwriteCells, OverwriteKernelspec

    from autograder.execute.notebook import run_autograde
    from autograder.execute.privacy import ScrubPersonalData
    from autograder.execute.resume import EXECUTED
    from autograder.score.config import score_config

    shutil.copytree(root, copy, symlinks=True)
    shutil.rmtree(copy / "autograded", ignore_errors=True)
    config = score_config(copy)
    config.Exporter.optimistic_validation = False
    config.Autograde.sanitize_preprocessors = [ScrubPersonalData, DeduplicateIds, OverwriteKernelspec, OverwriteCells,
                                               CheckCellMetadata]
    failed = set()
    for stage in stages:
        for student in sorted(path.parent.parent.name for path in (copy / EXECUTED).glob(f"*/{stage}/{stage}.ipynb")):
            try:
                run_autograde(config, stage, student)
            except Exception:  # noqa: BLE001 - compared with what the autograder could not score
                failed.add((student, stage))
    return copy, failed
