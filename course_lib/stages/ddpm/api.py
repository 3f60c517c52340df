"""Stage 3's public, checked names, re-exported by ``course_lib.objectives`` and ``course_lib.sampling``: random
timesteps, the DDPM loss, the reverse step, ancestral sampling and DDIM; and given code the notebook uses: DDIM's
timesteps, ancestral sampling on fewer steps (:func:`respaced`) and the reverse-time VP-SDE of a noise predictor
(:func:`reverse_vp_sde`)."""

from __future__ import annotations

import torch
from torch import nn

from ...chain import IMAGE_SHAPE
from ...validation import check_positive_int, check_tensor
from ..noising.api import DDPMSchedule
from . import STAGE


def random_timesteps(batch_size: int, schedule, device, generator: torch.Generator | None = None) -> torch.Tensor:
    """Integer timesteps (batch_size,) drawn uniformly from 0..T-1."""
    check_positive_int("batch_size", batch_size)
    return STAGE.answers.random_timesteps(batch_size, schedule, device, generator)


def ddpm_loss(model, x0: torch.Tensor, schedule, generator: torch.Generator | None = None) -> torch.Tensor:
    """Stage 3 (Ho et al. Algorithm 1): ``|| model(x_t, t / T) - eps ||^2`` with t uniform over 0..T-1.

    x0: clean images (N, 1, 28, 28) in [-1, 1].
    """
    check_tensor("x0", x0, ndim=4, floating=True)
    return STAGE.answers.ddpm_loss(model, x0, schedule, generator)


def ddpm_step(x_t: torch.Tensor, eps: torch.Tensor, t: int, schedule, z: torch.Tensor | None = None) -> torch.Tensor:
    """One reverse step x_t -> x_{t-1} (t an integer in 0..T-1, 0 the last step); see
    the notebook's ``ddpm_step`` for the formula. ``z``: noise shaped like ``x_t``, or ``None``."""
    check_tensor("x_t", x_t, floating=True)
    if isinstance(t, bool) or not isinstance(t, int) or not 0 <= t < schedule.num_steps:
        raise ValueError(f"`t` must be an integer in 0..{schedule.num_steps - 1}, got {t!r}")
    return STAGE.answers.ddpm_step(x_t, eps, t, schedule, z)


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
    return STAGE.answers.ddpm_sample(model, schedule, num_samples, generator, stochastic,
                                            return_trajectory=return_trajectory, device=device,
                                            image_shape=image_shape)


def ddim_timesteps(num_steps: int, num_sampling_steps: int) -> torch.Tensor:
    """``num_sampling_steps`` integer timesteps evenly spread from T-1 down to 0 (decreasing, distinct). Given code."""
    check_positive_int("num_sampling_steps", num_sampling_steps)
    if num_sampling_steps > num_steps:
        raise ValueError(f"`num_sampling_steps` must be at most the schedule's {num_steps} steps, "
                         f"got {num_sampling_steps}")
    return torch.linspace(num_steps - 1, 0, num_sampling_steps).round().long()


def ddim_step(x_t: torch.Tensor, eps: torch.Tensor, alpha_bar: torch.Tensor, alpha_bar_next: torch.Tensor,
              eta: float = 0.0, z: torch.Tensor | None = None) -> torch.Tensor:
    """One DDIM step (Song et al. 2021, eq. 12) from the noise level ``alpha_bar`` to ``alpha_bar_next``;
    ``eta = 0`` is deterministic. ``z``: noise shaped like ``x_t`` (needed when ``eta > 0``)."""
    check_tensor("x_t", x_t, floating=True)
    return STAGE.answers.ddim_step(x_t, eps, alpha_bar, alpha_bar_next, eta, z)


