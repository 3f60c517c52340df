"""Samplers: DDPM (Ho et al. Algorithm 2), classifier-free guidance, DDIM, and the rectified-flow Euler sampler.

Each sampler is one update (a *step*) and a loop, and every loop runs through :func:`run_chain`, the one place
that keeps the trajectory. All samplers share one signature, the one students write in the notebooks:
``(model, [schedule,] what-to-sample, [steps,] generator=None, ...)``, with the library's extras
(``return_trajectory``, ``device``, ``image_shape``) keyword-only. A student's loop returns
``(samples, trajectory)``; the library's does so with ``return_trajectory=True``.

Every sampler draws its noise with ``generator`` (on the sampling device), returns images in about
[-1, 1] of shape (N, C, 28, 28), and with ``return_trajectory=True`` also returns every intermediate
image as a CPU tensor (steps + 1, N, C, 28, 28), first frame pure noise, last frame the result.
Models are put in eval mode while sampling and run under the device's autocast precision.

The DDPM, guided and flow samplers are students' exercises (stages 3-5): their loops live in
:mod:`course_lib.answers`, and the functions here check their arguments and call them. DDIM is given.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Iterable

import torch
from torch import nn

from . import answers
from .objectives import one_hot
from .runtime import autocast_dtype
from .validation import check_positive_int, check_tensor

IMAGE_SHAPE = (1, 28, 28)


# ------------------------------------------------------------------------------ what every loop shares


def device_of(model, device=None) -> torch.device:
    """``device`` if given, else the device of the model's first parameter, else the CPU."""
    if device is not None:
        return torch.device(device)
    if isinstance(model, nn.Module):
        for parameter in model.parameters():
            return parameter.device
    return torch.device("cpu")


@contextlib.contextmanager
def sampling_mode(model, device: torch.device):
    """Eval mode, no autograd, and the device's autocast precision; restores the training flag after."""
    was_training = isinstance(model, nn.Module) and model.training
    if isinstance(model, nn.Module):
        model.eval()
    dtype = autocast_dtype(device)
    try:
        with torch.inference_mode(), torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            yield
    finally:
        if was_training:
            model.train()


def start_noise(num_samples: int, device, generator, image_shape=IMAGE_SHAPE) -> torch.Tensor:
    """Pure noise (num_samples, *image_shape) drawn with ``generator``: where every sampler starts."""
    check_positive_int("num_samples", num_samples)
    return torch.randn((num_samples, *image_shape), device=device, generator=generator)


def run_chain(x: torch.Tensor, steps: Iterable, update: Callable[[torch.Tensor, object], torch.Tensor],
              return_trajectory: bool = False):
    """``x <- update(x, step)`` for each step in order; returns the last ``x``.

    With ``return_trajectory`` returns ``(x, trajectory)``: every frame from the start to the end, on the CPU,
    stacked to (number of steps + 1, *x.shape).
    """
    trajectory = [x.cpu()] if return_trajectory else None
    for step in steps:
        x = update(x, step)
        if trajectory is not None:
            trajectory.append(x.cpu())
    return (x, torch.stack(trajectory)) if return_trajectory else x


# ------------------------------------------------------------------------------ DDPM and guidance (stages 3-4)


def ddpm_step(x_t: torch.Tensor, eps: torch.Tensor, t: int, schedule, z: torch.Tensor | None = None) -> torch.Tensor:
    """One reverse step x_t -> x_{t-1} (t an integer in 0..T-1, 0 the last step); see
    :func:`course_lib.answers.ddpm.ddpm_step` for the formula. ``z``: noise shaped like ``x_t``, or ``None``."""
    check_tensor("x_t", x_t, floating=True)
    if isinstance(t, bool) or not isinstance(t, int) or not 0 <= t < schedule.num_steps:
        raise ValueError(f"`t` must be an integer in 0..{schedule.num_steps - 1}, got {t!r}")
    return answers.load("ddpm").ddpm_step(x_t, eps, t, schedule, z)


def ddpm_sample(model, schedule, num_samples: int = 40, generator: torch.Generator | None = None,
                stochastic: bool = True, *, return_trajectory: bool = False, device=None,
                image_shape: tuple[int, int, int] = IMAGE_SHAPE):
    """Ho et al. Algorithm 2 with a time-conditional noise predictor ``model(x_t, t / T)``.

    Args:
        model: e.g. a :class:`~course_lib.models.TimeConditionalUNet`.
        schedule: the schedule it was trained with, on the sampling device.
        num_samples: N.
        generator: source of x_T and of every z.
        stochastic: ``False`` drops the z term (the experiment of stage 3).
        return_trajectory: also return all T + 1 intermediate images (on the CPU).
        device: where to sample (default: the model's device).
    """
    check_positive_int("num_samples", num_samples)
    return answers.load("ddpm").ddpm_sample(model, schedule, num_samples, generator, stochastic,
                                            return_trajectory=return_trajectory, device=device,
                                            image_shape=image_shape)


def guided_eps(model, x_t: torch.Tensor, t: torch.Tensor, c: torch.Tensor, guidance: float) -> torch.Tensor:
    """The classifier-free-guided noise estimate ``eps_uncond + guidance (eps_cond - eps_uncond)``.

    ``model(x, t, c)`` is class-conditional; x_t (N, C, 28, 28), t floats (N,) = timestep / T, c one-hot (N, K).
    Both estimates come from one forward pass over a batch of 2N.
    """
    check_tensor("x_t", x_t, floating=True)
    check_tensor("c", c, ndim=2, floating=True)
    return answers.load("cfg").guided_eps(model, x_t, t, c, guidance)


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
    return answers.load("cfg").cfg_sample(model, schedule, labels, float(guidance), generator,
                                          return_trajectory=return_trajectory, device=device,
                                          num_classes=num_classes, image_shape=image_shape)


