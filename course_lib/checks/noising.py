"""Checks for stage 1 (``01_noising``): ``add_noise``, the DDPM schedule and ``q_sample``.

Each check runs the student's function on seeded inputs inside :func:`~course_lib.checks.forbid` (so calling
the reference does not pass), compares it with :mod:`course_lib.noise` on identical noise, and explains a
typical mistake when the result matches it (sigma squared, alphas instead of alpha_bars, a forgotten square
root, noise not drawn from the generator, ...). The notebook's hidden tests call the same checks with other
sizes, seeds and parameters.
"""

from __future__ import annotations

from typing import Callable

import torch

from .. import answers
from .. import noise as reference
from .harness import CheckFailed, compare, expect_tensor, forbid, passed, run_student

noising_answers = answers.load("noising")


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def check_add_noise(add_noise: Callable, shape: tuple = (4, 1, 28, 28), sigma: float = 0.5, seed: int = 0) -> None:
    """Check ``add_noise(x, sigma, generator)`` against :func:`course_lib.noise.add_noise`.

    ``x`` is uniform in [0, 1] of ``shape``; both functions draw eps from a generator seeded with ``seed + 1``.
    """
    x = torch.rand(shape, generator=_generator(seed))
    original = x.clone()
    with forbid(noising_answers.add_noise):
        got = run_student("add_noise", add_noise, x, sigma, _generator(seed + 1))
        again = run_student("add_noise", add_noise, x, sigma, _generator(seed + 1))
    if not torch.equal(x, original):
        raise CheckFailed("add_noise changed its input x in place: return a new tensor (z = x + ...), keep x as it is")
    expect_tensor("add_noise(x, sigma, generator)", got, shape)
    if not torch.equal(got, again):
        raise CheckFailed("add_noise gave different results for two generators with the same seed: draw eps with "
                          "torch.randn(x.shape, generator=generator), not torch.randn_like(x) or the global seed")
    eps = torch.randn(shape, generator=_generator(seed + 1))
    expected = reference.add_noise(x, sigma, _generator(seed + 1))
    uniform = torch.rand(shape, generator=_generator(seed + 1))
    compare("z", got, expected, [
        (x, "z equals x: the noise was not added (z = x + sigma * eps)"),
        (sigma * eps, "z is the noise alone: add sigma * eps to the image x"),
        (x + eps, "sigma is missing: scale the noise, z = x + sigma * eps"),
        (x + sigma**2 * eps, "you scaled eps by sigma**2 (the variance): sigma is the standard deviation, "
                             "z = x + sigma * eps"),
        (x + sigma * uniform, "eps looks uniform: torch.rand draws from [0, 1); use torch.randn for N(0, 1)"),
    ], "draw eps = torch.randn(x.shape, generator=generator) once and return x + sigma * eps")
    passed(f"add_noise: shape {tuple(shape)}, sigma={sigma:g}, same noise as the reference for the same generator")


def check_schedule(ddpm_schedule: Callable, num_steps: int = 300, beta_start: float = 1e-4,
                   beta_end: float = 0.02) -> None:
    """Check ``ddpm_schedule(num_steps, beta_start, beta_end) -> (betas, alphas, alpha_bars)`` against
    :class:`course_lib.noise.DDPMSchedule` (linear). Each tensor has shape (num_steps,)."""
    with forbid(reference.DDPMSchedule, noising_answers.ddpm_schedule):
        result = run_student("ddpm_schedule", ddpm_schedule, num_steps, beta_start, beta_end)
    if not isinstance(result, (tuple, list)) or len(result) != 3:
        raise CheckFailed("ddpm_schedule should return three tensors: (betas, alphas, alpha_bars)")
    betas, alphas, alpha_bars = (expect_tensor(name, value, (num_steps,))
                                 for name, value in zip(("betas", "alphas", "alpha_bars"), result))
    ref = reference.DDPMSchedule(num_steps, beta_start, beta_end)
    compare("betas", betas, ref.betas, [
        (torch.linspace(beta_start, beta_end, num_steps + 1)[1:], "betas has one step too many at the start: "
                                                                  "torch.linspace(beta_start, beta_end, num_steps)"),
        (ref.alphas, "these are the alphas: betas grow linearly from beta_start to beta_end"),
    ], f"betas[0] should be beta_start ({beta_start:g}) and betas[-1] beta_end ({beta_end:g}): "
       "torch.linspace(beta_start, beta_end, num_steps)")
    compare("alphas", alphas, ref.alphas, [
        (ref.betas, "alphas equals betas: alpha_t = 1 - beta_t"),
        (ref.alpha_bars, "these are the alpha_bars: alpha_t = 1 - beta_t, without the product"),
    ], "alpha_t = 1 - beta_t")
    compare("alpha_bars", alpha_bars, ref.alpha_bars, [
        (ref.alphas, "alpha_bars equals alphas: is it a cumulative product? torch.cumprod(alphas, dim=0)"),
        (torch.cumsum(ref.alphas, 0), "that is a cumulative sum: alpha_bar_t is a cumulative product"),
        (torch.cumprod(ref.betas, 0), "that is the cumulative product of the betas: multiply the alphas"),
        (ref.alpha_bars.sqrt(), "no square root here: alpha_bar_t is the product itself (the root comes in q_sample)"),
        (ref.alpha_bars_prev(), "alpha_bars is shifted by one: alpha_bars[0] should be alphas[0] (t counts from 0)"),
    ], "alpha_bars[t] = alphas[0] * alphas[1] * ... * alphas[t]: is it a cumulative product?")
    passed(f"ddpm_schedule: T={num_steps}, betas from {beta_start:g} to {beta_end:g}, "
           f"alpha_bars[-1] = {float(alpha_bars[-1]):.4f}")