def ddim_sample(model, schedule, num_samples: int = 40, num_sampling_steps: int = 50,
                generator: torch.Generator | None = None, *, eta: float = 0.0, return_trajectory: bool = False,
                device=None, image_shape: tuple[int, int, int] = IMAGE_SHAPE):
    """DDIM (Song et al. 2021) over ``num_sampling_steps`` timesteps of :func:`ddim_timesteps`. With ``eta = 0``
    (the default) only x_T is random; ``eta = 1`` approaches DDPM. Other arguments as in :func:`ddpm_sample`."""
    check_positive_int("num_samples", num_samples)
    if not isinstance(eta, (int, float)) or isinstance(eta, bool) or not 0 <= eta <= 1:
        raise ValueError(f"`eta` must be a number in [0, 1], got {eta!r}")
    ddim_timesteps(schedule.num_steps, num_sampling_steps)  # checks the number of steps
    return STAGE.answers.ddim_sample(model, schedule, num_samples, num_sampling_steps, generator, eta=eta,
                                     return_trajectory=return_trajectory, device=device, image_shape=image_shape)


class OnTimesteps(nn.Module):
    """``model`` asked at a few of its timesteps: ``forward(x, k / K)`` runs ``model(x, timesteps[k] / T)``.

    timesteps: the K increasing integer timesteps kept, on the model's device; T: the schedule it was trained with.
    """

    def __init__(self, model: nn.Module, timesteps: torch.Tensor, num_steps: int):
        super().__init__()
        self.model, self.timesteps, self.num_steps = model, timesteps, num_steps

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        k = (t * len(self.timesteps)).round().long()
        return self.model(x, self.timesteps[k] / self.num_steps)


def respaced(model: nn.Module, schedule, num_sampling_steps: int):
    """Ancestral DDPM on ``num_sampling_steps`` of the schedule's T timesteps (those of :func:`ddim_timesteps`).

    Keeping timesteps s_0 < ... < s_{K-1} with their alpha_bars, the betas of the shorter chain follow from
    consecutive ratios, beta'_k = 1 - alpha_bar(s_k) / alpha_bar(s_{k-1}) (alpha_bar = 1 before s_0). Returns
    ``(model', schedule')``: a K-step schedule and the model asked at the original timesteps, for any DDPM sampler.
    """
    kept = ddim_timesteps(schedule.num_steps, num_sampling_steps).flip(0).to(schedule.alpha_bars.device)
    alpha_bars = schedule.alpha_bars[kept]
    alphas = alpha_bars / torch.cat([alpha_bars.new_ones(1), alpha_bars[:-1]])
    table = DDPMSchedule.from_tables(1 - alphas, alphas, alpha_bars)
    return OnTimesteps(model, kept, schedule.num_steps), table


def reverse_vp_sde(predict_eps, schedule, ode: bool = False):
    """The reverse-time VP-SDE of a trained noise predictor, for :func:`~course_lib.noise.euler_maruyama`.

    The continuous limit of the DDPM chain, with s in [0, 1] and beta(s) = T beta_t, is
    ``dx = -beta(s) x / 2 ds + sqrt(beta(s)) dW``. Its score is ``-eps / sqrt(1 - alpha_bar)``, from the predictor.
    Run backwards in the time r = 1 - s (0 at x_T, 1 at the data), with ``num_steps = T`` and ``t_end = 1`` the
    grid falls on the timesteps t = T-1, ..., 0:

        reverse SDE:        dx = beta (x / 2 + score) dr + sqrt(beta) dW
        probability flow:   dx = beta (x / 2 + score / 2) dr           (``ode=True``: the same marginals, no noise)

    predict_eps: ``predict_eps(x, t / T)`` (a model in eval mode, under ``torch.no_grad()``).
    Returns ``(drift, diffusion)``: drift(x, r) a tensor shaped like x, diffusion(r) a number.
    """
    T = schedule.num_steps
    noise_scales = [0.0 if ode else (T * beta) ** 0.5 for beta in schedule.betas.tolist()]  # read once, not per step

    def timestep(r: float) -> int:
        return min(T - 1, max(0, T - 1 - int(round(r * T))))

    def drift(x: torch.Tensor, r: float) -> torch.Tensor:
        t = timestep(r)
        eps = predict_eps(x, torch.full((x.shape[0],), t / T, device=x.device)).to(x.dtype)
        score = -eps / (1 - schedule.alpha_bars[t]).sqrt()
        return T * schedule.betas[t] * (x / 2 + (score / 2 if ode else score))

    def diffusion(r: float) -> float:
        return noise_scales[timestep(r)]

    return drift, diffusion
