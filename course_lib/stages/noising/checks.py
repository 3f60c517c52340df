"""Checks for stage 1 (``01_noising``): ``add_noise``, the linear and cosine DDPM schedules, ``q_sample`` and one
Euler-Maruyama step ``em_step``.

Each check (three parts, see :mod:`course_lib.checks.protocol`) builds seeded inputs, runs the student's
function on them, compares with the stage's answers on identical noise, and explains a typical mistake when the
result matches it (sigma squared, alphas instead of alpha_bars, a forgotten square root, unclipped cosine betas,
dt where sqrt(dt) belongs, noise not drawn from the generator, ...). The notebook's hidden tests call the same
checks with other sizes, seeds and parameters.

The probe and the judge of each check are here; its reference side, which builds the inputs and expected values
with the answers, is in ``reference.py`` beside this file (read through ``REFERENCE``), which only the grader has.
"""

from __future__ import annotations

import torch

from ...checks.harness import CheckFailed, close, compare, expect_close, expect_tensor, generator, run_student
from ...checks.devices import device_run
from ...checks.protocol import check
from ..stage import ReferenceCase
from . import STAGE
from .api import DDPMSchedule


REFERENCE = ReferenceCase(STAGE)


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


def _add_noise_devices(add_noise, *, inputs: dict) -> str | None:
    return device_run("add_noise", add_noise, inputs["x"].clone(), inputs["sigma"], generator(inputs["noise_seed"]),
                      holder="x", where="x.device")


@check(reference=REFERENCE.add_noise_case, probe=_add_noise_probe, judge=_add_noise_judge, devices=_add_noise_devices)
def check_add_noise(add_noise, shape: tuple = (4, 1, 28, 28), sigma: float = 0.5, seed: int = 0):
    """Check ``add_noise(x, sigma, generator)`` against the reference.

    ``x`` is uniform in [0, 1] of ``shape``; both functions draw eps from a generator seeded with ``seed + 1``.
    """


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


@check(reference=REFERENCE.schedule_case, probe=_schedule_probe, judge=_schedule_judge)
def check_schedule(ddpm_schedule, num_steps: int = 300, beta_start: float = 1e-4, beta_end: float = 0.02):
    """Check ``ddpm_schedule(num_steps, beta_start, beta_end) -> (betas, alphas, alpha_bars)`` against the linear
    schedule of the reference. Each tensor has shape (num_steps,)."""


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


def _q_sample_devices(q_sample, *, inputs: dict) -> str | None:
    schedule = DDPMSchedule.from_tables(inputs["betas"], inputs["alphas"], inputs["alpha_bars"])
    return device_run("q_sample", q_sample, inputs["x0"], inputs["t"], inputs["eps"], schedule, holder="x0",
                      where="x0.device")


@check(reference=REFERENCE.q_sample_case, probe=_q_sample_probe, judge=_q_sample_judge, devices=_q_sample_devices)
def check_q_sample(q_sample, batch_size: int = 6, num_steps: int = 300, seed: int = 0, image_size: int = 28):
    """Check ``q_sample(x0, t, eps, schedule)`` against the reference.

    ``x0`` in [-1, 1] of shape (batch_size, 1, image_size, image_size); ``t`` integers in 0..T-1 that
    include 0 and T-1; ``schedule`` the linear schedule of ``num_steps`` steps.
    """


def other_max_beta(max_beta: float) -> float:
    """The second cap the cosine check tries, far from ``max_beta``: a schedule clipped at a fixed number shows."""
    return 0.999 if max_beta < 0.5 else 0.02


def _cosine_tables(cosine_schedule, num_steps: int, offset: float, max_beta: float) -> dict:
    result = run_student("cosine_schedule", cosine_schedule, num_steps, offset=offset, max_beta=max_beta)
    if not isinstance(result, (tuple, list)) or len(result) != 3:
        raise CheckFailed("cosine_schedule should return three tensors: (betas, alphas, alpha_bars)")
    return dict(zip(("betas", "alphas", "alpha_bars"), result))


