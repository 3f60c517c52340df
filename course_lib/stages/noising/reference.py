"""The reference side of the checks of stage 1 (``01_noising``): for each case, the inputs and what the answers give on
them, with the outputs of known mistakes for the hints.

It needs the answers and spells out mistakes, so it never leaves the grader: no student package and no grading
kernel has this file (see :mod:`course_lib.stages.stage`).
"""

from __future__ import annotations

import math

import torch

from ...checks.harness import generator
from . import STAGE
from .api import DDPMSchedule
from .checks import EM_TIME, em_constant_diffusion, em_diffusion, em_drift, other_max_beta


def add_noise_case(shape: tuple, sigma: float, seed: int) -> tuple[dict, dict]:
    x = torch.rand(shape, generator=generator(seed))
    eps = torch.randn(shape, generator=generator(seed + 1))
    uniform = torch.rand(shape, generator=generator(seed + 1))
    z = STAGE.answers.add_noise(x, sigma, generator(seed + 1))
    return {"x": x, "sigma": sigma, "noise_seed": seed + 1}, {"z": z, "mistakes": [
        (x, "z equals x: the noise was not added (z = x + sigma * eps)"),
        (sigma * eps, "z is the noise alone: add sigma * eps to the image x"),
        (x + eps, "sigma is missing: scale the noise, z = x + sigma * eps"),
        (x + sigma**2 * eps, "you scaled eps by sigma**2 (the variance): sigma is the standard deviation, "
                             "z = x + sigma * eps"),
        (x + sigma * uniform, "eps looks uniform: torch.rand draws from [0, 1); use torch.randn for N(0, 1)"),
    ]}


def schedule_case(num_steps: int, beta_start: float, beta_end: float) -> tuple[dict, dict]:
    betas, alphas, alpha_bars = (table.float() for table in
                                 STAGE.answers.ddpm_schedule(num_steps, beta_start, beta_end))
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


def q_sample_case(batch_size: int, num_steps: int, seed: int, image_size: int) -> tuple[dict, dict]:
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
    return inputs, {"x_t": STAGE.answers.q_sample(x0, t, eps, schedule), "mistakes": [
        (mix(bars[t], 1 - bars[t]), "the square roots are missing: sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) eps"),
        (mix(bars[t].sqrt(), 1 - bars[t]), "the noise needs a square root too: sqrt(1 - alpha_bar_t) * eps"),
        (mix(bars[t], (1 - bars[t]).sqrt()), "x0 needs a square root too: sqrt(alpha_bar_t) * x0"),
        (mix(alphas[t].sqrt(), (1 - alphas[t]).sqrt()), "you used alphas: the closed form needs the cumulative "
                                                        "product, schedule.alpha_bars"),
        (mix((1 - bars[t]).sqrt(), bars[t].sqrt()), "x0 and eps are swapped: x0 gets sqrt(alpha_bar_t)"),
        (mix(bars[t - 1].sqrt(), (1 - bars[t - 1]).sqrt()), "off by one: use alpha_bars[t], t counts from 0"),
    ]}


