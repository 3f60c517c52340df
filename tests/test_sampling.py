"""course_lib.sampling: the DDPM step against Ho et al.'s form, and every sampler against a data law whose
optimal noise (or velocity) predictor is known in closed form.

Data law: every pixel independently N(m, s^2) (m may differ per pixel). With x_t = sqrt(ab) x0 + sqrt(1 - ab) eps,
x_t and eps are jointly Gaussian, so E[eps | x_t] = Cov(eps, x_t) / Var(x_t) (x_t - E x_t)
= sqrt(1 - ab) (x_t - sqrt(ab) m) / (ab s^2 + 1 - ab). A sampler fed this exact predictor must give back
N(m, s^2). The schedule is the cosine one, whose alpha_bar_T is below 1e-7: starting from N(0, I) is exact too.

Tolerances: with n samples the per-pixel mean has standard error s / sqrt(n); the pooled spread is checked to a
few percent, and the deterministic samplers get the extra few percent of their known discretisation bias
(measured: DDIM with 50 steps and Euler with 50 steps give a spread ~3% low on this law).
"""

from __future__ import annotations

import math

import pytest
import torch

from course_lib.models import ClassConditionalUNet, TimeConditionalUNet
from course_lib.noise import DDPMSchedule
from course_lib.sampling import cfg_sample, ddim_sample, ddim_timesteps, ddpm_sample, ddpm_step, flow_sample

pytestmark = pytest.mark.usefixtures("single_thread")

SMALL = (1, 4, 4)
PIXEL_MEANS = torch.linspace(-0.6, 0.6, 16, dtype=torch.float64).view(SMALL)
SPREAD = 0.5
NUM_SAMPLES = 2000


@pytest.fixture(scope="module")
def schedule() -> DDPMSchedule:
    return DDPMSchedule(300, kind="cosine")


def timestep_of(t_over_T: torch.Tensor, schedule: DDPMSchedule) -> torch.Tensor:
    """The samplers hand the model t / T; recover the integer t."""
    return torch.round(t_over_T.double() * schedule.num_steps).long()


class ExactGaussianEps:
    """E[eps | x_t] for data with every pixel N(m, s^2), called like a TimeConditionalUNet: (x_t, t / T)."""

    def __init__(self, schedule: DDPMSchedule, means: torch.Tensor, spread: float):
        self.schedule, self.means, self.spread = schedule, means, spread

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        ab = self.schedule.alpha_bars.double()[timestep_of(t, self.schedule)].view(-1, 1, 1, 1)
        eps = (1 - ab).sqrt() * (x.double() - ab.sqrt() * self.means) / (ab * self.spread ** 2 + 1 - ab)
        return eps.float()


class ExactGaussianVelocity:
    """E[eps - x0 | x_t] on the straight path x_t = (1 - t) x0 + t eps, x0 ~ N(m, s^2) per pixel:
    -m + Cov(eps - x0, x_t) / Var(x_t) (x_t - (1 - t) m) with Cov = t - (1 - t) s^2, Var = (1 - t)^2 s^2 + t^2."""

    def __init__(self, means: torch.Tensor, spread: float):
        self.means, self.spread = means, spread

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        t = t.double().view(-1, 1, 1, 1)
        s2 = self.spread ** 2
        gain = (t - (1 - t) * s2) / ((1 - t) ** 2 * s2 + t ** 2)
        return (-self.means + gain * (x.double() - (1 - t) * self.means)).float()


def assert_law(samples: torch.Tensor, means: torch.Tensor, spread: float, spread_rtol: float) -> None:
    """Per-pixel means within 5 standard errors of ``means``; the per-pixel std, averaged, within ``spread_rtol``."""
    samples = samples.double()
    standard_error = spread / math.sqrt(len(samples))
    assert (samples.mean(0) - means).abs().max().item() < 5 * standard_error
    assert samples.std(0).mean().item() == pytest.approx(spread, rel=spread_rtol)


# ----------------------------------------------------------------------------- one DDPM step

