"""The stage registry: one :class:`~course_lib.stages.stage.Stage` per notebook of the course, read by everything else.

Each stage is a package of its own (``course_lib/stages/<key>/``, see :mod:`course_lib.stages.stage` for its
files); this module lists them in course order. Runtime budgets, the training command, the benchmarks, the
autograder's release and grading, and the student packages all ask these entries; adding a stage is one package
plus its notebook in ``solutions/``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from . import cfg, ddpm, denoiser, editing, flow, improved, noising
from .stage import AnswerNotIncluded, Model, Stage, StageBudget

if TYPE_CHECKING:  # the registry imports no torch: the command line and the scoring processes read it without
    import torch
    from torch import nn

    from ..train_step import LossFunction

__all__ = ["AnswerNotIncluded", "Model", "Stage", "StageBudget", "STAGES", "NOTEBOOKS", "TRAINING_STAGES", "get",
           "budget", "value_range", "build_model", "stage_loss"]

STAGES: tuple[Stage, ...] = tuple(package.STAGE for package in (noising, denoiser, ddpm, cfg, flow, improved,
                                                                         editing))
NOTEBOOKS: tuple[str, ...] = tuple(stage.notebook for stage in STAGES)
TRAINING_STAGES: tuple[str, ...] = tuple(stage.key for stage in STAGES if stage.model is not None)


def get(name: str) -> Stage:
    """The stage whose key (``"ddpm"``) or notebook name (``"03_ddpm"``) is ``name``."""
    for stage in STAGES:
        if name in (stage.key, stage.notebook):
            return stage
    raise ValueError(f"`stage` must be one of {[s.key for s in STAGES]} (or a notebook name {list(NOTEBOOKS)}), "
                     f"got {name!r}")


def _training_stage(stage: str) -> Stage:
    from ..validation import check_choice

    check_choice("stage", stage, TRAINING_STAGES)
    return get(stage)


def budget(stage: str, mode: str | None = None) -> StageBudget:
    """The budget of training stage ``stage`` (one of ``TRAINING_STAGES``) in ``mode`` (default: ``COURSE_MODE``)."""
    from ..runtime import MODES, course_mode
    from ..validation import check_choice

    entry = _training_stage(stage)
    mode = course_mode() if mode is None else mode
    check_choice("mode", mode, MODES)
    return entry.budgets[mode]


def value_range(stage: str) -> str:
    """``"unit"`` ([0, 1]) or ``"signed"`` ([-1, 1]): the images ``stage`` trains on."""
    return _training_stage(stage).model.value_range


def build_model(stage: str, stage_budget: StageBudget) -> nn.Module:
    """A freshly initialised model of ``stage`` with the budget's width."""
    return _training_stage(stage).model.builder()(num_hiddens=stage_budget.num_hiddens)


def stage_loss(stage: str, schedule: nn.Module) -> LossFunction:
    """The loss of ``stage`` as ``loss_fn(model, images, labels, generator)`` for :func:`~course_lib.training.train`.

    ``schedule``: the stage's ``DDPMSchedule`` (unused by the denoiser). It calls the answer itself, without the
    argument checks of :mod:`course_lib.objectives`: a training step must not wait for the GPU to check values.
    """
    model = _training_stage(stage).model
    loss = model.loss()
    positions = tuple(("images", "labels", "schedule").index(name) for name in model.loss_inputs)

    def loss_fn(net: nn.Module, images: torch.Tensor, labels: torch.Tensor, generator: torch.Generator):
        available = (images, labels, schedule)
        return loss(net, *(available[i] for i in positions), generator=generator)

    return loss_fn
