"""Stage 3's public, checked names, re-exported by ``course_lib.objectives`` and ``course_lib.sampling``: random
timesteps, the DDPM loss, the reverse step and ancestral sampling."""

from __future__ import annotations

import torch

from ...chain import IMAGE_SHAPE
from ...validation import check_positive_int, check_tensor
from . import STAGE


def random_timesteps(batch_size: int, schedule, device, generator: torch.Generator | None = None) -> torch.Tensor:
    """Integer timesteps (batch_size,) drawn uniformly from 0..T-1."""
    check_positive_int("batch_size", batch_size)
    return STAGE.answers.random_timesteps(batch_size, schedule, device, generator)


def ddpm_loss(model, x0: torch.Tensor, schedule, generator: torch.Generator | None = None) -> torch.Tensor:
    """Stage 3 (Ho et al. Algorithm 1): ``|| model(x_t, t / T) - eps ||^2`` with t uniform over 0..T-1.

    x0: clean images (N, 1, 28, 28) in [-1, 1].
    """
    check_tensor("x0", x0, ndim=4, floating=True)
    return STAGE.answers.ddpm_loss(model, x0, schedule, generator)


def ddpm_step(x_t: torch.Tensor, eps: torch.Tensor, t: int, schedule, z: torch.Tensor | None = None) -> torch.Tensor:
    """One reverse step x_t -> x_{t-1} (t an integer in 0..T-1, 0 the last step); see
    the notebook's ``ddpm_step`` for the formula. ``z``: noise shaped like ``x_t``, or ``None``."""
    check_tensor("x_t", x_t, floating=True)
    if isinstance(t, bool) or not isinstance(t, int) or not 0 <= t < schedule.num_steps:
        raise ValueError(f"`t` must be an integer in 0..{schedule.num_steps - 1}, got {t!r}")
    return STAGE.answers.ddpm_step(x_t, eps, t, schedule, z)


def ddpm_sample(model, schedule, num_samples: int = 40, generator: torch.Generator | None = None,
                stochastic: bool = True, *, return_trajectory: bool = False, device=None,
                image_shape: tuple[int, int, int] = IMAGE_SHAPE):
    """Ho et al. Algorithm 2 with a time-conditional noise predictor ``model(x_t, t / T)``.

    Args:
        model: e.g. a :class:`~course_lib.models.TimeConditionalUNet`.
        schedule: the schedule it was trained with, on the sampling device.
        num_samples: N.
        generator: source of x_T and of every z.
        stochastic: ``False`` drops the z term (the experiment of stage 3).
        return_trajectory: also return all T + 1 intermediate images (on the CPU).
        device: where to sample (default: the model's device).
    """
    check_positive_int("num_samples", num_samples)
    return STAGE.answers.ddpm_sample(model, schedule, num_samples, generator, stochastic,
                                            return_trajectory=return_trajectory, device=device,
                                            image_shape=image_shape)
