"""Helpers shared by the tests of course_lib.checks (imported by the test modules, which pytest runs from tests/)."""

from __future__ import annotations

import io

import pytest
import torch

from course_lib.checks import CheckFailed


def fails_with(check, student, hint: str, **kwargs) -> str:
    """Assert that ``check(student, **kwargs)`` fails with a message containing ``hint``; return the message.

    ``student`` is the student's object, or a tuple of them for a check that takes several (``check_blocks``).
    """
    students = student if isinstance(student, tuple) else (student,)
    with pytest.raises(CheckFailed) as failure:
        check(*students, **kwargs)
    assert hint in str(failure.value), str(failure.value)
    return str(failure.value)


def round_trip(value):
    """``value`` after ``torch.save`` and ``torch.load(weights_only=True)``: what crosses from kernel to grader."""
    buffer = io.BytesIO()
    torch.save(value, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def leave_out_answers(patched, keys: tuple[str, ...] | None = None) -> None:
    """With ``patched`` (a monkeypatch), make every stage's answers in ``keys`` (all when None) raise
    AnswerNotIncluded, as in a grading kernel or a student package that leaves them out."""
    from course_lib.stages.stage import AnswerNotIncluded, Stage

    with_answers = Stage.answers.fget

    def answers(stage):
        if keys is None or stage.key in keys:
            raise AnswerNotIncluded(f"the answers of {stage.key} are left out in this test")
        return with_answers(stage)

    patched.setattr(Stage, "answers", property(answers))
