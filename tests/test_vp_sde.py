"""The given samplers of stage 3 beside DDPM and DDIM, on a Gaussian data distribution whose exact noise predictor
is known (``tests/test_ddim_gaussian.py``): the reverse-time VP-SDE and its probability-flow ODE
(``course_lib.sampling.reverse_vp_sde``, simulated with Euler-Maruyama), and ancestral DDPM on fewer timesteps
(``course_lib.sampling.respaced``). Whatever error remains is the sampler's own, not a network's.
"""

from __future__ import annotations

import math

import pytest
import torch

from course_lib import sampling
from course_lib.noise import DDPMSchedule, euler_maruyama
from test_ddim_gaussian import MU, N, S, SHAPE, exact_eps, start, w2

pytestmark = pytest.mark.usefixtures("single_thread")


def integrate(schedule: DDPMSchedule, x_start: torch.Tensor, ode: bool, seed: int = 1) -> torch.Tensor:
    """The reverse VP-SDE (or the probability-flow ODE) from ``x_start`` = x_T, T Euler-Maruyama steps."""
    drift, diffusion = sampling.reverse_vp_sde(exact_eps(schedule), schedule, ode=ode)
    _, paths = euler_maruyama(drift, diffusion, x_start, 1.0, schedule.num_steps,
                              torch.Generator().manual_seed(seed))
    return paths[-1]


def true_start(schedule: DDPMSchedule) -> torch.Tensor:
    """x_T drawn from the forward process's own marginal q(x_T) = N(sqrt(ab_T) mu, ab_T s^2 + 1 - ab_T)."""
    ab_t = schedule.alpha_bars[-1].item()
    return math.sqrt(ab_t) * MU + math.sqrt(ab_t * S ** 2 + 1 - ab_t) * start()


def test_the_probability_flow_ode_carries_the_forward_marginal_to_the_data():
    schedule = DDPMSchedule(300)
    assert w2(integrate(schedule, true_start(schedule), ode=True)) < 0.03


def test_the_probability_flow_ode_maps_n_0_1_to_the_data_where_alpha_bar_t_is_about_0():
    """Ho et al.'s linear schedule of T = 1000 ends at alpha_bar_T = 4e-5: there N(0, 1) is the forward marginal."""
    samples = integrate(DDPMSchedule(1000), start(), ode=True)
    assert samples.mean().item() == pytest.approx(MU, abs=0.02)
    assert samples.std().item() == pytest.approx(S, abs=0.02)


def test_the_reverse_sde_forgets_its_start_and_reaches_the_data_from_n_0_1():
    """On the course's schedule (alpha_bar_T = 0.048) too, as DDPM does: the noise washes out the wrong start."""
    assert w2(integrate(DDPMSchedule(300), start(), ode=False)) < 0.03


@pytest.mark.parametrize("num_steps", [50, 300])
def test_ancestral_ddpm_on_fewer_timesteps_still_reaches_the_data(num_steps):
    schedule = DDPMSchedule(300)
    model, short = sampling.respaced(exact_eps(schedule), schedule, num_steps)
    assert short.num_steps == num_steps
    torch.testing.assert_close(short.alpha_bars, schedule.alpha_bars[sampling.ddim_timesteps(300, num_steps).flip(0)])
    samples = sampling.ddpm_sample(model, short, N, torch.Generator().manual_seed(3), device="cpu",
                                   image_shape=SHAPE)
    assert w2(samples) < 0.03


def test_respaced_on_every_timestep_is_the_schedule_itself():
    schedule = DDPMSchedule(300)
    _, same = sampling.respaced(exact_eps(schedule), schedule, 300)
    for name in ("betas", "alphas", "alpha_bars"):
        torch.testing.assert_close(getattr(same, name), getattr(schedule, name))
