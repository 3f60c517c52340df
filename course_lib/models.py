"""The course's networks: the UNet operations and blocks, the FCBlock, and the three UNets.

Every one of them is something students build (stages 2-4), so the classes live in the answers
(:mod:`course_lib.answers`); this module hands them out by name when asked, for the notebooks of later
stages, the training command and the benchmarks. In an installation without a stage's answers, asking for
one of its classes raises :class:`~course_lib.answers.AnswerNotIncluded`.
"""

from __future__ import annotations

from . import answers

# Class name -> the stage whose answers define it.
_DEFINED_IN = {
    **dict.fromkeys(("Conv", "DownConv", "UpConv", "Flatten", "Unflatten", "ConvBlock", "DownBlock", "UpBlock",
                     "UNetBody", "UnconditionalUNet"), "denoiser"),
    **dict.fromkeys(("FCBlock", "TimeConditionalUNet"), "ddpm"),
    "ClassConditionalUNet": "cfg",
}
__all__ = list(_DEFINED_IN)


def __getattr__(name: str):
    if name not in _DEFINED_IN:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(answers.load(_DEFINED_IN[name]), name)


def __dir__() -> list[str]:
    return sorted(__all__)