@pytest.mark.parametrize("kind", ["linear", "cosine"])
@pytest.mark.parametrize("t", [0, 1, 150, 299])
def test_ddpm_step_equals_ho_et_al_algorithm_2(kind, t):
    """x_{t-1} = (x_t - beta_t / sqrt(1 - ab_t) eps) / sqrt(alpha_t) + sqrt(beta_t) z, with z = 0 at t = 0.

    Both forms run in float64 on buffers made consistent in float64 (in float32, 1 - alpha_bar_0 and beta_0
    differ by ~1e-3 relative), so the comparison is tight enough to catch a coefficient with a wrong index
    (e.g. ab_t for ab_{t-1}, a ~beta_t relative change).
    """
    schedule = DDPMSchedule(300, kind=kind)
    schedule.betas = schedule.betas.double()
    schedule.alphas = 1 - schedule.betas
    schedule.alpha_bars = torch.cumprod(schedule.alphas, 0)
    generator = torch.Generator().manual_seed(t)
    x_t, eps, z = (torch.randn(3, 1, 28, 28, generator=generator, dtype=torch.float64) for _ in range(3))
    beta = schedule.betas[t]
    ab = schedule.alpha_bars[t]
    expected = (x_t - beta / (1 - ab).sqrt() * eps) / (1 - beta).sqrt()
    noise = beta.sqrt() * z if t > 0 else 0.0
    torch.testing.assert_close(ddpm_step(x_t, eps, t, schedule, z), expected + noise, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(ddpm_step(x_t, eps, t, schedule, None), expected, rtol=1e-9, atol=1e-9)


# ----------------------------------------------------------------------------- samplers on a Gaussian law

def test_ddpm_sample_reproduces_the_gaussian_law(schedule):
    model = ExactGaussianEps(schedule, PIXEL_MEANS, SPREAD)
    samples = ddpm_sample(model, schedule, NUM_SAMPLES, generator=torch.Generator().manual_seed(0),
                          image_shape=SMALL)
    assert samples.shape == (NUM_SAMPLES, *SMALL)
    assert_law(samples, PIXEL_MEANS, SPREAD, spread_rtol=0.03)


def test_ddpm_sample_without_the_z_term_collapses_the_spread(schedule):
    """Stage 3's experiment: dropping z keeps the mean but loses (almost) all the variance."""
    model = ExactGaussianEps(schedule, PIXEL_MEANS, SPREAD)
    samples = ddpm_sample(model, schedule, 500, generator=torch.Generator().manual_seed(0), image_shape=SMALL,
                          stochastic=False).double()
    assert (samples.mean(0) - PIXEL_MEANS).abs().max().item() < 0.05
    assert samples.std(0).mean().item() < 0.1 * SPREAD


def test_ddim_sample_with_50_steps_reproduces_the_gaussian_law(schedule):
    model = ExactGaussianEps(schedule, PIXEL_MEANS, SPREAD)
    samples = ddim_sample(model, schedule, NUM_SAMPLES, 50, generator=torch.Generator().manual_seed(1),
                          image_shape=SMALL)
    assert_law(samples, PIXEL_MEANS, SPREAD, spread_rtol=0.06)


def test_flow_sample_with_the_exact_velocity_reproduces_the_gaussian_law():
    model = ExactGaussianVelocity(PIXEL_MEANS, SPREAD)
    samples = flow_sample(model, NUM_SAMPLES, 50, generator=torch.Generator().manual_seed(2), image_shape=SMALL)
    assert_law(samples, PIXEL_MEANS, SPREAD, spread_rtol=0.06)


def test_ddim_is_deterministic_given_x_T(schedule):
    """Only x_T is random: the same generator seed gives bit-identical samples, another seed different ones."""
    model = ExactGaussianEps(schedule, PIXEL_MEANS, SPREAD)
    first = ddim_sample(model, schedule, 8, 10, generator=torch.Generator().manual_seed(3), image_shape=SMALL)
    again = ddim_sample(model, schedule, 8, 10, generator=torch.Generator().manual_seed(3), image_shape=SMALL)
    other = ddim_sample(model, schedule, 8, 10, generator=torch.Generator().manual_seed(4), image_shape=SMALL)
    assert torch.equal(first, again) and not torch.equal(first, other)


def test_ddim_timesteps():
    steps = ddim_timesteps(300, 50)
    assert steps.shape == (50,) and steps.dtype == torch.long
    assert steps[0].item() == 299 and steps[-1].item() == 0
    assert bool((steps.diff() < 0).all())
    assert torch.equal(ddim_timesteps(10, 10), torch.arange(9, -1, -1))
    with pytest.raises(ValueError, match="`num_sampling_steps`"):
        ddim_timesteps(10, 11)
    with pytest.raises(ValueError, match="`num_sampling_steps`"):
        ddim_timesteps(10, 0)


# ----------------------------------------------------------------------------- classifier-free guidance

CLASS_MEANS = torch.tensor([-0.6, 0.0, 0.6], dtype=torch.float64)
CLASS_SPREAD = 0.2


class ExactClassConditionalEps:
    """Data: class k uniform over K, every pixel N(m_k, s^2). Called like a ClassConditionalUNet (x_t, t / T, c).

    A one-hot row of c gets E[eps | x_t, k]; an all-zero row gets the unconditional E[eps | x_t] =
    sum_k p(k | x_t) E[eps | x_t, k], the class posterior computed from all pixels of the image.
    """

    def __init__(self, schedule: DDPMSchedule):
        self.schedule = schedule

    def __call__(self, x: torch.Tensor, t: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        ab = self.schedule.alpha_bars.double()[timestep_of(t, self.schedule)].view(-1, 1, 1, 1, 1)
        x = x.double()[:, None]                                       # (B, 1, C, H, W)
        centres = ab.sqrt() * CLASS_MEANS.view(1, -1, 1, 1, 1)        # (B, K, 1, 1, 1)
        variance = ab * CLASS_SPREAD ** 2 + 1 - ab
        eps_given_class = (1 - ab).sqrt() * (x - centres) / variance  # (B, K, C, H, W)
        log_likelihood = -((x - centres) ** 2).sum((2, 3, 4)) / (2 * variance.view(-1, 1))
        posterior = log_likelihood.softmax(1)                         # (B, K), uniform prior
        unconditional = (posterior[:, :, None, None, None] * eps_given_class).sum(1)
        conditional = eps_given_class[torch.arange(len(c)), c.argmax(1)]
        has_class = (c.sum(1) > 0).view(-1, 1, 1, 1)
        return torch.where(has_class, conditional, unconditional).float()


def nearest_class(samples: torch.Tensor) -> torch.Tensor:
    """The class whose mean is nearest to each sample's pixel average (classes are 15 pixel-average SDs apart)."""
    return (samples.double().mean((1, 2, 3))[:, None] - CLASS_MEANS).abs().argmin(1)


@pytest.fixture(scope="module")
def guided_samples(schedule):
    """Guided samples of labels 0, 1, 2 (400 each) at guidance 0 and 1, from one seed."""
    labels = torch.arange(3).repeat(400)
    model = ExactClassConditionalEps(schedule)
    return labels, {guidance: cfg_sample(model, schedule, labels, guidance, generator=torch.Generator().manual_seed(5),
                                         num_classes=3, image_shape=SMALL)
                    for guidance in (0.0, 1.0)}


def test_cfg_guidance_1_samples_the_conditional_law(guided_samples):
    labels, samples = guided_samples
    samples = samples[1.0]
    assert torch.equal(nearest_class(samples), labels)
    for k in range(3):
        assert_law(samples[labels == k], CLASS_MEANS[k].expand(SMALL), CLASS_SPREAD, spread_rtol=0.05)


def test_cfg_guidance_0_samples_the_unconditional_mixture(guided_samples):
    """The labels are ignored: every label's samples fall in each class a third of the time
    (400 per label: SE of a fraction sqrt(2/9/400) = 0.024, allow 0.1), and each class has its own law."""
    labels, samples = guided_samples
    samples = samples[0.0]
    classes = nearest_class(samples)
    for k in range(3):
        fractions = torch.bincount(classes[labels == k], minlength=3).double() / 400
        assert (fractions - 1 / 3).abs().max().item() < 0.1
    mixture_std = math.sqrt(CLASS_SPREAD ** 2 + CLASS_MEANS.var(unbiased=False).item())
    assert samples.double().std().item() == pytest.approx(mixture_std, rel=0.03)
    for k in range(3):
        assert_law(samples[classes == k], CLASS_MEANS[k].expand(SMALL), CLASS_SPREAD, spread_rtol=0.06)


def test_cfg_same_generator_same_samples_and_trajectory(schedule):
    model = ExactClassConditionalEps(schedule)
    labels = torch.tensor([0, 2, 1])
    first, trajectory = cfg_sample(model, schedule, labels, 3.0, generator=torch.Generator().manual_seed(6),
                                   return_trajectory=True, num_classes=3, image_shape=SMALL)
    again = cfg_sample(model, schedule, labels, 3.0, generator=torch.Generator().manual_seed(6), num_classes=3,
                       image_shape=SMALL)
    assert torch.equal(first, again)
    assert trajectory.shape == (schedule.num_steps + 1, 3, *SMALL)
    assert torch.equal(trajectory[0], torch.randn((3, *SMALL), generator=torch.Generator().manual_seed(6)))
    assert torch.equal(trajectory[-1], first)


def test_cfg_rejects_bad_arguments(schedule):
    model = ExactClassConditionalEps(schedule)
    with pytest.raises(TypeError, match="`labels`"):
        cfg_sample(model, schedule, torch.tensor([0.0, 1.0]), num_classes=3, image_shape=SMALL)
    with pytest.raises(TypeError, match="`guidance`"):
        cfg_sample(model, schedule, torch.tensor([0, 1]), "5", num_classes=3, image_shape=SMALL)
    with pytest.raises(ValueError, match="`labels`"):
        cfg_sample(model, schedule, torch.tensor([0, 3]), num_classes=3, image_shape=SMALL)


# ----------------------------------------------------------------------------- trajectories and real UNets

ZERO_MEANS = torch.zeros(1, 28, 28, dtype=torch.float64)

@pytest.mark.parametrize("sampler, frames", [
    (lambda schedule, g: ddpm_sample(ExactGaussianEps(schedule, ZERO_MEANS, SPREAD), schedule, 2, generator=g,
                                     return_trajectory=True), 301),
    (lambda schedule, g: ddim_sample(ExactGaussianEps(schedule, ZERO_MEANS, SPREAD), schedule, 2, 25, generator=g,
                                     return_trajectory=True), 26),
    (lambda schedule, g: flow_sample(ExactGaussianVelocity(ZERO_MEANS, SPREAD), 2, 7, generator=g,
                                     return_trajectory=True), 8),
], ids=["ddpm", "ddim", "flow"])
def test_trajectories_start_at_the_noise_and_end_at_the_sample(schedule, sampler, frames):
    """At the default 28x28: (steps + 1, N, 1, 28, 28) on the CPU, first frame x_T, last the samples."""
    samples, trajectory = sampler(schedule, torch.Generator().manual_seed(7))
    assert samples.shape == (2, 1, 28, 28)
    assert trajectory.shape == (frames, 2, 1, 28, 28) and trajectory.device.type == "cpu"
    assert torch.equal(trajectory[0], torch.randn((2, 1, 28, 28), generator=torch.Generator().manual_seed(7)))
    assert torch.equal(trajectory[-1], samples)


def test_samplers_run_real_unets_in_eval_mode_and_restore_training():
    """With the course's UNets at 28x28: shapes, finite values, and the model's train flag restored after."""
    torch.manual_seed(0)
    schedule = DDPMSchedule(5)
    unet = TimeConditionalUNet(num_hiddens=4).train()
    modes = []
    unet.register_forward_pre_hook(lambda module, args: modes.append(module.training))
    for samples in (ddpm_sample(unet, schedule, 3, generator=torch.Generator().manual_seed(0)),
                    ddim_sample(unet, schedule, 3, 5, generator=torch.Generator().manual_seed(0)),
                    flow_sample(unet, 3, 4, generator=torch.Generator().manual_seed(0))):
        assert samples.shape == (3, 1, 28, 28) and bool(torch.isfinite(samples).all())
    assert modes and not any(modes) and unet.training
    conditional = ClassConditionalUNet(num_hiddens=4).eval()
    samples = cfg_sample(conditional, schedule, torch.tensor([1, 7]), generator=torch.Generator().manual_seed(0))
    assert samples.shape == (2, 1, 28, 28) and not conditional.training


def test_samplers_reject_bad_sample_counts(schedule):
    model = ExactGaussianEps(schedule, PIXEL_MEANS, SPREAD)
    for call in (lambda: ddpm_sample(model, schedule, 0, image_shape=SMALL),
                 lambda: ddim_sample(model, schedule, 0, image_shape=SMALL),
                 lambda: flow_sample(ExactGaussianVelocity(PIXEL_MEANS, SPREAD), 0, image_shape=SMALL)):
        with pytest.raises(ValueError, match="`num_samples`"):
            call()
    with pytest.raises(ValueError, match="`num_sampling_steps`"):
        flow_sample(ExactGaussianVelocity(PIXEL_MEANS, SPREAD), 2, 0, image_shape=SMALL)
