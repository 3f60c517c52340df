"""Training objectives, one per stage. Each returns a scalar loss (mean squared error over all pixels).

All noise (and the random timesteps and label dropout) is drawn with ``generator``, which must live on
the device of the images, so a check can compare two implementations on identical draws.

The losses are what students write (stages 2-5), so their arithmetic lives in :mod:`course_lib.answers`;
the functions here check their arguments and call it. The training loop calls the answers directly (the
registry, :mod:`course_lib.stages`, names them), so a training step does not re-check every batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from . import answers
from .validation import check_batch_vector, check_in_range, check_positive_int, check_tensor

DENOISER_SIGMA = 0.5
P_UNCOND = 0.1


def denoising_loss(model, x: torch.Tensor, sigma: float = DENOISER_SIGMA,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """Stage 2: ``|| model(x + sigma eps) - x ||^2``, the denoiser predicts the clean image.

    x: clean images (N, 1, 28, 28) in [0, 1].
    """
    check_tensor("x", x, ndim=4, floating=True)
    return answers.load("denoiser").denoising_loss(model, x, sigma, generator)


def random_timesteps(batch_size: int, schedule, device, generator: torch.Generator | None = None) -> torch.Tensor:
    """Integer timesteps (batch_size,) drawn uniformly from 0..T-1."""
    check_positive_int("batch_size", batch_size)
    return answers.load("ddpm").random_timesteps(batch_size, schedule, device, generator)


def ddpm_loss(model, x0: torch.Tensor, schedule, generator: torch.Generator | None = None) -> torch.Tensor:
    """Stage 3 (Ho et al. Algorithm 1): ``|| model(x_t, t / T) - eps ||^2`` with t uniform over 0..T-1.

    x0: clean images (N, 1, 28, 28) in [-1, 1].
    """
    check_tensor("x0", x0, ndim=4, floating=True)
    return answers.load("ddpm").ddpm_loss(model, x0, schedule, generator)


def one_hot(labels: torch.Tensor, num_classes: int = 10) -> torch.Tensor:
    """Integer labels (N,) in 0..num_classes-1 to float one-hot rows (N, num_classes)."""
    check_tensor("labels", labels, ndim=1, floating=False)
    check_positive_int("num_classes", num_classes)
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ValueError(f"`labels` must hold integers in 0..{num_classes - 1}, "
                         f"got values from {int(labels.min())} to {int(labels.max())}")
    return F.one_hot(labels, num_classes).float()


def drop_labels(c: torch.Tensor, p_uncond: float = P_UNCOND,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """Replace each one-hot row of ``c`` (N, K) by zeros with probability ``p_uncond``."""
    check_tensor("c", c, ndim=2, floating=True)
    check_in_range("p_uncond", p_uncond, 0.0, 1.0)
    return answers.load("cfg").drop_labels(c, p_uncond, generator)


def class_conditional_loss(model, x0: torch.Tensor, labels: torch.Tensor, schedule,
                           p_uncond: float = P_UNCOND, num_classes: int = 10,
                           generator: torch.Generator | None = None) -> torch.Tensor:
    """Stage 4: the DDPM loss with the one-hot class, dropped to zeros with probability ``p_uncond``.

    x0: clean images (N, 1, 28, 28) in [-1, 1]; labels: int64 (N,) digits. Its checks read nothing back from the
    device (it runs at every training step): a label outside 0..num_classes-1 fails in ``F.one_hot``.
    """
    check_tensor("x0", x0, ndim=4, floating=True)
    check_tensor("labels", labels, floating=False)
    check_batch_vector("labels", labels, x0.shape[0])
    check_in_range("p_uncond", p_uncond, 0.0, 1.0)
    return answers.load("cfg").class_conditional_loss(model, x0, labels, schedule, p_uncond, num_classes, generator)


def flow_interpolate(x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Rectified flow's straight path: ``x_t = (1 - t) x0 + t eps`` with t (N,) in [0, 1]."""
    check_tensor("x0", x0, floating=True)
    check_batch_vector("t", t, x0.shape[0])
    return answers.load("flow").flow_interpolate(x0, eps, t)


def flow_loss(model, x0: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Stage 5 (rectified flow): ``|| model(x_t, t) - (eps - x0) ||^2`` with t ~ Uniform[0, 1].

    x0: clean images (N, 1, 28, 28) in [-1, 1].
    """
    check_tensor("x0", x0, ndim=4, floating=True)
    return answers.load("flow").flow_loss(model, x0, generator)
