"""Checks for stage 1 (``01_noising``): ``add_noise``, the DDPM schedule and ``q_sample``.

Each check (three parts, see :mod:`course_lib.checks.protocol`) builds seeded inputs, runs the student's
function on them, compares with the stage's answers on identical noise, and explains a typical mistake when the
result matches it (sigma squared, alphas instead of alpha_bars, a forgotten square root, noise not drawn from the
generator, ...). The notebook's hidden tests call the same checks with other sizes, seeds and parameters.
"""

from __future__ import annotations

import torch

from .. import answers
from ..noise import DDPMSchedule
from .harness import CheckFailed, compare, expect_tensor, generator, run_student
from .protocol import check

# ----------------------------------------------------------------------------------------------- add_noise


def _add_noise_reference(shape: tuple, sigma: float, seed: int) -> tuple[dict, dict]:
    x = torch.rand(shape, generator=generator(seed))
    eps = torch.randn(shape, generator=generator(seed + 1))
    uniform = torch.rand(shape, generator=generator(seed + 1))
    z = answers.load("noising").add_noise(x, sigma, generator(seed + 1))
    return {"x": x, "sigma": sigma, "noise_seed": seed + 1}, {"z": z, "mistakes": [
        (x, "z equals x: the noise was not added (z = x + sigma * eps)"),
        (sigma * eps, "z is the noise alone: add sigma * eps to the image x"),
        (x + eps, "sigma is missing: scale the noise, z = x + sigma * eps"),
        (x + sigma**2 * eps, "you scaled eps by sigma**2 (the variance): sigma is the standard deviation, "
                             "z = x + sigma * eps"),
        (x + sigma * uniform, "eps looks uniform: torch.rand draws from [0, 1); use torch.randn for N(0, 1)"),
    ]}


def _add_noise_probe(add_noise, *, inputs: dict) -> dict:
    x = inputs["x"].clone()
    got = run_student("add_noise", add_noise, x, inputs["sigma"], generator(inputs["noise_seed"]))
    again = run_student("add_noise", add_noise, x, inputs["sigma"], generator(inputs["noise_seed"]))
    return {"z": got, "again": again, "x_after": x}


def _add_noise_judge(case: dict, inputs: dict, outputs: dict, expected: dict) -> str:
    shape = tuple(case["shape"])
    if not torch.equal(outputs["x_after"], inputs["x"]):
        raise CheckFailed("add_noise changed its input x in place: return a new tensor (z = x + ...), keep x as it is")
    got = expect_tensor("add_noise(x, sigma, generator)", outputs["z"], shape)
    if not torch.equal(got, expect_tensor("add_noise(x, sigma, generator)", outputs["again"], shape)):
        raise CheckFailed("add_noise gave different results for two generators with the same seed: draw eps with "
                          "torch.randn(x.shape, generator=generator), not torch.randn_like(x) or the global seed")
    compare("z", got, expected["z"], expected["mistakes"],
            "draw eps = torch.randn(x.shape, generator=generator) once and return x + sigma * eps")
    return f"add_noise: shape {shape}, sigma={case['sigma']:g}, same noise as the reference for the same generator"


@check(reference=_add_noise_reference, probe=_add_noise_probe, judge=_add_noise_judge)
def check_add_noise(add_noise, shape: tuple = (4, 1, 28, 28), sigma: float = 0.5, seed: int = 0):
    """Check ``add_noise(x, sigma, generator)`` against the reference.

    ``x`` is uniform in [0, 1] of ``shape``; both functions draw eps from a generator seeded with ``seed + 1``.
    """


# ----------------------------------------------------------------------------------------------- the schedule


def _schedule_reference(num_steps: int, beta_start: float, beta_end: float) -> tuple[dict, dict]:
    betas, alphas, alpha_bars = (table.float() for table in
                                 answers.load("noising").ddpm_schedule(num_steps, beta_start, beta_end))
    shifted = torch.cat([alpha_bars.new_ones(1), alpha_bars[:-1]])
    return {"num_steps": num_steps, "beta_start": beta_start, "beta_end": beta_end}, {
        "betas": betas, "alphas": alphas, "alpha_bars": alpha_bars,
        "betas_mistakes": [
            (torch.linspace(beta_start, beta_end, num_steps + 1)[1:],
             "betas has one step too many at the start: torch.linspace(beta_start, beta_end, num_steps)"),
            (alphas, "these are the alphas: betas grow linearly from beta_start to beta_end")],
        "alphas_mistakes": [
            (betas, "alphas equals betas: alpha_t = 1 - beta_t"),
            (alpha_bars, "these are the alpha_bars: alpha_t = 1 - beta_t, without the product")],
        "alpha_bars_mistakes": [
            (alphas, "alpha_bars equals alphas: is it a cumulative product? torch.cumprod(alphas, dim=0)"),
            (torch.cumsum(alphas, 0), "that is a cumulative sum: alpha_bar_t is a cumulative product"),
            (torch.cumprod(betas, 0), "that is the cumulative product of the betas: multiply the alphas"),
            (alpha_bars.sqrt(), "no square root here: alpha_bar_t is the product itself (the root comes in q_sample)"),
            (shifted, "alpha_bars is shifted by one: alpha_bars[0] should be alphas[0] (t counts from 0)")],
    }


def _schedule_probe(ddpm_schedule, *, inputs: dict) -> dict:
    result = run_student("ddpm_schedule", ddpm_schedule, inputs["num_steps"], inputs["beta_start"],
                         inputs["beta_end"])
    if not isinstance(result, (tuple, list)) or len(result) != 3:
        raise CheckFailed("ddpm_schedule should return three tensors: (betas, alphas, alpha_bars)")
    return dict(zip(("betas", "alphas", "alpha_bars"), result))


