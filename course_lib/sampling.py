"""Samplers: DDPM (Ho et al. Algorithm 2), classifier-free guidance, DDIM, and the rectified-flow Euler sampler.

Each sampler is one update (a *step*) and a loop, and every loop runs through :func:`course_lib.chain.run_chain`,
the one place that keeps the trajectory. All samplers share one signature, the one students write in the notebooks:
``(model, [schedule,] what-to-sample, [steps,] generator=None, ...)``, with the library's extras
(``return_trajectory``, ``device``, ``image_shape``) keyword-only. A student's loop returns
``(samples, trajectory)``; the library's does so with ``return_trajectory=True``.

Every sampler draws its noise with ``generator`` (on the sampling device), returns images in about
[-1, 1] of shape (N, C, 28, 28), and with ``return_trajectory=True`` also returns every intermediate
image as a CPU tensor (steps + 1, N, C, 28, 28), first frame pure noise, last frame the result.
Models are put in eval mode while sampling and run under the device's autocast precision.

The DDPM, guided and flow samplers are students' exercises (stages 3-5), and so are stage 7's editors (SDEdit,
inpainting, guided edits): their checked forms live in each stage's ``api`` module and are gathered here. DDIM is
given, and defined here.
"""

from __future__ import annotations

import torch

from .chain import IMAGE_SHAPE, device_of, run_chain, sampling_mode, start_noise
from .stages.cfg.api import cfg_sample, guided_eps
from .stages.ddpm.api import ddpm_sample, ddpm_step
from .stages.editing.api import guided_edit, inpaint, sdedit
from .stages.flow.api import flow_sample
from .validation import check_positive_int

__all__ = ["IMAGE_SHAPE", "cfg_sample", "ddim_sample", "ddim_step", "ddim_timesteps", "ddpm_sample", "ddpm_step",
           "device_of", "flow_sample", "guided_edit", "guided_eps", "inpaint", "run_chain", "sampling_mode", "sdedit",
           "start_noise"]


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
