"""Stage 5's public, checked names, re-exported by ``course_lib.objectives`` and ``course_lib.sampling``: the
straight path, the flow-matching loss and the Euler sampler."""

from __future__ import annotations

import torch

from ...chain import IMAGE_SHAPE
from ...validation import check_batch_vector, check_positive_int, check_tensor
from . import STAGE


def flow_interpolate(x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Rectified flow's straight path: ``x_t = (1 - t) x0 + t eps`` with t (N,) in [0, 1]."""
    check_tensor("x0", x0, floating=True)
    check_batch_vector("t", t, x0.shape[0])
    return STAGE.answers.flow_interpolate(x0, eps, t)


def flow_loss(model, x0: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Stage 5 (rectified flow): ``|| model(x_t, t) - (eps - x0) ||^2`` with t ~ Uniform[0, 1].

    x0: clean images (N, 1, 28, 28) in [-1, 1].
    """
    check_tensor("x0", x0, ndim=4, floating=True)
    return STAGE.answers.flow_loss(model, x0, generator)


def flow_sample(model, num_samples: int = 40, num_sampling_steps: int = 50,
                generator: torch.Generator | None = None, *, return_trajectory: bool = False, device=None,
                image_shape: tuple[int, int, int] = IMAGE_SHAPE):
    """Rectified flow: integrate dx/dt = v(x, t) from noise at t = 1 to data at t = 0 with Euler steps.

    ``model(x_t, t)`` predicts the velocity ``eps - x0`` (t floats (N,) in [0, 1]);
    each step is ``x <- x - v / num_sampling_steps``. Other arguments as in :func:`ddpm_sample`.
    """
    check_positive_int("num_samples", num_samples)
    check_positive_int("num_sampling_steps", num_sampling_steps)
    return STAGE.answers.flow_sample(model, num_samples, num_sampling_steps, generator,
                                            return_trajectory=return_trajectory, device=device,
                                            image_shape=image_shape)
