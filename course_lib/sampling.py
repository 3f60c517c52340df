"""Samplers: DDPM (Ho et al. Algorithm 2), classifier-free guidance, deterministic DDIM, and the
rectified-flow Euler sampler.

Every sampler draws its noise with ``generator`` (on the sampling device), returns images in about
[-1, 1] of shape (N, C, 28, 28), and with ``return_trajectory=True`` also returns every intermediate
image as a CPU tensor (steps + 1, N, C, 28, 28), first frame pure noise, last frame the result.
Models are put in eval mode while sampling and run under the device's autocast precision.
"""

from __future__ import annotations

import contextlib
from typing import Callable

import torch
from torch import nn

from .noise import DDPMSchedule
from .objectives import one_hot
from .runtime import autocast_dtype
from .validation import check_positive_int, check_tensor

IMAGE_SHAPE = (1, 28, 28)
EpsPredictor = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def ddpm_step(x_t: torch.Tensor, eps: torch.Tensor, t: int, schedule: DDPMSchedule,
              z: torch.Tensor | None) -> torch.Tensor:
    """One reverse step x_t -> x_{t-1} (t an integer in 0..T-1, 0 the last step).

    Written as the posterior mean q(x_{t-1} | x_t, x0_hat) plus noise:
        x0_hat  = (x_t - sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_bar_t)
        x_{t-1} = sqrt(alpha_bar_{t-1}) beta_t / (1 - alpha_bar_t) x0_hat
                  + sqrt(alpha_t) (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t) x_t + sqrt(beta_t) z
    ``z`` is standard normal noise shaped like ``x_t``, or ``None`` for no noise (always so at t = 0).
    """
    alpha_bar = schedule.alpha_bars[t]
    alpha_bar_prev = schedule.alpha_bars[t - 1] if t > 0 else schedule.alpha_bars.new_ones(())
    beta, alpha = schedule.betas[t], schedule.alphas[t]
    x0_hat = (x_t - (1 - alpha_bar).sqrt() * eps) / alpha_bar.sqrt()
    mean = (alpha_bar_prev.sqrt() * beta / (1 - alpha_bar)) * x0_hat \
        + (alpha.sqrt() * (1 - alpha_bar_prev) / (1 - alpha_bar)) * x_t
    if t == 0 or z is None:
        return mean
    return mean + beta.sqrt() * z


def _device_of(model, device) -> torch.device:
    if device is not None:
        return torch.device(device)
    if isinstance(model, nn.Module):
        for parameter in model.parameters():
            return parameter.device
    return torch.device("cpu")


@contextlib.contextmanager
def _sampling_mode(model, device: torch.device):
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


def _start_noise(num_samples: int, device, generator, image_shape) -> torch.Tensor:
    check_positive_int("num_samples", num_samples)
    return torch.randn((num_samples, *image_shape), device=device, generator=generator)


def _ddpm_loop(predict_eps: EpsPredictor, schedule: DDPMSchedule, x: torch.Tensor, generator,
               return_trajectory: bool, stochastic: bool):
    trajectory = [x.cpu()] if return_trajectory else None
    for t in reversed(range(schedule.num_steps)):
        t_batch = torch.full((x.shape[0],), t, device=x.device, dtype=torch.long)
        eps = predict_eps(x, t_batch).float()
        z = torch.randn(x.shape, device=x.device, generator=generator) if stochastic and t > 0 else None
        x = ddpm_step(x, eps, t, schedule, z)
        if trajectory is not None:
            trajectory.append(x.cpu())
    return (x, torch.stack(trajectory)) if return_trajectory else x


def ddpm_sample(model, schedule: DDPMSchedule, num_samples: int = 40, *, generator: torch.Generator | None = None,
                return_trajectory: bool = False, stochastic: bool = True, device=None,
                image_shape: tuple[int, int, int] = IMAGE_SHAPE):
    """Ho et al. Algorithm 2 with a time-conditional noise predictor ``model(x_t, t / T)``.

    Args:
        model: e.g. a :class:`~course_lib.models.TimeConditionalUNet`.
        schedule: the schedule it was trained with, on the sampling device.
        num_samples: N.
        generator: source of x_T and of every z.
        return_trajectory: also return all T + 1 intermediate images (on the CPU).
        stochastic: ``False`` drops the z term (the experiment of stage 3).
        device: where to sample (default: the model's device).
    """
    device = _device_of(model, device)
    x = _start_noise(num_samples, device, generator, image_shape)
    with _sampling_mode(model, device):
        return _ddpm_loop(lambda x_t, t: model(x_t, schedule.model_time(t)), schedule, x, generator,
                          return_trajectory, stochastic)


