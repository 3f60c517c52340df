"""The course's networks: the UNet operations and blocks, the FCBlock, and the three UNets.

Every one of them is something students build (stages 2-4), so the classes live in their stage's answers; each
:class:`~course_lib.stages.stage.Stage` lists the classes it defines (``classes``), and this module hands them out
by name when asked, for the notebooks of later stages, the training command and the benchmarks. In an
installation without a stage's answers, asking for one of its classes raises
:class:`~course_lib.stages.stage.AnswerNotIncluded`.
"""

from __future__ import annotations

from .stages import STAGES

__all__ = [name for stage in STAGES for name in stage.classes]


def __getattr__(name: str):
    for stage in STAGES:
        if name in stage.classes:
            return getattr(stage.answers, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