def _cosine_tables(num_steps: int, offset: float, max_beta: float, *, shift: int = 0, squared: bool = True,
                   divide: bool = True, clip: str = "max") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The cosine schedule written with one known mistake (float64): ``shift`` moves s by one step, ``squared``
    and ``divide`` drop the square and the division by (1 + offset), ``clip`` is "max", "min" or "none"."""
    s = torch.arange(num_steps + 1, dtype=torch.float64) + shift
    angle = (s / num_steps + offset) / ((1 + offset) if divide else 1) * math.pi / 2
    f = torch.cos(angle) ** (2 if squared else 1)
    betas = 1 - f[1:] / f[:-1]
    betas = {"max": betas.clamp(max=max_beta), "min": betas.clamp(min=max_beta), "none": betas}[clip]
    alphas = 1 - betas
    return betas, alphas, torch.cumprod(alphas, 0)


FIXED_CAPS = (0.02, 0.999)  # the caps a student may write in place of max_beta: SUTD's and the paper's


def cosine_case(num_steps: int, offset: float, max_beta: float) -> tuple[dict, dict]:
    betas, alphas, alpha_bars = (table.float() for table in
                                 STAGE.answers.cosine_schedule(num_steps, offset, max_beta))
    s = torch.arange(num_steps + 1, dtype=torch.float64)
    f = torch.cos((s / num_steps + offset) / (1 + offset) * math.pi / 2) ** 2
    variants = {
        "unclipped": _cosine_tables(num_steps, offset, max_beta, clip="none"),
        "floor": _cosine_tables(num_steps, offset, max_beta, clip="min"),
        "shifted": _cosine_tables(num_steps, offset, max_beta, shift=1),
        "no_offset": _cosine_tables(num_steps, 0.0, max_beta),
        "not_squared": _cosine_tables(num_steps, offset, max_beta, squared=False),
        "not_divided": _cosine_tables(num_steps, offset, max_beta, divide=False),
    }
    clip_hint = (f"the betas must be clipped from above, betas.clamp(max=max_beta): none may exceed {max_beta:g}, "
                 "and the small ones stay as they are")
    formula_mistakes = [
        ("shifted", "off by one: betas[t] = 1 - f(t + 1) / f(t) with s = 0, 1, ..., T (T + 1 values of f, "
                    "torch.arange(num_steps + 1))"),
        ("no_offset", "the offset is missing: f(s) = cos^2((s / T + offset) / (1 + offset) * pi / 2)"),
        ("not_divided", "divide by (1 + offset): f(s) = cos^2((s / T + offset) / (1 + offset) * pi / 2)"),
        ("not_squared", "f is the square of the cosine: cos(...) ** 2"),
    ]
    # (table, hint, whole): a formula mistake shows in the first half of the table, where f is far from 0 and the
    # float32 and float64 tables agree; a clipping mistake only where the betas reach max_beta
    betas_mistakes = [(variants["unclipped"][0].float(), "betas go above max_beta: " + clip_hint, True),
                      (variants["floor"][0].float(), "you clipped from below (clamp(min=...)): " + clip_hint, True)]
    betas_mistakes += [(_cosine_tables(num_steps, offset, cap)[0].float(),
                        f"your betas are clipped at {cap:g}, a fixed number: clip at the max_beta you are given, "
                        "betas.clamp(max=max_beta)", True) for cap in FIXED_CAPS if cap != max_beta]
    betas_mistakes += [(variants[name][0].float(), hint, False) for name, hint in formula_mistakes]
    alpha_bars_mistakes = [
        (f[1:].float() / f[0].float(), "alpha_bars must be the cumulative product of the clipped alphas "
                                       "(torch.cumprod(1 - betas, 0)), not f(t + 1) / f(0): they differ from the "
                                       "first clipped beta on"),
        (variants["unclipped"][2].float(), "alpha_bars must come from the clipped betas: clip first, then "
                                           "alphas = 1 - betas and their cumulative product"),
        (alphas, "alpha_bars equals alphas: is it a cumulative product? torch.cumprod(alphas, dim=0)"),
    ]
    return {"num_steps": num_steps, "offset": offset, "max_beta": max_beta}, {
        "betas": betas, "alphas": alphas, "alpha_bars": alpha_bars,
        "other_betas": STAGE.answers.cosine_schedule(num_steps, offset, other_max_beta(max_beta))[0].float(),
        "betas_mistakes": betas_mistakes,
        "alphas_mistakes": [(betas, "alphas equals betas: alpha_t = 1 - beta_t"),
                            (alpha_bars, "these are the alpha_bars: alpha_t = 1 - beta_t, without the product")],
        "alpha_bars_mistakes": alpha_bars_mistakes,
    }


def em_case(num_paths: int, dt: float, seed: int) -> tuple[dict, dict]:
    em_step = STAGE.answers.em_step
    g = generator(seed)
    x = torch.randn(num_paths, generator=g) * 2
    z = torch.randn(num_paths, generator=g)
    t = EM_TIME
    f, b = em_drift(x, t), em_diffusion(x, t)
    f_late, b_late = em_drift(x, t + dt), em_diffusion(x, t + dt)
    root = math.sqrt(dt)
    mistakes = [
        (x + f * dt + b * z, "the noise term needs sqrt(dt): b(x, t) * sqrt(dt) * z (the variance of the kicks "
                             "grows like dt, so their size like sqrt(dt))"),
        (x + f * dt + b * dt * z, "you scaled the noise by dt: it is b(x, t) * sqrt(dt) * z"),
        (x + b * root * z, "the drift is missing: add f(x, t) * dt"),
        (x + f + b * root * z, "the drift needs dt: f(x, t) * dt"),
        (x + f * dt + root * z, "the noise is not scaled by the diffusion: b(x, t) * sqrt(dt) * z"),
        (x + f * dt + b.sqrt() * root * z, "b(x, t) is the size of the noise (a standard deviation): multiply by it, "
                                           "no square root of b"),
        (x + f * dt + b ** 2 * root * z, "b(x, t) is the size of the noise (a standard deviation): multiply by b, "
                                         "not by b squared"),
        (x + f * root + b * dt * z, "drift and noise swapped their step sizes: f(x, t) * dt + b(x, t) * sqrt(dt) * z"),
        (x + b * dt + f * root * z, "drift and diffusion are swapped: f(x, t) * dt + b(x, t) * sqrt(dt) * z"),
        (f * dt + b * root * z, "x_{k+1} starts from x_k: return x + f(x, t) dt + b(x, t) sqrt(dt) z"),
        (x + f_late * dt + b_late * root * z, "evaluate f and b at the start of the step, (x_k, t_k), not at t + dt"),
        (x - f * dt - b * root * z, "both terms are added: x + f(x, t) dt + b(x, t) sqrt(dt) z"),
    ]
    return {"x": x, "z": z, "t": t, "dt": dt}, {
        "x_next": em_step(x, t, dt, em_drift, em_diffusion, z),
        "x_next_constant": em_step(x, t, dt, em_drift, em_constant_diffusion, z),
        "mistakes": mistakes}
