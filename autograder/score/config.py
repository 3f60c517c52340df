"""The nbgrader configuration of phase 2 (scoring), shared by the one-process and the several-process scoring."""

from __future__ import annotations

from pathlib import Path

from ..course import nbgrader_config
from ..execute.resume import EXECUTED


def score_config(root: Path):
    """The config of phase 2's ``Autograde``: no kernel, ``executed/`` as the submitted folder, scores saved."""
    from nbconvert.preprocessors import ClearMetadataPreprocessor
    from nbgrader.preprocessors import (AssignLatePenalties, CheckCellMetadata, DeduplicateIds, IgnorePattern,
                                        LimitOutput, OverwriteKernelspec, SaveAutoGrades)

    from ..execute.privacy import ScrubPersonalData

    config = nbgrader_config(root)
    config.CourseDirectory.submitted_directory = EXECUTED
    config.Exporter.optimistic_validation = True  # the notebook checked once, after nbgrader's preprocessors, not
    # after each of them (14 checks fewer per notebook; an invalid notebook still fails to score)
    # phase 1 already put back every read-only and test cell from the gradebook (OverwriteCells) and checked the
    # metadata; the executed notebook is the grader's own output, so scoring does not do either again (a fifth of
    # its time); tests/test_autograder.py compares the gradebook with nbgrader's full sanitizing
    config.Autograde.sanitize_preprocessors = [ScrubPersonalData, DeduplicateIds, OverwriteKernelspec]
    config.Autograde.autograde_preprocessors = [IgnorePattern, ClearMetadataPreprocessor, LimitOutput,
                                                SaveAutoGrades, AssignLatePenalties, CheckCellMetadata]
    return config
