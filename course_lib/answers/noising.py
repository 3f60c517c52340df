"""Answers of stage 1 (``01_noising``): Gaussian noising, the linear DDPM schedule, the closed-form forward process."""

from __future__ import annotations

import torch


def add_noise(x: torch.Tensor, sigma: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """``z = x + sigma * eps`` with ``eps ~ N(0, I)`` shaped like ``x`` (any shape), drawn with ``generator``."""
    eps = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    return x + sigma * eps


def ddpm_schedule(num_steps: int, beta_start: float = 1e-4,
                  beta_end: float = 0.02) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The linear schedule ``(betas, alphas, alpha_bars)``, each float64 of shape (num_steps,).

    betas grow linearly from ``beta_start`` to ``beta_end``; ``alphas = 1 - betas``;
    ``alpha_bars[t] = alphas[0] * ... * alphas[t]``, decreasing from about 1 towards 0.
    """
    betas = torch.linspace(beta_start, beta_end, num_steps, dtype=torch.float64)
    alphas = 1 - betas
    return betas, alphas, torch.cumprod(alphas, dim=0)


def q_sample(x0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor, schedule) -> torch.Tensor:
    """``x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) eps``, one timestep per example.

    x0, eps: (N, ...) with x0 in [-1, 1]; t: integers (N,) in 0..T-1; schedule: a ``DDPMSchedule``.
    """
    alpha_bar = schedule.alpha_bars[t].view(-1, *([1] * (x0.dim() - 1)))
    return alpha_bar.sqrt() * x0 + (1 - alpha_bar).sqrt() * eps
