"""DDIM against the exact sampler of a Gaussian data distribution: a diagnosis of ``course_lib.sampling.ddim_sample``.

For data x0 ~ N(mu, s^2) (every pixel independent) the optimal noise predictor is known in closed form,

    eps*(x_t, t) = (x_t - sqrt(ab_t) mu) sqrt(1 - ab_t) / (ab_t s^2 + 1 - ab_t),      ab_t = alpha_bar_t,

so whatever error remains in the samples is the sampler's own, not a network's. Findings (20,000 samples, W2 the
Wasserstein-2 distance between the samples' Gaussian and the data's, in pixel units of [-1, 1]):

* ``ddim_sample`` is exactly Song et al.'s update (eq. 12) with eta = 0 over :func:`ddim_timesteps`;
* with a schedule whose alpha_bar_T is about 0 (cosine, T = 300) DDIM converges to the data: W2 0.16 / 0.076 /
  0.014 / 0.006 at 5 / 10 / 50 / 300 steps;
* with the course's schedule (linear 1e-4..0.02, T = 300) alpha_bar_T = 0.048: x_T ~ N(0, I) is not the marginal
  q(x_T) = N(sqrt(ab_T) mu, ab_T s^2 + 1 - ab_T) the model learned, and the deterministic sampler carries that
  error to its output: W2 0.16 / 0.091 / 0.070 / 0.072, stuck at the transport of the wrong start (mean -0.63
  for -0.70). DDPM (and DDIM with eta = 1) forgets its start: W2 0.008 and 0.012 at 300 steps. Started from the
  true q(x_T), DDIM converges on the course's schedule too. The xfail test below records the defect.
"""

from __future__ import annotations

import math

import pytest
import torch

from course_lib import sampling
from course_lib.noise import DDPMSchedule

pytestmark = pytest.mark.usefixtures("single_thread")

MU, S = -0.7, 0.5  # roughly MNIST's background in [-1, 1]
N = 20_000
SHAPE = (1, 1, 1)


def exact_eps(schedule: DDPMSchedule):
    """The optimal predictor ``model(x_t, t / T)`` for x0 ~ N(MU, S^2), computed in float64."""
    alpha_bars = schedule.alpha_bars.double()

    def model(x: torch.Tensor, t_over_T: torch.Tensor) -> torch.Tensor:
        ab = alpha_bars[(t_over_T.double() * schedule.num_steps).round().long()].view(-1, 1, 1, 1)
        return ((x.double() - ab.sqrt() * MU) * (1 - ab).sqrt() / (ab * S ** 2 + 1 - ab)).float()

    return model


def w2(samples: torch.Tensor) -> float:
    """Wasserstein-2 distance between N(mean, std^2) of the samples and the data's N(MU, S^2)."""
    return math.hypot(samples.mean().item() - MU, samples.std().item() - S)


def start(seed: int = 0) -> torch.Tensor:
    """x_T as ``ddim_sample`` draws it with a generator seeded ``seed``."""
    return torch.randn((N, *SHAPE), generator=torch.Generator().manual_seed(seed))


def ddim(schedule: DDPMSchedule, num_steps: int, eta: float = 0.0, seed: int = 0, model=None) -> torch.Tensor:
    return sampling.ddim_sample(model or exact_eps(schedule), schedule, N, num_steps,
                                generator=torch.Generator().manual_seed(seed), eta=eta, device="cpu", image_shape=SHAPE)


def song_eq_12(model, schedule: DDPMSchedule, x: torch.Tensor, num_steps: int) -> torch.Tensor:
    """Song et al. (2021) eq. 12 with eta = 0, written out from ``x`` = x_T (alpha_bar = 1 after the last step)."""
    timesteps = sampling.ddim_timesteps(schedule.num_steps, num_steps).tolist()
    alpha_bars = schedule.alpha_bars[timesteps].tolist() + [1.0]
    for i, t in enumerate(timesteps):
        ab, ab_next = alpha_bars[i], alpha_bars[i + 1]
        eps = model(x, torch.full((x.shape[0],), t / schedule.num_steps))
        x = math.sqrt(ab_next) * (x - math.sqrt(1 - ab) * eps) / math.sqrt(ab) + math.sqrt(1 - ab_next) * eps
    return x