def guided_eps(model, schedule: DDPMSchedule, labels: torch.Tensor, guidance: float,
               num_classes: int = 10) -> EpsPredictor:
    """The classifier-free-guided noise predictor for a class-conditional ``model(x_t, t / T, c)``.

    ``eps = eps_uncond + guidance * (eps_cond - eps_uncond)``; the conditional and unconditional
    predictions come from one forward pass over a batch of 2N.
    """
    c = one_hot(labels, num_classes)
    c_both = torch.cat([c, torch.zeros_like(c)])

    def predict(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        eps_cond, eps_uncond = model(torch.cat([x_t, x_t]), schedule.model_time(t).repeat(2), c_both).chunk(2)
        return eps_uncond + guidance * (eps_cond - eps_uncond)

    return predict


def cfg_sample(model, schedule: DDPMSchedule, labels: torch.Tensor, guidance: float = 5.0, *,
               generator: torch.Generator | None = None, return_trajectory: bool = False, device=None,
               num_classes: int = 10, image_shape: tuple[int, int, int] = IMAGE_SHAPE):
    """DDPM sampling of the digits ``labels`` (int64 (N,)) with classifier-free guidance.

    ``guidance`` 0 gives the unconditional model, 1 the plain conditional one, larger values push
    samples further towards their class. Other arguments as in :func:`ddpm_sample`.
    """
    check_tensor("labels", labels, ndim=1, floating=False)
    if not isinstance(guidance, (int, float)) or isinstance(guidance, bool):
        raise TypeError(f"`guidance` must be a number, got {guidance!r}")
    device = _device_of(model, device)
    labels = labels.to(device)
    x = _start_noise(len(labels), device, generator, image_shape)
    with _sampling_mode(model, device):
        return _ddpm_loop(guided_eps(model, schedule, labels, float(guidance), num_classes), schedule, x,
                          generator, return_trajectory, stochastic=True)


def ddim_timesteps(num_steps: int, num_sampling_steps: int) -> torch.Tensor:
    """``num_sampling_steps`` integer timesteps evenly spread from T-1 down to 0 (decreasing, distinct)."""
    check_positive_int("num_sampling_steps", num_sampling_steps)
    if num_sampling_steps > num_steps:
        raise ValueError(f"`num_sampling_steps` must be at most the schedule's {num_steps} steps, "
                         f"got {num_sampling_steps}")
    return torch.linspace(num_steps - 1, 0, num_sampling_steps).round().long()


def ddim_sample(model, schedule: DDPMSchedule, num_samples: int = 40, num_sampling_steps: int = 50, *,
                generator: torch.Generator | None = None, return_trajectory: bool = False, device=None,
                image_shape: tuple[int, int, int] = IMAGE_SHAPE):
    """Deterministic DDIM (eta = 0) over a subsequence of ``num_sampling_steps`` timesteps.

    From t to the next timestep s < t (alpha_bar_s = 1 after the last):
        x0_hat = (x_t - sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_bar_t)
        x_s    = sqrt(alpha_bar_s) x0_hat + sqrt(1 - alpha_bar_s) eps
    Only x_T is random. Other arguments as in :func:`ddpm_sample`.
    """
    device = _device_of(model, device)
    timesteps = ddim_timesteps(schedule.num_steps, num_sampling_steps).tolist()
    x = _start_noise(num_samples, device, generator, image_shape)
    trajectory = [x.cpu()] if return_trajectory else None
    with _sampling_mode(model, device):
        for i, t in enumerate(timesteps):
            alpha_bar = schedule.alpha_bars[t]
            alpha_bar_next = schedule.alpha_bars[timesteps[i + 1]] if i + 1 < len(timesteps) else alpha_bar.new_ones(())
            t_batch = torch.full((num_samples,), t, device=device, dtype=torch.long)
            eps = model(x, schedule.model_time(t_batch)).float()
            x0_hat = (x - (1 - alpha_bar).sqrt() * eps) / alpha_bar.sqrt()
            x = alpha_bar_next.sqrt() * x0_hat + (1 - alpha_bar_next).sqrt() * eps
            if trajectory is not None:
                trajectory.append(x.cpu())
    return (x, torch.stack(trajectory)) if return_trajectory else x


def flow_sample(model, num_samples: int = 40, num_sampling_steps: int = 50, *,
                generator: torch.Generator | None = None, return_trajectory: bool = False, device=None,
                image_shape: tuple[int, int, int] = IMAGE_SHAPE):
    """Rectified flow: integrate dx/dt = v(x, t) from noise at t = 1 to data at t = 0 with Euler steps.

    ``model(x_t, t)`` predicts the velocity ``eps - x0`` (t floats (N,) in [0, 1]);
    each step is ``x <- x - v / num_sampling_steps``. Other arguments as in :func:`ddpm_sample`.
    """
    check_positive_int("num_sampling_steps", num_sampling_steps)
    device = _device_of(model, device)
    x = _start_noise(num_samples, device, generator, image_shape)
    trajectory = [x.cpu()] if return_trajectory else None
    dt = 1.0 / num_sampling_steps
    with _sampling_mode(model, device):
        for k in range(num_sampling_steps):
            t = torch.full((num_samples,), 1.0 - k * dt, device=device)
            x = x - dt * model(x, t).float()
            if trajectory is not None:
                trajectory.append(x.cpu())
    return (x, torch.stack(trajectory)) if return_trajectory else x
