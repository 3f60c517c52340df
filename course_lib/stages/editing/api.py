"""Stage 7's public, checked names, re-exported by ``course_lib.sampling``: SDEdit, inpainting and class-guided
editing with a class-conditional noise predictor ``model(x, t / T, c)``."""

from __future__ import annotations

import torch

from ...data import one_hot
from ...validation import check_same_shape, check_tensor
from . import STAGE


def _check_steps(steps, schedule) -> int:
    if isinstance(steps, bool) or not isinstance(steps, int) or not 0 <= steps <= schedule.num_steps:
        raise ValueError(f"`steps` must be an integer in 0..{schedule.num_steps} (the schedule's T), got {steps!r}")
    return steps


def sdedit(model, schedule, x0: torch.Tensor, steps: int, generator: torch.Generator | None = None, *,
           return_trajectory: bool = False):
    """SDEdit: ``x0`` (N, 1, 28, 28) in [-1, 1] noised to step ``steps - 1``, then the last ``steps`` reverse steps
    with the unconditional estimate (c = 0). ``steps`` 0..T: 0 returns x0, T almost a new sample."""
    check_tensor("x0", x0, ndim=4, floating=True)
    return STAGE.answers.sdedit(model, schedule, x0, _check_steps(steps, schedule), generator,
                                return_trajectory=return_trajectory)


def inpaint(model, schedule, x0: torch.Tensor, mask: torch.Tensor, generator: torch.Generator | None = None, *,
            return_trajectory: bool = False):
    """Inpainting: new pixels where ``mask`` (0/1 floats, x0's shape) is 0, x0's where it is 1, which are replaced by
    x0 noised to step t at every reverse step and by x0 itself at the end."""
    check_tensor("x0", x0, ndim=4, floating=True)
    check_tensor("mask", mask, ndim=4, floating=True)
    check_same_shape("mask", mask, "x0", x0)
    return STAGE.answers.inpaint(model, schedule, x0, mask, generator, return_trajectory=return_trajectory)


def guided_edit(model, schedule, x0: torch.Tensor, labels: torch.Tensor, steps: int, guidance: float = 5.0,
                generator: torch.Generator | None = None, *, return_trajectory: bool = False):
    """SDEdit towards the digits ``labels`` (int64 (N,)) with classifier-free guidance ``guidance`` (0: plain
    SDEdit, 1: the conditional model)."""
    check_tensor("x0", x0, ndim=4, floating=True)
    if len(one_hot(labels)) != x0.shape[0]:  # one_hot checks the labels
        raise ValueError(f"`labels` must hold one digit per image of x0 ({x0.shape[0]}), got {len(labels)}")
    if not isinstance(guidance, (int, float)) or isinstance(guidance, bool):
        raise TypeError(f"`guidance` must be a number, got {guidance!r}")
    return STAGE.answers.guided_edit(model, schedule, x0, labels, _check_steps(steps, schedule), float(guidance),
                                     generator, return_trajectory=return_trajectory)
