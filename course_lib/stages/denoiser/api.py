"""Stage 2's public names, re-exported by ``course_lib.objectives``: the denoising loss (the networks are handed out
by ``course_lib.models``)."""

from __future__ import annotations

import torch

from ...validation import check_tensor
from . import STAGE


DENOISER_SIGMA = 0.5


def denoising_loss(model, x: torch.Tensor, sigma: float = DENOISER_SIGMA,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """Stage 2: ``|| model(x + sigma eps) - x ||^2``, the denoiser predicts the clean image.

    x: clean images (N, 1, 28, 28) in [0, 1].
    """
    check_tensor("x", x, ndim=4, floating=True)
    return STAGE.answers.denoising_loss(model, x, sigma, generator)
