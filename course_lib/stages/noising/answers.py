"""Answers of stage 1 (``01_noising``): Gaussian noising, the linear and cosine DDPM schedules, the closed-form
forward process, and one Euler-Maruyama step of an SDE."""

from __future__ import annotations

import math

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


def cosine_schedule(num_steps: int, offset: float = 0.008,
                    max_beta: float = 0.02) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Nichol & Dhariwal's cosine schedule ``(betas, alphas, alpha_bars)``, each float64 of shape (num_steps,).

    ``f(s) = cos^2((s / T + offset) / (1 + offset) * pi / 2)`` for s = 0..T; ``betas[t] = 1 - f(t + 1) / f(t)``,
    clipped at ``max_beta`` (0.02 as in SUTD's notebook; the paper clips at 0.999); ``alphas = 1 - betas``;
    ``alpha_bars`` their cumulative product, which equals ``f(t + 1) / f(0)`` until a beta is clipped.
    """
    s = torch.arange(num_steps + 1, dtype=torch.float64)
    f = torch.cos((s / num_steps + offset) / (1 + offset) * math.pi / 2) ** 2
    betas = (1 - f[1:] / f[:-1]).clamp(max=max_beta)
    alphas = 1 - betas
    return betas, alphas, torch.cumprod(alphas, dim=0)


def em_step(x: torch.Tensor, t: float, dt: float, drift, diffusion, z: torch.Tensor) -> torch.Tensor:
    """One Euler-Maruyama step of ``dx = f(x, t) dt + b(x, t) dW``: ``x + f(x, t) dt + b(x, t) sqrt(dt) z``.

    x, z: tensors of one shape (z ~ N(0, I)); t, dt: floats; drift f(x, t) and diffusion b(x, t) return a tensor
    shaped like x or a number.
    """
    return x + drift(x, t) * dt + diffusion(x, t) * math.sqrt(dt) * z


def q_sample(x0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor, schedule) -> torch.Tensor:
    """``x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) eps``, one timestep per example.

    x0, eps: (N, ...) with x0 in [-1, 1]; t: integers (N,) in 0..T-1; schedule: a ``DDPMSchedule``.
    """
    alpha_bar = schedule.alpha_bars[t].view(-1, *([1] * (x0.dim() - 1)))
    return alpha_bar.sqrt() * x0 + (1 - alpha_bar).sqrt() * eps
