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
