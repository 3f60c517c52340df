"""course_lib.noise against formulas written out here, and against statistics over many draws.

Statistical tolerances are a few standard errors: the mean of n draws of variance v has standard error
sqrt(v / n), a sample variance has standard error about v * sqrt(2 / n). Seeds are fixed, so each test is
deterministic; the tolerances say why the seeded result is not luck.
"""

from __future__ import annotations

import math

import pytest
import torch

from course_lib.noise import DDPMSchedule, add_noise, euler_maruyama, forward_step, markov_forward, q_sample

pytestmark = pytest.mark.usefixtures("single_thread")


def linear_betas(num_steps: int, start: float = 1e-4, end: float = 0.02) -> list[float]:
    """Ho et al.'s linear schedule, one float64 at a time: start + i * (end - start) / (T - 1)."""
    if num_steps == 1:
        return [start]
    return [start + i * (end - start) / (num_steps - 1) for i in range(num_steps)]


def cumulative_products(betas: list[float]) -> list[float]:
    """alpha_bar_t = prod_{s <= t} (1 - beta_s), with a plain Python loop in float64."""
    products, running = [], 1.0
    for beta in betas:
        running *= 1.0 - beta
        products.append(running)
    return products


def as_tensor(values: list[float]) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


# ----------------------------------------------------------------------------- schedules

