"""Stage 1's public names, re-exported by ``course_lib.noise``: Gaussian noising at one sigma, the DDPM schedules,
the closed form ``q_sample``, the one-step Markov update, and an Euler-Maruyama simulator for the SDE warm-up.

Timesteps are integers 0..T-1, 0 the least noisy; ``alpha_bars[t]`` is the product of ``alphas[0..t]``.
"""

from __future__ import annotations

import inspect
from typing import Callable, Union

import torch
from torch import nn

from ...validation import (check_choice, check_in_range, check_positive_int, check_same_shape, check_tensor,
                           check_timesteps)
from ..stage import COURSE_NUM_STEPS
from . import STAGE


SCHEDULE_KINDS = ("linear", "cosine")
COSINE_MAX_BETA = 0.999  # where DDPMSchedule(kind="cosine") clips the betas: Nichol & Dhariwal's choice


def add_noise(x: torch.Tensor, sigma: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Return ``z = x + sigma * eps`` with ``eps ~ N(0, I)`` of the shape of ``x`` (stage 1's exercise).

    Args:
        x: clean images, any shape, floats (in [0, 1] in stage 2).
        sigma: noise level, >= 0.
        generator: the source of ``eps`` (on the device of ``x``), for reproducible noise.
    """
    check_tensor("x", x, floating=True)
    if not isinstance(sigma, (int, float)) or sigma < 0:
        raise ValueError(f"`sigma` must be a number >= 0, got {sigma!r}")
    return STAGE.answers.add_noise(x, sigma, generator)


class DDPMSchedule(nn.Module):
    """The noise schedule of a DDPM with ``num_steps`` (T) steps.

    Buffers (float32, length T, moved with ``.to(device)``):
        betas: the variance added at each step, in (0, 1).
        alphas: ``1 - betas``.
        alpha_bars: cumulative products of ``alphas``; decreasing from about 1 to about 0.

    Args:
        num_steps: T (300 in this course).
        beta_start, beta_end: first and last beta of the linear schedule.
        kind: ``"linear"`` (Ho et al.) or ``"cosine"`` (Nichol & Dhariwal, betas clipped at
            :data:`COSINE_MAX_BETA` as in the paper; ignores beta_start/end). Both tables come from stage 1's
            answers (``ddpm_schedule``, ``cosine_schedule``), loaded when a schedule is built.
    """

    def __init__(self, num_steps: int = 300, beta_start: float = 1e-4, beta_end: float = 0.02, kind: str = "linear"):
        super().__init__()
        check_positive_int("num_steps", num_steps)
        check_choice("kind", kind, SCHEDULE_KINDS)
        check_in_range("beta_start", beta_start, 0.0, 1.0)
        check_in_range("beta_end", beta_end, 0.0, 1.0)
        if kind == "linear":
            betas, alphas, alpha_bars = STAGE.answers.ddpm_schedule(num_steps, beta_start, beta_end)
        else:
            betas, alphas, alpha_bars = STAGE.answers.cosine_schedule(num_steps, max_beta=COSINE_MAX_BETA)
        self._hold(betas, alphas, alpha_bars, kind)

    @classmethod
    def from_tables(cls, betas: torch.Tensor, alphas: torch.Tensor, alpha_bars: torch.Tensor) -> "DDPMSchedule":
        """A schedule that holds the given tables, each of shape (T,): your own ``ddpm_schedule``'s, for example."""
        for name, table in (("betas", betas), ("alphas", alphas), ("alpha_bars", alpha_bars)):
            check_tensor(name, table, ndim=1, floating=True)
            check_same_shape(name, table, "betas", betas)
        schedule = cls.__new__(cls)
        nn.Module.__init__(schedule)
        schedule._hold(betas, alphas, alpha_bars, "tables")
        return schedule

    def _hold(self, betas: torch.Tensor, alphas: torch.Tensor, alpha_bars: torch.Tensor, kind: str) -> None:
        self.num_steps = len(betas)
        self.kind = kind
        self.register_buffer("betas", betas.float())
        self.register_buffer("alphas", alphas.float())
        self.register_buffer("alpha_bars", alpha_bars.float())

    def __len__(self) -> int:
        return self.num_steps

    def model_time(self, t: torch.Tensor) -> torch.Tensor:
        """The time input of the UNets: integer timesteps divided by T, floats in [0, 1)."""
        return t.float() / self.num_steps

    def alpha_bars_prev(self) -> torch.Tensor:
        """``alpha_bar_{t-1}`` for every t, with ``alpha_bar_{-1} = 1`` (no noise before the first step)."""
        return torch.cat([self.alpha_bars.new_ones(1), self.alpha_bars[:-1]])

    def extra_repr(self) -> str:
        return f"num_steps={self.num_steps}, kind={self.kind!r}"


def course_schedule(num_steps: int = COURSE_NUM_STEPS) -> DDPMSchedule:
    """The course's linear schedule with T = ``num_steps``, on the CPU (``.to(device)`` it).

    At T = 300 it is the assignment's schedule (beta from 1e-4 to 0.02). A shorter T (quick mode) scales both
    betas by 300 / T, so the sum of the betas, and with it alpha_bar at the last step (about 0.05), stays the
    same: x_T is still close to pure noise, which sampling starts from.
    """
    scale = COURSE_NUM_STEPS / check_positive_int("num_steps", num_steps)
    return DDPMSchedule(num_steps, beta_start=1e-4 * scale, beta_end=0.02 * scale)


def q_sample(x0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor, schedule: DDPMSchedule) -> torch.Tensor:
    """The closed-form forward process: ``x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) eps`` (stage 1's exercise).

    Checks its arguments (which reads ``t``'s range back from the device); the training losses call the
    unchecked form in the stage's answers so that a training step never waits for the GPU.

    Args:
        x0: clean images (N, ...), in [-1, 1].
        t: integer timesteps (N,), in 0..T-1, on the device of ``x0``.
        eps: standard normal noise with the shape of ``x0``.
        schedule: the :class:`DDPMSchedule`, on the device of ``x0``.
    """
    check_tensor("x0", x0, floating=True)
    check_timesteps("t", t, x0.shape[0], schedule.num_steps)
    check_tensor("eps", eps, floating=True)
    check_same_shape("eps", eps, "x0", x0)
    return STAGE.answers.q_sample(x0, t, eps, schedule)


def forward_step(x_prev: torch.Tensor, t: torch.Tensor, eps: torch.Tensor, schedule: DDPMSchedule) -> torch.Tensor:
    """One step of the Markov forward chain: ``x_t = sqrt(alpha_t) x_{t-1} + sqrt(beta_t) eps``.

    ``x_prev`` is ``x_{t-1}`` (the clean image when t = 0); shapes as in :func:`q_sample`.
    """
    check_tensor("x_prev", x_prev, floating=True)
    check_timesteps("t", t, x_prev.shape[0], schedule.num_steps)
    check_same_shape("eps", eps, "x_prev", x_prev)
    alpha = schedule.alphas[t].view(-1, *([1] * (x_prev.dim() - 1)))
    return alpha.sqrt() * x_prev + (1 - alpha).sqrt() * eps


def markov_forward(x0: torch.Tensor, t: int, schedule: DDPMSchedule,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """Apply :func:`forward_step` for timesteps 0..t to every image of ``x0``: a draw of ``x_t``."""
    check_tensor("x0", x0, floating=True)
    if not isinstance(t, int) or not 0 <= t < schedule.num_steps:
        raise ValueError(f"`t` must be an integer in 0..{schedule.num_steps - 1}, got {t!r}")
    x = x0
    for step in range(t + 1):
        eps = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        x = forward_step(x, torch.full((x.shape[0],), step, device=x.device), eps, schedule)
    return x


Diffusion = Union[float, Callable[[float], float], Callable[[torch.Tensor, float], Union[torch.Tensor, float]]]


def diffusion_term(diffusion: Diffusion) -> Callable[[torch.Tensor, float], Union[torch.Tensor, float]]:
    """The diffusion term of an SDE as a function ``b(x, t)``, from any of the forms :func:`euler_maruyama` takes.

    ``diffusion`` is a number g (constant), a function ``g(t)`` of the time only (one required positional
    argument), or a function ``b(x, t)`` of the state and the time (two), returning a number or a tensor shaped
    like x.
    """
    if isinstance(diffusion, bool) or not (isinstance(diffusion, (int, float)) or callable(diffusion)):
        raise TypeError(f"`diffusion` must be a number, a function g(t) or a function b(x, t), got {diffusion!r}")
    if isinstance(diffusion, (int, float)):
        constant = float(diffusion)
        return lambda x, t: constant
    try:
        parameters = inspect.signature(diffusion).parameters.values()
    except (TypeError, ValueError):
        raise TypeError("`diffusion`: cannot tell whether it is g(t) or b(x, t); pass a lambda, "
                        "e.g. lambda t: g(t) or lambda x, t: b(x, t)") from None
    positional = [p for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    required = sum(p.default is p.empty for p in positional)
    variadic = any(p.kind is p.VAR_POSITIONAL for p in parameters)
    if required == 1 or (required == 0 and len(positional) == 1 and not variadic):  # g(t)
        return lambda x, t: diffusion(t)
    if required == 2 or (required == 0 and (variadic or len(positional) >= 2)):  # b(x, t)
        return diffusion
    raise TypeError(f"`diffusion` must be a function g(t) or b(x, t), got one of {required} required arguments")


def em_step(x: torch.Tensor, t: float, dt: float, drift, diffusion, z: torch.Tensor) -> torch.Tensor:
    """Stage 1's Euler-Maruyama step of ``dx = f(x, t) dt + b(x, t) dW``: ``x + f(x, t) dt + b(x, t) sqrt(dt) z``
    (the notebook's ``em_step``, for later stages). x, z: tensors of one shape; t, dt: floats."""
    check_tensor("x", x, floating=True)
    return STAGE.answers.em_step(x, t, dt, drift, diffusion, z)


def euler_maruyama(drift: Callable[[torch.Tensor, float], torch.Tensor], diffusion: Diffusion,
                   x0: torch.Tensor, t_end: float, num_steps: int,
                   generator: torch.Generator | None = None, step: Callable | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Simulate ``dx = f(x, t) dt + b(x, t) dW`` from ``x0`` at t = 0 to ``t_end`` with Euler-Maruyama.

    ``x_{k+1} = x_k + f(x_k, t_k) dt + b(x_k, t_k) sqrt(dt) z_k``, ``z_k ~ N(0, I)`` drawn with ``generator``.

    Args:
        drift: f(x, t), returns a tensor shaped like x.
        diffusion: b(x, t) (a tensor shaped like x, or a number), or its special cases g(t) (a function of the
            time only) and a constant number g: see :func:`diffusion_term`.
        x0: starting points (N,) (one per path) or any shape.
        t_end: final time, > 0.
        num_steps: number of Euler steps.
        generator: the source of the z_k.
        step: the update ``step(x, t, dt, drift, diffusion, z) -> x_next``, called with ``diffusion`` as
            b(x, t); default: stage 1's ``em_step`` (pass your own to simulate with it).

    Returns:
        ``(times, paths)``: times (num_steps + 1,) and paths (num_steps + 1, *x0.shape).
    """
    check_tensor("x0", x0, floating=True)
    check_positive_int("num_steps", num_steps)
    if not isinstance(t_end, (int, float)) or t_end <= 0:
        raise ValueError(f"`t_end` must be a number > 0, got {t_end!r}")
    if not callable(drift):
        raise TypeError(f"`drift` must be a function f(x, t), got {drift!r}")
    b = diffusion_term(diffusion)
    if step is None:
        step = STAGE.answers.em_step
    elif not callable(step):
        raise TypeError(f"`step` must be a function step(x, t, dt, drift, diffusion, z), got {step!r}")
    dt = t_end / num_steps
    times = torch.linspace(0.0, t_end, num_steps + 1)
    x = x0
    path = [x]
    for k in range(num_steps):
        z = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        x = step(x, float(times[k]), dt, drift, b, z)
        if not isinstance(x, torch.Tensor) or x.shape != x0.shape:
            raise ValueError(f"`step` must return a tensor of the shape of x0 {tuple(x0.shape)}, got "
                             f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__} at step {k}")
        path.append(x)
    return times, torch.stack(path)
