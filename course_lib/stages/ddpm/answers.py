"""Answers of stage 3 (``03_ddpm``): the FCBlock, the time-conditioned UNet, the DDPM loss (Ho et al.
Algorithm 1), one reverse step, the sampling loop (Algorithm 2) and deterministic DDIM (Song et al. 2021)."""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ...chain import IMAGE_SHAPE, device_of, run_chain, sampling_mode, start_noise
from ...validation import check_batch_vector, check_tensor
from ..denoiser.answers import UNetBody
from ..noising.answers import q_sample
from .api import ddim_timesteps


EpsPredictor = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class FCBlock(nn.Sequential):
    """Linear(F_in, F_out) + GELU + Linear(F_out, F_out): embeds t (F_in = 1) or a one-hot class (F_in = 10).

    (N, F_in) -> (N, F_out).
    """

    def __init__(self, in_features: int, out_features: int):
        super().__init__(nn.Linear(in_features, out_features), nn.GELU(), nn.Linear(out_features, out_features))


def as_map(features: torch.Tensor) -> torch.Tensor:
    """(N, F) -> (N, F, 1, 1), to broadcast over a feature map."""
    return features[:, :, None, None]


def check_time(t, batch_size: int) -> torch.Tensor:
    """Check the UNets' time input: floats of shape (batch_size,)."""
    check_tensor("t", t, floating=True)
    return check_batch_vector("t", t, batch_size)


class TimeConditionalUNet(nn.Module):
    """Noise predictor conditioned on time: ``forward(x, t)``.

    Args of ``forward``:
        x: noisy images (N, C, 28, 28).
        t: float tensor (N,), the timestep already divided by T (in [0, 1]).
    Returns the predicted noise (or velocity), shape (N, C, 28, 28).
    """

    def __init__(self, in_channels: int = 1, num_hiddens: int = 64):
        super().__init__()
        self.body = UNetBody(in_channels, num_hiddens)
        self.t1 = FCBlock(1, 2 * num_hiddens)
        self.t2 = FCBlock(1, num_hiddens)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        check_time(t, self.body.check_input(x))
        t = t[:, None].to(x.dtype)
        return self.body(x, bottleneck_shift=as_map(self.t1(t)), up_shift=as_map(self.t2(t)))


def random_timesteps(batch_size: int, schedule, device, generator: torch.Generator | None = None) -> torch.Tensor:
    """Integer timesteps (batch_size,) drawn uniformly from 0..T-1."""
    return torch.randint(0, schedule.num_steps, (batch_size,), device=device, generator=generator)


def ddpm_loss(model, x0: torch.Tensor, schedule, generator: torch.Generator | None = None) -> torch.Tensor:
    """Algorithm 1: ``mean (model(x_t, t / T) - eps)^2`` with t uniform over 0..T-1 (drawn first), then eps.

    x0: clean images (N, 1, 28, 28) in [-1, 1]. Returns a scalar.
    """
    t = random_timesteps(x0.shape[0], schedule, x0.device, generator)
    eps = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
    return F.mse_loss(model(q_sample(x0, t, eps, schedule), schedule.model_time(t)), eps)


def ddpm_step(x_t: torch.Tensor, eps: torch.Tensor, t: int, schedule, z: torch.Tensor | None = None) -> torch.Tensor:
    """One reverse step x_t -> x_{t-1} (t an integer in 0..T-1, 0 the last step), with sigma_t^2 = beta_t.

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


def reverse_chain(predict_eps: EpsPredictor, schedule, x: torch.Tensor, generator: torch.Generator | None,
                  stochastic: bool = True, return_trajectory: bool = False, num_reverse_steps: int | None = None):
    """Algorithm 2's loop from ``x = x_T``: for t = T-1 .. 0, ``x <- ddpm_step(x, predict_eps(x, t), t, z)``.

    ``predict_eps(x_t, t)`` takes integer timesteps (N,); one ``z`` per step t > 0 comes from ``generator``
    (none when ``stochastic`` is False). ``num_reverse_steps`` k runs only the last k steps, t = k-1 .. 0, from
    ``x`` = the image at step k-1 (stage 7's edits; default: all T). Returns x_0, or ``(x_0, trajectory)`` as
    :func:`~course_lib.sampling.run_chain` does.
    """
    def step(x_t: torch.Tensor, t: int) -> torch.Tensor:
        eps = predict_eps(x_t, torch.full((x_t.shape[0],), t, device=x_t.device, dtype=torch.long)).float()
        z = torch.randn(x_t.shape, device=x_t.device, generator=generator) if stochastic and t > 0 else None
        return ddpm_step(x_t, eps, t, schedule, z)

    steps = schedule.num_steps if num_reverse_steps is None else num_reverse_steps
    return run_chain(x, reversed(range(steps)), step, return_trajectory)


def ddpm_sample(model, schedule, num_samples: int = 40, generator: torch.Generator | None = None,
                stochastic: bool = True, *, return_trajectory: bool = False, device=None,
                image_shape: tuple[int, int, int] = IMAGE_SHAPE):
    """Algorithm 2 with a time-conditional noise predictor ``model(x_t, t / T)``: samples (N, C, 28, 28), about in
    [-1, 1].

    x_T and every z come from ``generator``; ``stochastic=False`` drops the z terms; ``return_trajectory`` also
    returns every intermediate image (T + 1, N, C, 28, 28) on the CPU. Runs on ``device`` (default: the model's).
    """
    device = device_of(model, device)
    x = start_noise(num_samples, device, generator, image_shape)
    with sampling_mode(model, device):
        return reverse_chain(lambda x_t, t: model(x_t, schedule.model_time(t)), schedule, x, generator,
                             stochastic, return_trajectory)


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
    """DDIM over the ``num_sampling_steps`` timesteps of :func:`ddim_timesteps` (alpha_bar = 1 after the last), with
    :func:`ddim_step`: samples (N, C, 28, 28), about in [-1, 1]. With ``eta = 0`` only x_T is random; ``eta = 1``
    approaches DDPM. Other arguments as in :func:`ddpm_sample`.

    On the course's schedule (alpha_bar at the last step 0.048, not 0) x_T ~ N(0, I) is not quite the distribution
    the model saw at that step. DDPM's noise makes it forget its start; deterministic DDIM carries the mismatch to
    its output, so more steps stop helping (tests/test_ddim_gaussian.py measures it with an exact predictor).
    """
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
