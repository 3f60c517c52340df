"""Answers of stage 5 (``05_flow``): the rectified-flow loss and its Euler sampler.

Time runs from t = 0 (data) to t = 1 (noise), as in the DDPM stages; Liu et al. and Lipman et al. write the
opposite direction (t = 1 the data).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ...chain import IMAGE_SHAPE, device_of, run_chain, sampling_mode, start_noise


def flow_interpolate(x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The straight path ``x_t = (1 - t) x0 + t eps`` with t (N,) in [0, 1]; x0, eps (N, ...)."""
    t = t.view(-1, *([1] * (x0.dim() - 1))).to(x0.dtype)
    return (1 - t) * x0 + t * eps


def flow_loss(model, x0: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """``mean (model(x_t, t) - (eps - x0))^2`` with t ~ Uniform[0, 1] (drawn first), then eps.

    x0: clean images (N, 1, 28, 28) in [-1, 1]. Returns a scalar.
    """
    t = torch.rand(x0.shape[0], device=x0.device, generator=generator)
    eps = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
    return F.mse_loss(model(flow_interpolate(x0, eps, t), t), eps - x0)


def flow_sample(model, num_samples: int = 40, num_sampling_steps: int = 50,
                generator: torch.Generator | None = None, *, return_trajectory: bool = False, device=None,
                image_shape: tuple[int, int, int] = IMAGE_SHAPE):
    """Integrate dx/dt = v(x, t) from noise at t = 1 to data at t = 0 with ``num_sampling_steps`` Euler steps.

    ``model(x_t, t)`` predicts the velocity ``eps - x0`` (t floats (N,) in [0, 1]); step k evaluates it at
    ``t_k = 1 - k / num_sampling_steps`` and moves ``x <- x - v / num_sampling_steps``. Returns (N, C, 28, 28),
    about in [-1, 1].
    """
    device = device_of(model, device)
    x = start_noise(num_samples, device, generator, image_shape)
    dt = 1.0 / num_sampling_steps

    def step(x_t: torch.Tensor, k: int) -> torch.Tensor:
        return x_t - dt * model(x_t, torch.full((x_t.shape[0],), 1.0 - k * dt, device=device)).float()

    with sampling_mode(model, device):
        return run_chain(x, range(num_sampling_steps), step, return_trajectory)
