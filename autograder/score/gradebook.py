"""Phase 2 of grading: the one writer of the gradebook.

nbgrader's ``Autograde`` again, in the main process and with no kernel, reading ``executed/`` (what phase 1,
:mod:`autograder.execute`, left) instead of ``collected/``, with execution switched off: it writes scores into
``<root>/gradebook.db`` and the graded notebooks into ``<root>/autograded/``, exactly as a plain
``nbgrader autograde`` would. It runs only once every kernel of phase 1 has ended (several ``nbgrader autograde``
processes on one gradebook would write the same SQLite file at once).
"""

from __future__ import annotations

from pathlib import Path

from ..course import nbgrader_config, quiet_nbgrader
from ..execute.notebook import run_autograde
from ..execute.resume import EXECUTED


def _score_config(root: Path):
    from nbconvert.preprocessors import ClearMetadataPreprocessor
    from nbgrader.preprocessors import (AssignLatePenalties, CheckCellMetadata, DeduplicateIds, IgnorePattern,
                                        LimitOutput, OverwriteCells, OverwriteKernelspec, SaveAutoGrades)

    from ..execute.privacy import ScrubPersonalData

    config = nbgrader_config(root)
    config.CourseDirectory.submitted_directory = EXECUTED
    config.Autograde.sanitize_preprocessors = [ScrubPersonalData, DeduplicateIds, OverwriteKernelspec, OverwriteCells,
                                               CheckCellMetadata]
    config.Autograde.autograde_preprocessors = [IgnorePattern, ClearMetadataPreprocessor, LimitOutput,
                                                SaveAutoGrades, AssignLatePenalties, CheckCellMetadata]
    return config


def score_all(root: Path, stages: tuple[str, ...], only: list[str] | None = None) -> dict[tuple[str, str], str]:
    """Phase 2: write the scores of every executed notebook (of the students ``only``, when given) into the
    gradebook; returns failures by (student, stage)."""
    quiet_nbgrader()
    config = _score_config(Path(root))
    failures = {}
    for stage in stages:
        students = sorted(p.parent.parent.name for p in (Path(root) / EXECUTED).glob(f"*/{stage}/{stage}.ipynb"))
        for student in [s for s in students if only is None or s in only]:
            try:
                run_autograde(config, stage, student)
            except Exception as error:  # noqa: BLE001 - recorded in the table, the others go on
                failures[student, stage] = f"could not be scored: {type(error).__name__}: {error}"
    return failures