@pytest.mark.parametrize("num_steps", [1, 5, 50])
def test_ddim_sample_is_song_et_als_update_with_eta_0(num_steps):
    schedule = DDPMSchedule(300)
    expected = song_eq_12(exact_eps(schedule), schedule, start(), num_steps)
    torch.testing.assert_close(ddim(schedule, num_steps), expected, rtol=1e-5, atol=1e-5)


def test_with_alpha_bar_t_near_zero_more_ddim_steps_come_closer_to_the_data():
    schedule = DDPMSchedule(300, kind="cosine")  # alpha_bar_T = 3e-8: x_T ~ N(0, I) is right
    distances = [w2(ddim(schedule, n)) for n in (5, 10, 50, 300)]
    assert distances == sorted(distances, reverse=True), distances
    assert distances[-1] < 0.02, distances


def test_ddim_with_eta_1_matches_ddpm_in_distribution():
    """All 300 steps, eta = 1: sigma_t^2 is the posterior variance beta~_t where DDPM uses beta_t; close anyway."""
    schedule = DDPMSchedule(300)
    model = exact_eps(schedule)
    stochastic = ddim(schedule, 300, eta=1.0, seed=1, model=model)
    ddpm = sampling.ddpm_sample(model, schedule, N, torch.Generator().manual_seed(2), device="cpu", image_shape=SHAPE)
    assert abs(stochastic.mean() - ddpm.mean()) < 0.01 and abs(stochastic.std() - ddpm.std()) < 0.02
    assert w2(stochastic) < 0.02 and w2(ddpm) < 0.02


def test_on_the_course_schedule_ddim_converges_to_the_transport_of_its_wrong_start():
    """The diagnosis: the probability-flow ODE maps x_T to mu + s (x_T - sqrt(ab_T) mu) / sqrt(ab_T s^2 + 1 - ab_T);
    from N(0, 1) instead of q(x_T) its output has mean mu (1 - s sqrt(ab_T) / sqrt(v)) and std s / sqrt(v)."""
    schedule = DDPMSchedule(300)
    ab_t = schedule.alpha_bars[-1].item()
    v = ab_t * S ** 2 + 1 - ab_t
    samples = ddim(schedule, 300)
    assert samples.mean().item() == pytest.approx(MU * (1 - S * math.sqrt(ab_t) / math.sqrt(v)), abs=0.01)
    assert samples.std().item() == pytest.approx(S / math.sqrt(v), abs=0.01)
    true_start = math.sqrt(ab_t) * MU + math.sqrt(v) * start()  # started from q(x_T), DDIM converges here too
    assert w2(song_eq_12(exact_eps(schedule), schedule, true_start, 300)) < 0.02


@pytest.mark.xfail(strict=True, reason="alpha_bar_T = 0.048 on the course schedule: DDIM from N(0, I) converges to "
                                       "the wrong distribution (W2 0.07); see the module docstring")
def test_on_the_course_schedule_more_ddim_steps_come_closer_to_the_data():
    distances = [w2(ddim(DDPMSchedule(300), n)) for n in (5, 10, 50, 300)]
    assert distances == sorted(distances, reverse=True) and distances[-1] < 0.02, distances


def test_eta_outside_0_to_1_is_refused():
    with pytest.raises(ValueError, match="`eta`"):
        ddim(DDPMSchedule(10), 5, eta=1.5)


@pytest.mark.parametrize("num_steps, num_sampling_steps", [(50, 6), (300, 25), (7, 7)])
def test_what_the_students_ddim_sample_is_checked_against_is_song_et_als_update(num_steps, num_sampling_steps):
    """The expected trajectory of ``check_ddim_sample`` (the reference side students are graded against) ends where
    eq. 12, written out above, ends from the same x_T with the same seeded stand-in network."""
    from course_lib.checks.harness import TinyNoisePredictor
    from course_lib.stages.ddpm.reference import ddim_case

    inputs, expected = ddim_case(num_samples=2, num_steps=num_steps, num_sampling_steps=num_sampling_steps, seed=5)
    model = TinyNoisePredictor(inputs["model_seed"]).eval()
    with torch.no_grad():
        samples = song_eq_12(model, DDPMSchedule(num_steps), expected["trajectory"][0], num_sampling_steps)
    torch.testing.assert_close(expected["trajectory"][-1], samples, rtol=1e-4, atol=1e-5)