@pytest.mark.parametrize("num_steps", [1, 2, 50, 300, 1000])
def test_linear_schedule_endpoints_spacing_and_cumulative_product(num_steps):
    schedule = DDPMSchedule(num_steps)
    betas = as_tensor(linear_betas(num_steps))
    assert len(schedule) == num_steps
    for name in ("betas", "alphas", "alpha_bars"):
        assert getattr(schedule, name).shape == (num_steps,)
        assert getattr(schedule, name).dtype == torch.float32
    assert schedule.betas[0].item() == pytest.approx(1e-4, rel=1e-6)
    assert schedule.betas[-1].item() == pytest.approx(0.02 if num_steps > 1 else 1e-4, rel=1e-6)
    if num_steps > 2:
        spacing = schedule.betas.double().diff()
        assert torch.allclose(spacing, torch.full_like(spacing, (0.02 - 1e-4) / (num_steps - 1)), rtol=1e-4, atol=1e-9)
    torch.testing.assert_close(schedule.betas.double(), betas, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(schedule.alphas.double(), 1 - betas, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(schedule.alpha_bars.double(), as_tensor(cumulative_products(betas.tolist())),
                               rtol=1e-5, atol=1e-9)


def test_linear_schedule_of_the_course_ends_mostly_noise():
    """T = 300 with betas 1e-4..0.02: alpha_bar_T = prod(1 - beta) ~ exp(-sum beta) ~ exp(-3.0) (about 0.05)."""
    alpha_bars = DDPMSchedule(300).alpha_bars
    assert alpha_bars[0].item() == pytest.approx(1 - 1e-4, abs=1e-7)
    assert alpha_bars[-1].item() == pytest.approx(math.exp(-sum(linear_betas(300))), rel=0.05)
    assert bool((alpha_bars.diff() < 0).all()), "alpha_bars must decrease strictly"


def cosine_alpha_bar(t: float, num_steps: int, offset: float = 0.008) -> float:
    """Nichol & Dhariwal (2021), eq. 17: alpha_bar(t) = f(t) / f(0), f(t) = cos^2(((t / T) + s) / (1 + s) * pi / 2)."""
    def f(u: float) -> float:
        return math.cos((u / num_steps + offset) / (1 + offset) * math.pi / 2) ** 2
    return f(t) / f(0)


@pytest.mark.parametrize("num_steps", [7, 50, 300, 1000])
def test_cosine_schedule_matches_nichol_dhariwal(num_steps):
    """Timestep index i (0..T-1) is the paper's t = i + 1; betas are clipped at 0.999 as in the paper."""
    schedule = DDPMSchedule(num_steps, kind="cosine")
    expected = [cosine_alpha_bar(i + 1, num_steps) for i in range(num_steps)]
    previous = [1.0] + expected[:-1]
    expected_betas = [min(1 - a / p, 0.999) for a, p in zip(expected, previous)]
    torch.testing.assert_close(schedule.betas.double(), as_tensor(expected_betas), rtol=1e-5, atol=1e-8)
    # Only the last beta reaches the clip (alpha_bar(T) = f(T) / f(0) = 0 exactly); all earlier alpha_bars
    # are the formula itself, the last is alpha_bar_{T-2} * (1 - 0.999).
    assert expected_betas[-1] == 0.999 and max(expected_betas[:-1]) < 0.999
    torch.testing.assert_close(schedule.alpha_bars[:-1].double(), as_tensor(expected[:-1]), rtol=1e-5, atol=1e-8)
    assert schedule.alpha_bars[-1].item() == pytest.approx(expected[-2] * 0.001, rel=1e-4)


@pytest.mark.parametrize("num_steps, max_beta", [(300, 0.02), (1000, 0.02), (40, 0.1), (7, 0.999)])
def test_cosine_schedule_answer_clips_the_betas_and_recomputes_alpha_bar(num_steps, max_beta):
    """Stage 1's cosine_schedule (SUTD's cap 0.02 by default): betas min(1 - a(t + 1) / a(t), max_beta) with the
    paper's a(t), alpha_bars their running product (a Python loop), equal to a(t + 1) until the first clipped beta."""
    from course_lib.stages.noising.answers import cosine_schedule

    betas, alphas, alpha_bars = cosine_schedule(num_steps, max_beta=max_beta)
    unclipped = [1 - cosine_alpha_bar(i + 1, num_steps) / cosine_alpha_bar(i, num_steps) for i in range(num_steps)]
    expected_betas = [min(beta, max_beta) for beta in unclipped]
    torch.testing.assert_close(betas, as_tensor(expected_betas), rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(alphas, 1 - as_tensor(expected_betas), rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(alpha_bars, as_tensor(cumulative_products(expected_betas)), rtol=1e-9, atol=1e-15)
    first_clip = next(i for i, beta in enumerate(unclipped) if beta > max_beta)
    torch.testing.assert_close(alpha_bars[:first_clip],
                               as_tensor([cosine_alpha_bar(i + 1, num_steps) for i in range(first_clip)]))
    assert float(betas.max()) == pytest.approx(max_beta) and bool((betas > 0).all())


def test_cosine_schedule_with_sutds_cap_ends_short_of_pure_noise():
    """Capping at 0.02 keeps the last alpha_bar away from 0 (about exp(-0.02 k) times the value before the k clipped
    steps); the paper's cap 0.999 ends at almost exactly 0."""
    from course_lib.stages.noising.answers import cosine_schedule

    _, _, capped = cosine_schedule(300)
    _, _, paper = cosine_schedule(300, max_beta=0.999)
    assert 0.02 < float(capped[-1]) < 0.05
    assert float(paper[-1]) < 1e-6
    torch.testing.assert_close(DDPMSchedule(300, kind="cosine").alpha_bars, paper.float())


def test_schedule_helpers_and_device_move():
    schedule = DDPMSchedule(10)
    previous = schedule.alpha_bars_prev()
    assert previous[0].item() == 1.0
    torch.testing.assert_close(previous[1:], schedule.alpha_bars[:-1])
    t = torch.tensor([0, 5, 9])
    torch.testing.assert_close(schedule.model_time(t), torch.tensor([0.0, 0.5, 0.9]))
    assert set(dict(schedule.named_buffers())) == {"betas", "alphas", "alpha_bars"}


@pytest.mark.parametrize("kwargs, argument", [
    ({"num_steps": 0}, "num_steps"),
    ({"num_steps": 2.5}, "num_steps"),
    ({"kind": "quadratic"}, "kind"),
    ({"beta_start": -0.1}, "beta_start"),
    ({"beta_end": 1.5}, "beta_end"),
])
def test_schedule_rejects_bad_arguments(kwargs, argument):
    with pytest.raises(ValueError, match=f"`{argument}`"):
        DDPMSchedule(**kwargs)


# ----------------------------------------------------------------------------- Gaussian noising

def test_add_noise_is_x_plus_sigma_times_the_generators_noise():
    x = torch.rand(3, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    z = add_noise(x, 0.4, torch.Generator().manual_seed(7))
    eps = torch.randn(x.shape, generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(z, x + 0.4 * eps)
    torch.testing.assert_close(add_noise(x, 0.0), x)


def test_add_noise_statistics():
    """Over 200,000 pixels the noise has mean 0 (SE 0.0013 * sigma) and std sigma (SE 0.0016 * sigma)."""
    x = torch.full((200, 1, 32, 32), 0.25)
    noise = add_noise(x, 0.8, torch.Generator().manual_seed(2)) - x
    assert abs(noise.mean().item()) < 0.01
    assert noise.std().item() == pytest.approx(0.8, rel=0.01)


@pytest.mark.parametrize("sigma", [-0.1, "0.5", None])
def test_add_noise_rejects_bad_sigma(sigma):
    with pytest.raises(ValueError, match="`sigma`"):
        add_noise(torch.zeros(1, 1, 4, 4), sigma)


def test_add_noise_rejects_integer_images():
    with pytest.raises(TypeError, match="`x`"):
        add_noise(torch.zeros(1, 1, 4, 4, dtype=torch.uint8), 0.5)


# ----------------------------------------------------------------------------- closed form

def test_q_sample_is_the_closed_form_per_example():
    """Each example of the batch uses its own timestep: x_t = sqrt(ab_t) x0 + sqrt(1 - ab_t) eps."""
    schedule = DDPMSchedule(300)
    alpha_bars = cumulative_products(linear_betas(300))
    generator = torch.Generator().manual_seed(3)
    x0 = torch.rand(4, 1, 28, 28, generator=generator) * 2 - 1
    eps = torch.randn(x0.shape, generator=generator)
    t = torch.tensor([0, 17, 150, 299])
    got = q_sample(x0, t, eps, schedule)
    for i, step in enumerate(t.tolist()):
        expected = math.sqrt(alpha_bars[step]) * x0[i].double() + math.sqrt(1 - alpha_bars[step]) * eps[i].double()
        torch.testing.assert_close(got[i].double(), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("step", [0, 40, 299])
def test_q_sample_mean_and_variance_over_many_draws(step):
    """20,000 draws per pixel: the mean is within 5 standard errors of sqrt(ab) x0, the variance within 5% of 1 - ab."""
    schedule = DDPMSchedule(300)
    alpha_bar = cumulative_products(linear_betas(300))[step]
    generator = torch.Generator().manual_seed(4 + step)
    image = torch.linspace(-1, 1, 16).view(1, 1, 4, 4)
    draws = 20_000
    x0 = image.expand(draws, 1, 4, 4)
    x_t = q_sample(x0, torch.full((draws,), step), torch.randn(x0.shape, generator=generator), schedule).double()
    standard_error = math.sqrt((1 - alpha_bar) / draws)
    assert (x_t.mean(0) - math.sqrt(alpha_bar) * image[0].double()).abs().max().item() < 5 * standard_error
    torch.testing.assert_close(x_t.var(0), torch.full((1, 4, 4), 1 - alpha_bar, dtype=torch.float64), rtol=0.05, atol=0)


@pytest.mark.parametrize("bad, argument, error", [
    ({"t": torch.tensor([0.5, 1.0])}, "t", TypeError),
    ({"t": torch.tensor([0, 300])}, "t", ValueError),
    ({"t": torch.tensor([0, -1])}, "t", ValueError),
    ({"t": torch.tensor([0, 1, 2])}, "t", ValueError),
    ({"eps": torch.zeros(2, 1, 28, 27)}, "eps", ValueError),
    ({"x0": torch.zeros(2, 1, 28, 28, dtype=torch.long)}, "x0", TypeError),
])
def test_q_sample_rejects_bad_arguments(bad, argument, error):
    arguments = {"x0": torch.zeros(2, 1, 28, 28), "t": torch.tensor([0, 1]), "eps": torch.zeros(2, 1, 28, 28)}
    arguments.update(bad)
    with pytest.raises(error, match=f"`{argument}`"):
        q_sample(schedule=DDPMSchedule(300), **arguments)


# ----------------------------------------------------------------------------- Markov chain

def test_one_forward_step_from_x0_is_the_closed_form_at_t0():
    schedule = DDPMSchedule(300)
    generator = torch.Generator().manual_seed(5)
    x0 = torch.rand(2, 1, 28, 28, generator=generator)
    eps = torch.randn(x0.shape, generator=generator)
    t = torch.zeros(2, dtype=torch.long)
    torch.testing.assert_close(forward_step(x0, t, eps, schedule), q_sample(x0, t, eps, schedule))


def test_forward_step_formula():
    """x_t = sqrt(1 - beta_t) x_{t-1} + sqrt(beta_t) eps, each example at its own t."""
    schedule = DDPMSchedule(300)
    betas = linear_betas(300)
    generator = torch.Generator().manual_seed(6)
    x_prev = torch.randn(2, 1, 5, 5, generator=generator)
    eps = torch.randn(x_prev.shape, generator=generator)
    t = torch.tensor([10, 250])
    got = forward_step(x_prev, t, eps, schedule)
    for i, step in enumerate(t.tolist()):
        expected = math.sqrt(1 - betas[step]) * x_prev[i] + math.sqrt(betas[step]) * eps[i]
        torch.testing.assert_close(got[i], expected.float())


@pytest.mark.parametrize("step", [0, 24, 49])
def test_markov_forward_matches_the_closed_form_in_distribution(step):
    """t + 1 chained steps from a fixed image give per-pixel mean sqrt(ab) x0 and variance 1 - ab (8,000 chains)."""
    schedule = DDPMSchedule(50)
    alpha_bar = cumulative_products(linear_betas(50))[step]
    image = torch.linspace(-1, 1, 16).view(1, 1, 4, 4)
    chains = 8_000
    x_t = markov_forward(image.expand(chains, 1, 4, 4), step, schedule, torch.Generator().manual_seed(8)).double()
    standard_error = math.sqrt((1 - alpha_bar) / chains)
    assert (x_t.mean(0) - math.sqrt(alpha_bar) * image[0].double()).abs().max().item() < 5 * standard_error
    # SE of a variance from 8,000 draws is v * sqrt(2 / 8000) = 1.6% of v; allow 8%.
    torch.testing.assert_close(x_t.var(0), torch.full((1, 4, 4), 1 - alpha_bar, dtype=torch.float64), rtol=0.08, atol=0)


def test_markov_forward_is_reproducible_and_rejects_bad_t():
    schedule = DDPMSchedule(20)
    x0 = torch.zeros(3, 1, 4, 4)
    first = markov_forward(x0, 5, schedule, torch.Generator().manual_seed(9))
    torch.testing.assert_close(first, markov_forward(x0, 5, schedule, torch.Generator().manual_seed(9)))
    for bad in (20, -1, 2.0):
        with pytest.raises(ValueError, match="`t`"):
            markov_forward(x0, bad, schedule)


# ----------------------------------------------------------------------------- SDE warm-up

def test_euler_maruyama_without_noise_integrates_the_drift_exactly():
    """dx = c dt from x0: every Euler step is exact, x(T) = x0 + c T."""
    x0 = torch.tensor([0.0, 1.0, -2.0])
    times, paths = euler_maruyama(lambda x, t: torch.full_like(x, 0.5), lambda t: 0.0, x0, 2.0, 40)
    assert times.shape == (41,) and paths.shape == (41, 3)
    torch.testing.assert_close(times, torch.linspace(0, 2, 41))
    torch.testing.assert_close(paths[0], x0)
    torch.testing.assert_close(paths[-1], x0 + 1.0)


def test_euler_maruyama_brownian_motion_has_variance_t():
    """dx = g dW with g = 0.7: Var x(t) = g^2 t at every time (20,000 paths; SE of a variance ~1%, allow 5%)."""
    x0 = torch.zeros(20_000)
    times, paths = euler_maruyama(lambda x, t: torch.zeros_like(x), lambda t: 0.7, x0, 3.0, 30,
                                  torch.Generator().manual_seed(10))
    for k in (10, 30):
        assert paths[k].var().item() == pytest.approx(0.49 * times[k].item(), rel=0.05)
        assert abs(paths[k].mean().item()) < 5 * math.sqrt(0.49 * times[k].item() / 20_000)


@pytest.mark.parametrize("kwargs, argument", [({"t_end": 0.0}, "t_end"), ({"num_steps": 0}, "num_steps")])
def test_euler_maruyama_rejects_bad_arguments(kwargs, argument):
    arguments = {"drift": lambda x, t: x, "diffusion": lambda t: 1.0, "x0": torch.zeros(3), "t_end": 1.0,
                 "num_steps": 10}
    arguments.update(kwargs)
    with pytest.raises(ValueError, match=f"`{argument}`"):
        euler_maruyama(**arguments)


def test_euler_maruyama_takes_a_number_a_function_of_t_or_of_x_and_t():
    """A constant diffusion written as 0.7, g(t) = 0.7 and b(x, t) = 0.7 gives the same paths on the same draws."""
    x0 = torch.zeros(5)
    runs = [euler_maruyama(lambda x, t: -x, diffusion, x0, 1.0, 10, torch.Generator().manual_seed(11))[1]
            for diffusion in (0.7, lambda t: 0.7, lambda x, t: torch.full_like(x, 0.7))]
    torch.testing.assert_close(runs[0], runs[1])
    torch.testing.assert_close(runs[0], runs[2])


def test_euler_maruyama_step_with_a_diffusion_of_x():
    """One step of dx = f dt + b(x, t) dW: x0 + f(x0, 0) dt + b(x0, 0) sqrt(dt) z, z from the generator."""
    x0 = torch.tensor([0.5, -1.0, 2.0])
    times, paths = euler_maruyama(lambda x, t: 0.3 * x + 1.0, lambda x, t: 0.2 + x ** 2, x0, 0.25, 1,
                                  torch.Generator().manual_seed(12))
    z = torch.randn(3, generator=torch.Generator().manual_seed(12))
    torch.testing.assert_close(paths[1], x0 + (0.3 * x0 + 1.0) * 0.25 + (0.2 + x0 ** 2) * 0.5 * z)
    torch.testing.assert_close(times, torch.tensor([0.0, 0.25]))


def test_euler_maruyama_runs_a_given_step_with_b_of_x_and_t():
    """``step`` gets (x, t_k, dt, drift, b, z) with b a function of (x, t) even when a g(t) was passed."""
    seen = []

    def step(x, t, dt, drift, diffusion, z):
        seen.append((t, dt, float(diffusion(x, t)), z.clone()))
        return x + 1.0

    times, paths = euler_maruyama(lambda x, t: x, lambda t: 2 * t, torch.zeros(2), 1.0, 4,
                                  torch.Generator().manual_seed(13), step=step)
    assert [t for t, *_ in seen] == pytest.approx([0.0, 0.25, 0.5, 0.75])
    assert all(dt == pytest.approx(0.25) for _, dt, _, _ in seen)
    assert [g for _, _, g, _ in seen] == pytest.approx([0.0, 0.5, 1.0, 1.5])
    torch.testing.assert_close(paths[:, 0], torch.arange(5.0))
    draws = torch.Generator().manual_seed(13)
    for *_, z in seen:
        torch.testing.assert_close(z, torch.randn(2, generator=draws))


@pytest.mark.parametrize("kwargs, error", [({"diffusion": "1"}, TypeError),
                                           ({"diffusion": lambda x, t, s: 1.0}, TypeError),
                                           ({"step": 3}, TypeError),
                                           ({"step": lambda x, t, dt, f, b, z: x[:1]}, ValueError)])
def test_euler_maruyama_rejects_bad_diffusions_and_steps(kwargs, error):
    arguments = {"drift": lambda x, t: x, "diffusion": 1.0, "x0": torch.zeros(3), "t_end": 1.0, "num_steps": 2}
    arguments.update(kwargs)
    with pytest.raises(error, match="`diffusion`|`step`"):
        euler_maruyama(**arguments)


def test_sde_with_linear_drift_has_the_noise_free_path_as_its_mean():
    """dx = 0.1 x dt + dW from x(0) = 10: E x(t) = 10 exp(0.1 t) and Var x(t) = (exp(0.2 t) - 1) / 0.2.

    20,000 paths of 1,000 steps to t = 10: the standard error of the mean at t = 10 is 5.65 / 141 = 0.04, and the
    Euler-Maruyama mean 10 (1 + 0.1 dt)^k is 0.014 below the exact one; the variance's standard error is 1%.
    """
    paths_count = 20_000
    times, paths = euler_maruyama(lambda x, t: 0.1 * x, 1.0, torch.full((paths_count,), 10.0, dtype=torch.float64),
                                  10.0, 1000, torch.Generator().manual_seed(14))
    for k in (250, 1000):
        t = times[k].item()
        variance = (math.exp(0.2 * t) - 1) / 0.2
        assert abs(paths[k].mean().item() - 10 * math.exp(0.1 * t)) < 5 * math.sqrt(variance / paths_count)
        assert paths[k].var().item() == pytest.approx(variance, rel=0.05)


def test_geometric_brownian_motion_matches_its_closed_form():
    """dx = mu x dt + sigma x dW: E x(t) = x0 exp(mu t), and log x(t) is normal with mean (mu - sigma^2 / 2) t and
    variance sigma^2 t (the exact solution x0 exp((mu - sigma^2 / 2) t + sigma W(t))).

    mu = 0.1, sigma = 0.4, x0 = 1, 20,000 paths of 500 steps to t = 5: standard errors 0.013 (mean), 0.0063 (mean of
    log x) and 1% (its variance); the Euler-Maruyama biases are 4e-4, 1e-3 and below 1%.
    """
    mu, sigma, paths_count, t_end = 0.1, 0.4, 20_000, 5.0
    times, paths = euler_maruyama(lambda x, t: mu * x, lambda x, t: sigma * x,
                                  torch.ones(paths_count, dtype=torch.float64), t_end, 500,
                                  torch.Generator().manual_seed(15))
    assert bool((paths > 0).all()), "a geometric Brownian motion stays positive"
    for k in (100, 500):
        t = times[k].item()
        variance = math.exp(2 * mu * t) * (math.exp(sigma ** 2 * t) - 1)
        assert abs(paths[k].mean().item() - math.exp(mu * t)) < 5 * math.sqrt(variance / paths_count)
        logs = paths[k].log()
        assert abs(logs.mean().item() - (mu - sigma ** 2 / 2) * t) < 5 * sigma * math.sqrt(t / paths_count) + 2e-3
        assert logs.var().item() == pytest.approx(sigma ** 2 * t, rel=0.05)
