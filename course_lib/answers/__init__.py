"""The answers: the reference of every function and class a student writes, one module per stage.

``noising`` (01), ``denoiser`` (02), ``ddpm`` (03), ``cfg`` (04), ``flow`` (05), ``improved`` (06, optional):
each holds exactly what the TODO cells of its stage ask for (the registry, :mod:`course_lib.stages`, maps every
TODO cell to its reference here), and nothing else. Answers may import given code; given code (``noise``, ``models``,
``objectives``, ``sampling``, ...) reaches the answers only through :func:`load`, when it is called.

So "course_lib without the answers of stage k and later" is this package with those modules left out:
everything still imports, and a call that needs a missing answer raises :class:`AnswerNotIncluded`, which
says so. Student packages are built that way, and so is the grading kernel's view of the library.
"""

from __future__ import annotations

import importlib
from types import ModuleType


class AnswerNotIncluded(ImportError):
    """The reference of a student exercise was called in an installation that leaves it out."""


def load(stage_key: str) -> ModuleType:
    """The answers module of ``stage_key`` (``"noising"``, ``"denoiser"``, ...).

    Raises :class:`AnswerNotIncluded` when this installation leaves it out (a student package, or the grading
    kernel of that stage or an earlier one).
    """
    name = f"{__name__}.{stage_key}"
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as error:
        if error.name != name:
            raise
        raise AnswerNotIncluded(
            f"this installation of course_lib leaves out the reference answers of stage {stage_key!r}: that is "
            "an exercise you write yourself (or its solutions are not released yet). Use your own function "
            "from the notebook.") from None