def check_q_sample(q_sample: Callable, batch_size: int = 6, num_steps: int = 300, seed: int = 0,
                   image_size: int = 28) -> None:
    """Check ``q_sample(x0, t, eps, schedule)`` against :func:`course_lib.noise.q_sample`.

    ``x0`` in [-1, 1] of shape (batch_size, 1, image_size, image_size); ``t`` integers in 0..T-1 that
    include 0 and T-1; ``schedule`` a linear :class:`~course_lib.noise.DDPMSchedule` of ``num_steps``.
    """
    if batch_size < 2:
        raise ValueError(f"`batch_size` must be at least 2 (the check includes t = 0 and t = T-1), got {batch_size}")
    generator = _generator(seed)
    shape = (batch_size, 1, image_size, image_size)
    x0 = torch.rand(shape, generator=generator) * 2 - 1
    eps = torch.randn(shape, generator=generator)
    t = torch.randint(0, num_steps, (batch_size,), generator=generator)
    t[0], t[-1] = 0, num_steps - 1
    schedule = reference.DDPMSchedule(num_steps)
    with forbid(noising_answers.q_sample):
        try:
            got = run_student("q_sample", q_sample, x0, t, eps, schedule)
        except CheckFailed as error:
            if "size of tensor" in str(error) or "broadcast" in str(error):
                raise CheckFailed(f"{error}. Hint: alpha_bars[t] has shape (N,); reshape it to (N, 1, 1, 1) "
                                  "so that it scales each image") from None
            raise
    expect_tensor("q_sample(x0, t, eps, schedule)", got, shape)

    def mix(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a.view(-1, 1, 1, 1) * x0 + b.view(-1, 1, 1, 1) * eps

    bars, alphas = schedule.alpha_bars, schedule.alphas
    expected = reference.q_sample(x0, t, eps, schedule)
    compare("x_t", got, expected, [
        (mix(bars[t], 1 - bars[t]), "the square roots are missing: sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) eps"),
        (mix(bars[t].sqrt(), 1 - bars[t]), "the noise needs a square root too: sqrt(1 - alpha_bar_t) * eps"),
        (mix(bars[t], (1 - bars[t]).sqrt()), "x0 needs a square root too: sqrt(alpha_bar_t) * x0"),
        (mix(alphas[t].sqrt(), (1 - alphas[t]).sqrt()), "you used alphas: the closed form needs the cumulative "
                                                        "product, schedule.alpha_bars"),
        (mix((1 - bars[t]).sqrt(), bars[t].sqrt()), "x0 and eps are swapped: x0 gets sqrt(alpha_bar_t)"),
        (mix(bars[t - 1].sqrt(), (1 - bars[t - 1]).sqrt()), "off by one: use alpha_bars[t], t counts from 0"),
    ], "x_t = sqrt(alpha_bars[t]) * x0 + sqrt(1 - alpha_bars[t]) * eps, with alpha_bars[t] shaped (N, 1, 1, 1)")
    passed(f"q_sample: batch of {batch_size}, T={num_steps}, t from {int(t.min())} to {int(t.max())}")