def _schedule_judge(case: dict, inputs: dict, outputs: dict, expected: dict) -> str:
    num_steps, beta_start, beta_end = case["num_steps"], case["beta_start"], case["beta_end"]
    tables = {name: expect_tensor(name, outputs[name], (num_steps,)) for name in ("betas", "alphas", "alpha_bars")}
    compare("betas", tables["betas"], expected["betas"], expected["betas_mistakes"],
            f"betas[0] should be beta_start ({beta_start:g}) and betas[-1] beta_end ({beta_end:g}): "
            "torch.linspace(beta_start, beta_end, num_steps)")
    compare("alphas", tables["alphas"], expected["alphas"], expected["alphas_mistakes"], "alpha_t = 1 - beta_t")
    compare("alpha_bars", tables["alpha_bars"], expected["alpha_bars"], expected["alpha_bars_mistakes"],
            "alpha_bars[t] = alphas[0] * alphas[1] * ... * alphas[t]: is it a cumulative product?")
    return (f"ddpm_schedule: T={num_steps}, betas from {beta_start:g} to {beta_end:g}, "
            f"alpha_bars[-1] = {float(tables['alpha_bars'][-1]):.4f}")


@check(reference=_schedule_reference, probe=_schedule_probe, judge=_schedule_judge)
def check_schedule(ddpm_schedule, num_steps: int = 300, beta_start: float = 1e-4, beta_end: float = 0.02):
    """Check ``ddpm_schedule(num_steps, beta_start, beta_end) -> (betas, alphas, alpha_bars)`` against the linear
    schedule of the reference. Each tensor has shape (num_steps,)."""


# ----------------------------------------------------------------------------------------------- q_sample


def _q_sample_reference(batch_size: int, num_steps: int, seed: int, image_size: int) -> tuple[dict, dict]:
    if batch_size < 2:
        raise ValueError(f"`batch_size` must be at least 2 (the check includes t = 0 and t = T-1), got {batch_size}")
    g = generator(seed)
    shape = (batch_size, 1, image_size, image_size)
    x0 = torch.rand(shape, generator=g) * 2 - 1
    eps = torch.randn(shape, generator=g)
    t = torch.randint(0, num_steps, (batch_size,), generator=g)
    t[0], t[-1] = 0, num_steps - 1
    schedule = DDPMSchedule(num_steps)
    bars, alphas = schedule.alpha_bars, schedule.alphas

    def mix(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a.view(-1, 1, 1, 1) * x0 + b.view(-1, 1, 1, 1) * eps

    inputs = {"x0": x0, "t": t, "eps": eps, "betas": schedule.betas, "alphas": alphas, "alpha_bars": bars}
    return inputs, {"x_t": answers.load("noising").q_sample(x0, t, eps, schedule), "mistakes": [
        (mix(bars[t], 1 - bars[t]), "the square roots are missing: sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) eps"),
        (mix(bars[t].sqrt(), 1 - bars[t]), "the noise needs a square root too: sqrt(1 - alpha_bar_t) * eps"),
        (mix(bars[t], (1 - bars[t]).sqrt()), "x0 needs a square root too: sqrt(alpha_bar_t) * x0"),
        (mix(alphas[t].sqrt(), (1 - alphas[t]).sqrt()), "you used alphas: the closed form needs the cumulative "
                                                        "product, schedule.alpha_bars"),
        (mix((1 - bars[t]).sqrt(), bars[t].sqrt()), "x0 and eps are swapped: x0 gets sqrt(alpha_bar_t)"),
        (mix(bars[t - 1].sqrt(), (1 - bars[t - 1]).sqrt()), "off by one: use alpha_bars[t], t counts from 0"),
    ]}


def _q_sample_probe(q_sample, *, inputs: dict) -> dict:
    schedule = DDPMSchedule.from_tables(inputs["betas"], inputs["alphas"], inputs["alpha_bars"])
    try:
        return {"x_t": run_student("q_sample", q_sample, inputs["x0"], inputs["t"], inputs["eps"], schedule)}
    except CheckFailed as error:
        if "size of tensor" in str(error) or "broadcast" in str(error):
            raise CheckFailed(f"{error}. Hint: alpha_bars[t] has shape (N,); reshape it to (N, 1, 1, 1) "
                              "so that it scales each image") from None
        raise


def _q_sample_judge(case: dict, inputs: dict, outputs: dict, expected: dict) -> str:
    got = expect_tensor("q_sample(x0, t, eps, schedule)", outputs["x_t"], tuple(inputs["x0"].shape))
    compare("x_t", got, expected["x_t"], expected["mistakes"],
            "x_t = sqrt(alpha_bars[t]) * x0 + sqrt(1 - alpha_bars[t]) * eps, with alpha_bars[t] shaped (N, 1, 1, 1)")
    t = inputs["t"]
    return f"q_sample: batch of {case['batch_size']}, T={case['num_steps']}, t from {int(t.min())} to {int(t.max())}"


@check(reference=_q_sample_reference, probe=_q_sample_probe, judge=_q_sample_judge)
def check_q_sample(q_sample, batch_size: int = 6, num_steps: int = 300, seed: int = 0, image_size: int = 28):
    """Check ``q_sample(x0, t, eps, schedule)`` against the reference.

    ``x0`` in [-1, 1] of shape (batch_size, 1, image_size, image_size); ``t`` integers in 0..T-1 that
    include 0 and T-1; ``schedule`` the linear schedule of ``num_steps`` steps.
    """
