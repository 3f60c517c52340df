"""Answers of stage 7 (``07_editing``): SDEdit, inpainting (the simple form of RePaint) and SDEdit with
classifier-free guidance, all with a class-conditional noise predictor ``model(x, t / T, c)`` from stage 4."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ...chain import device_of, run_chain, sampling_mode
from ..cfg.answers import guided_eps
from ..ddpm.answers import ddpm_step, reverse_chain
from ..noising.answers import q_sample

NUM_CLASSES = 10


def no_class(batch_size: int, device) -> torch.Tensor:
    """The "no class" rows c = 0 (batch_size, 10): a stage-4 model is then its unconditional self."""
    return torch.zeros((batch_size, NUM_CLASSES), device=device)


def noised_to(x0: torch.Tensor, t: int, schedule, generator: torch.Generator | None) -> torch.Tensor:
    """``q_sample`` of ``x0`` at the integer step ``t`` (the same for every image), eps drawn with ``generator``."""
    eps = torch.randn(x0.shape, generator=generator, device=x0.device)
    return q_sample(x0, torch.full((x0.shape[0],), t, dtype=torch.long, device=x0.device), eps, schedule)


def edit_chain(predict_eps, schedule, x0: torch.Tensor, steps: int, generator: torch.Generator | None,
               return_trajectory: bool = False):
    """SDEdit's loop: x0 noised to step ``steps - 1``, then the last ``steps`` reverse steps with ``predict_eps``.

    ``steps`` = 0 returns a copy of x0 and draws nothing. Returns (N, C, 28, 28) (and the trajectory if asked).
    """
    if steps == 0:
        return (x0.clone(), x0[None].cpu()) if return_trajectory else x0.clone()
    x = noised_to(x0, steps - 1, schedule, generator)
    return reverse_chain(predict_eps, schedule, x, generator, True, return_trajectory, num_reverse_steps=steps)


def sdedit(model, schedule, x0: torch.Tensor, steps: int, generator: torch.Generator | None = None, *,
           return_trajectory: bool = False):
    """SDEdit (Meng et al., 2022) with the unconditional estimate ``model(x, t / T, 0)``.

    x0: the images to edit (N, 1, 28, 28) in [-1, 1]; steps: 0..T, how many reverse steps to run after noising x0
    to step ``steps - 1`` (0: x0 unchanged, T: almost a new sample). The generator draws the forward noise, then
    one z per step t > 0. Returns (N, 1, 28, 28), about in [-1, 1].
    """
    device = device_of(model)
    x0 = x0.to(device)
    c = no_class(x0.shape[0], device)
    with sampling_mode(model, device):
        return edit_chain(lambda x_t, t: model(x_t, schedule.model_time(t), c), schedule, x0, steps, generator,
                          return_trajectory)


def inpaint(model, schedule, x0: torch.Tensor, mask: torch.Tensor, generator: torch.Generator | None = None, *,
            return_trajectory: bool = False):
    """Inpainting, the simple form of RePaint (Lugmayr et al., 2022), with the unconditional estimate.

    x0: images (N, 1, 28, 28) in [-1, 1] whose pixels where ``mask`` is 1 are known; mask: 0/1 floats of x0's shape
    (or broadcastable to it). From x_T ~ N(0, I), at every step t = T-1 .. 0 the known pixels are replaced by x0
    noised to step t (fresh noise), then the reverse step runs; at the end the known pixels are x0's exactly. The
    generator draws x_T, then per step the forward noise, then z (t > 0). Returns (N, 1, 28, 28).
    """
    device = device_of(model)
    x0, mask = x0.to(device), mask.to(device)
    c = no_class(x0.shape[0], device)

    def step(x_t: torch.Tensor, t: int) -> torch.Tensor:
        x_t = mask * noised_to(x0, t, schedule, generator) + (1 - mask) * x_t
        time = schedule.model_time(torch.full((x_t.shape[0],), t, dtype=torch.long, device=device))
        eps = model(x_t, time, c).float()
        z = torch.randn(x_t.shape, generator=generator, device=device) if t > 0 else None
        return ddpm_step(x_t, eps, t, schedule, z)

    x = torch.randn(x0.shape, generator=generator, device=device)
    with sampling_mode(model, device):
        x = run_chain(x, reversed(range(schedule.num_steps)), step, return_trajectory)
    if return_trajectory:
        x, trajectory = x
        return mask * x0 + (1 - mask) * x, trajectory
    return mask * x0 + (1 - mask) * x


def guided_edit(model, schedule, x0: torch.Tensor, labels: torch.Tensor, steps: int, guidance: float = 5.0,
                generator: torch.Generator | None = None, *, return_trajectory: bool = False):
    """SDEdit towards the digits ``labels`` (int64 (N,)): :func:`sdedit` with stage 4's guided estimate
    ``eps_u + guidance (eps_c - eps_u)`` in place of the unconditional one (guidance 0 gives :func:`sdedit`).

    x0 (N, 1, 28, 28) in [-1, 1]; steps 0..T as in :func:`sdedit`. Returns (N, 1, 28, 28).
    """
    device = device_of(model)
    x0 = x0.to(device)
    c = F.one_hot(labels.to(device), NUM_CLASSES).float()
    with sampling_mode(model, device):
        return edit_chain(lambda x_t, t: guided_eps(model, x_t, schedule.model_time(t), c, guidance), schedule, x0,
                          steps, generator, return_trajectory)