# ------------------------------------------------------------------------------ DDIM (given)


def ddim_timesteps(num_steps: int, num_sampling_steps: int) -> torch.Tensor:
    """``num_sampling_steps`` integer timesteps evenly spread from T-1 down to 0 (decreasing, distinct)."""
    check_positive_int("num_sampling_steps", num_sampling_steps)
    if num_sampling_steps > num_steps:
        raise ValueError(f"`num_sampling_steps` must be at most the schedule's {num_steps} steps, "
                         f"got {num_sampling_steps}")
    return torch.linspace(num_steps - 1, 0, num_sampling_steps).round().long()


def ddim_step(x_t: torch.Tensor, eps: torch.Tensor, alpha_bar: torch.Tensor, alpha_bar_next: torch.Tensor,
              eta: float = 0.0, z: torch.Tensor | None = None) -> torch.Tensor:
    """One DDIM step (Song et al. 2021, eq. 12) from a timestep with ``alpha_bar`` to the next with ``alpha_bar_next``:

        x0_hat = (x_t - sqrt(1 - alpha_bar) eps) / sqrt(alpha_bar)
        sigma  = eta sqrt((1 - alpha_bar_next) / (1 - alpha_bar)) sqrt(1 - alpha_bar / alpha_bar_next)
        x_next = sqrt(alpha_bar_next) x0_hat + sqrt(1 - alpha_bar_next - sigma^2) eps + sigma z

    ``eta = 0`` is deterministic; ``eta = 1`` gives DDPM's posterior variance. ``z``: noise shaped like ``x_t``
    (needed when ``eta > 0``).
    """
    x0_hat = (x_t - (1 - alpha_bar).sqrt() * eps) / alpha_bar.sqrt()
    sigma = eta * ((1 - alpha_bar_next) / (1 - alpha_bar) * (1 - alpha_bar / alpha_bar_next)).sqrt()
    x_next = alpha_bar_next.sqrt() * x0_hat + (1 - alpha_bar_next - sigma**2).clamp(min=0).sqrt() * eps
    return x_next + sigma * z if eta > 0 else x_next


def ddim_sample(model, schedule, num_samples: int = 40, num_sampling_steps: int = 50,
                generator: torch.Generator | None = None, *, eta: float = 0.0, return_trajectory: bool = False,
                device=None, image_shape: tuple[int, int, int] = IMAGE_SHAPE):
    """DDIM over ``num_sampling_steps`` timesteps of :func:`ddim_timesteps` (alpha_bar = 1 after the last), with
    :func:`ddim_step`. With ``eta = 0`` only x_T is random; ``eta = 1`` approaches DDPM. Other arguments as in
    :func:`ddpm_sample`.

    On the course's schedule (alpha_bar at the last step 0.048, not 0) x_T ~ N(0, I) is not quite the distribution
    the model saw at that step. DDPM's noise makes it forget its start; deterministic DDIM carries the mismatch to
    its output, so more steps stop helping (tests/test_ddim_gaussian.py measures it with an exact predictor).
    """
    if not isinstance(eta, (int, float)) or isinstance(eta, bool) or not 0 <= eta <= 1:
        raise ValueError(f"`eta` must be a number in [0, 1], got {eta!r}")
    device = device_of(model, device)
    timesteps = ddim_timesteps(schedule.num_steps, num_sampling_steps).tolist()
    alpha_bars = torch.cat([schedule.alpha_bars[timesteps], schedule.alpha_bars.new_ones(1)])
    x = start_noise(num_samples, device, generator, image_shape)

    def step(x_t: torch.Tensor, i: int) -> torch.Tensor:
        t_batch = torch.full((num_samples,), timesteps[i], device=device, dtype=torch.long)
        eps = model(x_t, schedule.model_time(t_batch)).float()
        z = torch.randn(x_t.shape, device=device, generator=generator) if eta > 0 else None
        return ddim_step(x_t, eps, alpha_bars[i], alpha_bars[i + 1], eta, z)

    with sampling_mode(model, device):
        return run_chain(x, range(len(timesteps)), step, return_trajectory)


# ------------------------------------------------------------------------------ rectified flow (stage 5)


def flow_sample(model, num_samples: int = 40, num_sampling_steps: int = 50,
                generator: torch.Generator | None = None, *, return_trajectory: bool = False, device=None,
                image_shape: tuple[int, int, int] = IMAGE_SHAPE):
    """Rectified flow: integrate dx/dt = v(x, t) from noise at t = 1 to data at t = 0 with Euler steps.

    ``model(x_t, t)`` predicts the velocity ``eps - x0`` (t floats (N,) in [0, 1]);
    each step is ``x <- x - v / num_sampling_steps``. Other arguments as in :func:`ddpm_sample`.
    """
    check_positive_int("num_samples", num_samples)
    check_positive_int("num_sampling_steps", num_sampling_steps)
    return answers.load("flow").flow_sample(model, num_samples, num_sampling_steps, generator,
                                            return_trajectory=return_trajectory, device=device,
                                            image_shape=image_shape)
