"""Answers of stage 4 (``04_cfg``): the class-conditional UNet, label dropout, the class-conditional loss, the
classifier-free-guided noise estimate, the guided sampler and the samples of chosen digits drawn with it."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ...chain import IMAGE_SHAPE, device_of, sampling_mode, start_noise
from ...validation import check_positive_int, check_tensor
from ..ddpm.answers import FCBlock, as_map, check_time, random_timesteps, reverse_chain
from ..denoiser.answers import UNetBody
from ..noising.answers import q_sample
from .api import P_UNCOND


class ClassConditionalUNet(nn.Module):
    """Noise predictor conditioned on time and class: ``forward(x, t, c)``.

    Args of ``forward``:
        x: noisy images (N, C, 28, 28).
        t: float tensor (N,), the timestep divided by T.
        c: float one-hot classes (N, num_classes); an all-zero row means "no class".
    Returns the predicted noise, shape (N, C, 28, 28).
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 10, num_hiddens: int = 64):
        super().__init__()
        self.body = UNetBody(in_channels, num_hiddens)
        self.num_classes = check_positive_int("num_classes", num_classes)
        self.t1 = FCBlock(1, 2 * num_hiddens)
        self.t2 = FCBlock(1, num_hiddens)
        self.c1 = FCBlock(num_classes, 2 * num_hiddens)
        self.c2 = FCBlock(num_classes, num_hiddens)

    def forward(self, x: torch.Tensor, t: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        batch_size = self.body.check_input(x)
        check_time(t, batch_size)
        check_tensor("c", c, floating=True)
        if tuple(c.shape) != (batch_size, self.num_classes):
            raise ValueError(f"`c` must be one-hot classes of shape ({batch_size}, {self.num_classes}), "
                             f"got {tuple(c.shape)}")
        t = t[:, None].to(x.dtype)
        c = c.to(x.dtype)
        return self.body(x, bottleneck_scale=as_map(self.c1(c)), bottleneck_shift=as_map(self.t1(t)),
                         up_scale=as_map(self.c2(c)), up_shift=as_map(self.t2(t)))


def drop_labels(c: torch.Tensor, p_uncond: float = P_UNCOND,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """A copy of the one-hot rows ``c`` (N, K), each replaced by zeros with probability ``p_uncond``."""
    keep = torch.rand(c.shape[0], device=c.device, generator=generator) >= p_uncond
    return c * keep[:, None].to(c.dtype)


def class_conditional_loss(model, x0: torch.Tensor, labels: torch.Tensor, schedule, p_uncond: float = P_UNCOND,
                           num_classes: int = 10, generator: torch.Generator | None = None) -> torch.Tensor:
    """The DDPM loss with the one-hot class as a third input, dropped to zeros with probability ``p_uncond``.

    x0: clean images (N, 1, 28, 28) in [-1, 1]; labels: int64 (N,) digits. The generator draws the dropout,
    then t, then eps. Returns a scalar.
    """
    c = drop_labels(F.one_hot(labels, num_classes).float(), p_uncond, generator)
    t = random_timesteps(x0.shape[0], schedule, x0.device, generator)
    eps = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
    return F.mse_loss(model(q_sample(x0, t, eps, schedule), schedule.model_time(t), c), eps)


def guided_eps(model, x_t: torch.Tensor, t: torch.Tensor, c: torch.Tensor, guidance: float) -> torch.Tensor:
    """``eps_uncond + guidance (eps_cond - eps_uncond)``, both from one forward pass over a batch of 2N.

    x_t: (N, C, 28, 28); t: floats (N,) = timestep / T; c: one-hot (N, K). Returns (N, C, 28, 28).
    """
    both = model(torch.cat([x_t, x_t]), torch.cat([t, t]), torch.cat([c, torch.zeros_like(c)]))
    eps_cond, eps_uncond = both.chunk(2)
    return eps_uncond + guidance * (eps_cond - eps_uncond)


def cfg_sample(model, schedule, labels: torch.Tensor, guidance: float = 5.0, generator: torch.Generator | None = None,
               *, return_trajectory: bool = False, device=None, num_classes: int = 10,
               image_shape: tuple[int, int, int] = IMAGE_SHAPE):
    """DDPM sampling of the digits ``labels`` (int64 (N,)) with :func:`guided_eps` in place of the plain estimate.

    ``guidance`` 0 gives the unconditional model, 1 the plain conditional one, larger values push samples further
    towards their class. Returns (N, C, 28, 28) about in [-1, 1] (and the trajectory if asked).
    """
    device = device_of(model, device)
    labels = labels.to(device)
    c = F.one_hot(labels, num_classes).float()
    x = start_noise(len(labels), device, generator, image_shape)
    with sampling_mode(model, device):
        return reverse_chain(lambda x_t, t: guided_eps(model, x_t, schedule.model_time(t), c, guidance),
                             schedule, x, generator, True, return_trajectory)


def sample_digits(model, schedule, digits, per_digit: int, guidance: float,
                  generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``per_digit`` guided samples of every digit of ``digits`` (ints 0..9), all from one call of :func:`cfg_sample`.

    Returns (samples (len(digits) * per_digit, 1, 28, 28) about in [-1, 1], labels int64 (len(digits) * per_digit,)):
    ``labels[i]`` is the digit asked for ``samples[i]``.
    """
    labels = torch.tensor(list(digits), dtype=torch.int64).repeat(per_digit)
    return cfg_sample(model, schedule, labels, guidance, generator), labels