def _cosine_probe(cosine_schedule, *, inputs: dict) -> dict:
    num_steps, offset = inputs["num_steps"], inputs["offset"]
    tables = _cosine_tables(cosine_schedule, num_steps, offset, inputs["max_beta"])
    other = _cosine_tables(cosine_schedule, num_steps, offset, other_max_beta(inputs["max_beta"]))
    return {**tables, "other_betas": other["betas"]}


def _cosine_judge(case: dict, inputs: dict, outputs: dict, expected: dict) -> str:
    num_steps, max_beta = case["num_steps"], case["max_beta"]
    tables = {name: expect_tensor(name, outputs[name], (num_steps,)) for name in ("betas", "alphas", "alpha_bars")}
    betas, wanted = tables["betas"], expected["betas"]
    head = slice(0, max(1, num_steps // 2))
    if not close(betas, wanted):
        for wrong, hint, whole in expected["betas_mistakes"]:
            part = slice(None) if whole else head
            if close(betas[part], wrong[part]) and not close(betas[part], wanted[part]):
                expect_close("betas", betas, wanted, hint)
    compare("betas", betas, wanted, [],
            "f(s) = cos^2((s / T + offset) / (1 + offset) * pi / 2) for s = 0..T, betas[t] = 1 - f(t + 1) / f(t), "
            "then betas.clamp(max=max_beta)")
    compare("alphas", tables["alphas"], expected["alphas"], expected["alphas_mistakes"], "alpha_t = 1 - beta_t")
    compare("alpha_bars", tables["alpha_bars"], expected["alpha_bars"], expected["alpha_bars_mistakes"],
            "alpha_bars[t] = alphas[0] * ... * alphas[t], from the clipped betas: torch.cumprod(alphas, dim=0)")
    other, other_betas = other_max_beta(max_beta), expected["other_betas"]
    got = expect_tensor(f"betas with max_beta={other:g}", outputs["other_betas"], (num_steps,))
    if not close(got, other_betas):
        raise CheckFailed(f"called with max_beta={other:g}, your largest beta is {float(got.max()):.4g}, the "
                          f"reference's {float(other_betas.max()):.4g}: clip at the max_beta you are given, "
                          "betas.clamp(max=max_beta), not at a fixed number")
    clipped = int((expected["betas"] >= max_beta).sum())
    return (f"cosine_schedule: T={num_steps}, offset={case['offset']:g}, {clipped} of {num_steps} betas clipped at "
            f"{max_beta:g}, alpha_bars[-1] = {float(tables['alpha_bars'][-1]):.3g}")


@check(reference=REFERENCE.cosine_case, probe=_cosine_probe, judge=_cosine_judge)
def check_cosine_schedule(cosine_schedule, num_steps: int = 300, offset: float = 0.008, max_beta: float = 0.02):
    """Check ``cosine_schedule(num_steps, offset=..., max_beta=...) -> (betas, alphas, alpha_bars)`` against the
    reference cosine schedule of Nichol & Dhariwal with the betas clipped at ``max_beta``. Each tensor has shape
    (num_steps,). The betas are checked again with another cap (0.999, or 0.02 when ``max_beta`` is 0.5 or more),
    so that a schedule clipped at a fixed number fails."""


EM_TIME = 0.7  # t_k of the checked step


def em_drift(x: torch.Tensor, t: float) -> torch.Tensor:
    """The drift of the checked SDE, f(x, t) = -0.8 x + 1.5 t (given code: the probe and the reference share it)."""
    return -0.8 * x + 1.5 * t


def em_diffusion(x: torch.Tensor, t: float) -> torch.Tensor:
    """The diffusion of the checked SDE, b(x, t) = 0.4 + 0.3 x^2 + 0.5 t, a tensor shaped like x."""
    return 0.4 + 0.3 * x ** 2 + 0.5 * t


def em_constant_diffusion(x: torch.Tensor, t: float) -> float:
    """A diffusion that is a plain number, g = 0.7: the special case b(x, t) = g(t) of Brownian motion."""
    return 0.7


def _em_probe(em_step, *, inputs: dict) -> dict:
    x, z, t, dt = inputs["x"], inputs["z"], float(inputs["t"]), float(inputs["dt"])
    given, noise = x.clone(), z.clone()
    try:
        got = run_student("em_step", em_step, given, t, dt, em_drift, em_diffusion, noise)
        again = run_student("em_step", em_step, x.clone(), t, dt, em_drift, em_diffusion, z.clone())
        constant = run_student("em_step", em_step, x.clone(), t, dt, em_drift, em_constant_diffusion, z.clone())
    except CheckFailed as error:
        if any(text in str(error) for text in ("must be Tensor", "not float", "'float' object")):
            raise CheckFailed(f"{error}. Hint: t and dt are plain floats and diffusion(x, t) may return a number: "
                              "use math.sqrt(dt) or dt ** 0.5, not torch.sqrt") from None
        raise
    return {"x_next": got, "again": again, "constant": constant, "x_after": given, "z_after": noise}


def _em_judge(case: dict, inputs: dict, outputs: dict, expected: dict) -> str:
    shape = tuple(inputs["x"].shape)
    if not torch.equal(outputs["x_after"], inputs["x"]) or not torch.equal(outputs["z_after"], inputs["z"]):
        raise CheckFailed("em_step changed x or z in place: return a new tensor (x + ...), keep its inputs as they are")
    got = expect_tensor("em_step(x, t, dt, drift, diffusion, z)", outputs["x_next"], shape)
    again = expect_tensor("em_step(x, t, dt, drift, diffusion, z)", outputs["again"], shape)
    if not torch.equal(got, again):
        raise CheckFailed("em_step gave two different results for the same inputs: use the z you are given, "
                          "draw no noise of your own")
    compare("x_{k+1}", got, expected["x_next"], expected["mistakes"],
            "x_{k+1} = x + drift(x, t) * dt + diffusion(x, t) * sqrt(dt) * z")
    constant = expect_tensor("em_step with a constant diffusion", outputs["constant"], shape)
    compare("x_{k+1} with diffusion(x, t) = 0.7 (a number)", constant, expected["x_next_constant"], [],
            "diffusion(x, t) may return a plain number (a constant g): multiply it with sqrt(dt) * z as it is")
    return (f"em_step: {shape[0]} paths, dt={case['dt']:g}, with a diffusion b(x, t) and with a constant one, "
            "x + f dt + b sqrt(dt) z")


def _em_devices(em_step, *, inputs: dict) -> str | None:
    """The step with x and z on the device, with the diffusion b(x, t) and with the constant one."""
    t, dt = float(inputs["t"]), float(inputs["dt"])
    return next(filter(None, (device_run("em_step", em_step, inputs["x"].clone(), t, dt, em_drift, diffusion,
                                         inputs["z"].clone(), holder="x", where="x.device")
                              for diffusion in (em_diffusion, em_constant_diffusion))), None)


@check(reference=REFERENCE.em_case, probe=_em_probe, judge=_em_judge, devices=_em_devices)
def check_em_step(em_step, num_paths: int = 6, dt: float = 0.01, seed: int = 0):
    """Check ``em_step(x, t, dt, drift, diffusion, z)``, one Euler-Maruyama step, against the reference.

    ``x`` and ``z`` hold ``num_paths`` random values; t = 0.7; the drift is f(x, t) = -0.8 x + 1.5 t and the
    diffusion b(x, t) = 0.4 + 0.3 x^2 + 0.5 t, then the constant 0.7. Keep dt away from 1 (where sqrt(dt) = dt).
    """
