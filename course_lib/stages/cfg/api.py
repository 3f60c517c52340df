"""Stage 4's public, checked names, re-exported by ``course_lib.objectives`` and ``course_lib.sampling``: label
dropout, the class-conditional loss, the guided noise estimate and guided sampling."""

from __future__ import annotations

import torch

from ...chain import IMAGE_SHAPE
from ...data import one_hot
from ...validation import check_batch_vector, check_in_range, check_positive_int, check_tensor
from . import STAGE


P_UNCOND = 0.1


def drop_labels(c: torch.Tensor, p_uncond: float = P_UNCOND,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """Replace each one-hot row of ``c`` (N, K) by zeros with probability ``p_uncond``."""
    check_tensor("c", c, ndim=2, floating=True)
    check_in_range("p_uncond", p_uncond, 0.0, 1.0)
    return STAGE.answers.drop_labels(c, p_uncond, generator)


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
    return STAGE.answers.class_conditional_loss(model, x0, labels, schedule, p_uncond, num_classes, generator)


def guided_eps(model, x_t: torch.Tensor, t: torch.Tensor, c: torch.Tensor, guidance: float) -> torch.Tensor:
    """The classifier-free-guided noise estimate ``eps_uncond + guidance (eps_cond - eps_uncond)``.

    ``model(x, t, c)`` is class-conditional; x_t (N, C, 28, 28), t floats (N,) = timestep / T, c one-hot (N, K).
    Both estimates come from one forward pass over a batch of 2N.
    """
    check_tensor("x_t", x_t, floating=True)
    check_tensor("c", c, ndim=2, floating=True)
    return STAGE.answers.guided_eps(model, x_t, t, c, guidance)


def cfg_sample(model, schedule, labels: torch.Tensor, guidance: float = 5.0, generator: torch.Generator | None = None,
               *, return_trajectory: bool = False, device=None, num_classes: int = 10,
               image_shape: tuple[int, int, int] = IMAGE_SHAPE):
    """DDPM sampling of the digits ``labels`` (int64 (N,)) with classifier-free guidance.

    ``guidance`` 0 gives the unconditional model, 1 the plain conditional one, larger values push
    samples further towards their class. Other arguments as in :func:`ddpm_sample`.
    """
    one_hot(labels, num_classes)  # checks the labels
    if not isinstance(guidance, (int, float)) or isinstance(guidance, bool):
        raise TypeError(f"`guidance` must be a number, got {guidance!r}")
    check_positive_int("num_samples", len(labels))
    return STAGE.answers.cfg_sample(model, schedule, labels, float(guidance), generator,
                                          return_trajectory=return_trajectory, device=device,
                                          num_classes=num_classes, image_shape=image_shape)
