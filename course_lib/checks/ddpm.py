"""Checks for stage 3 (DDPM): the FCBlock, the time-conditioned UNet, the DDPM loss (Algorithm 1),
one reverse step and the sampling loop (Algorithm 2).

Every ``check_*`` function runs the student's code with the course_lib reference forbidden (see
:func:`course_lib.checks.forbid`), compares it with the reference on identical seeded inputs, and
raises :class:`~course_lib.checks.CheckFailed` with a hint that names the likely mistake. The visible
check cells call them with their defaults; the hidden tests call them again with other seeds and sizes.

Checks run single-threaded (:func:`~course_lib.checks.harness.single_threaded`): their models are tiny.
"""

from __future__ import annotations

import functools
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .. import answers, sampling
from ..models import ClassConditionalUNet, FCBlock, TimeConditionalUNet, UNetBody
from ..noise import DDPMSchedule
from .conditional_unets import tiny_unet, unet_mutants
from .harness import (IMAGE, CheckFailed, Spy, ToyModel, expect_close, expect_sampling_calls, expect_scalar_loss,
                      expect_tensor, first_match, forbid, generator, load_reference_weights, passed, random_images,
                      run_student, scramble_weights, single_threaded)

ddpm_answers = answers.load("ddpm")

IMAGE = (1, 28, 28)


# ------------------------------------------------------------------------------------------ the TODOs


FC_HINT = "FCBlock = Linear(F_in, F_out), GELU, Linear(F_out, F_out)"
UNET_NAMES = ("name the layers as in the docstring: conv_in, down1, down2, flatten, unflatten, up1, up2, conv_out, "
              "head, t1 = FCBlock(1, 2D), t2 = FCBlock(1, D)")


@single_threaded
def check_fc_block(cls, in_features: int = 1, out_features: int = 6, batch_size: int = 5, seed: int = 0) -> None:
    """``cls(in_features, out_features)`` maps (N, F_in) to (N, F_out) exactly like the reference FCBlock."""
    torch.manual_seed(seed)
    reference = FCBlock(in_features, out_features)
    x = torch.randn(batch_size, in_features, generator=generator(seed))
    with torch.no_grad():
        expected = reference(x)
    with forbid(FCBlock):
        block = run_student("FCBlock", cls, in_features, out_features)
        load_reference_weights(block, reference, "FCBlock", FC_HINT)
        with torch.no_grad():
            got = run_student("FCBlock.forward", block, x)
    expect_tensor("FCBlock output", got, (batch_size, out_features))
    relu = first_match(got, {"use GELU between the two Linear layers, not ReLU":
                             lambda: reference[2](F.relu(reference[0](x)))})
    expect_close("FCBlock output", got, expected, relu or f"{FC_HINT}, applied in this order")
    passed(f"FCBlock({in_features}, {out_features}) matches the reference")


@single_threaded
def check_time_conditional_unet(cls, num_hiddens: int = 8, batch_size: int = 3, seed: int = 0) -> None:
    """``cls(in_channels=1, num_hiddens=D)`` with ``forward(x, t)`` matches the reference with the same weights."""
    torch.manual_seed(seed)
    reference = scramble_weights(TimeConditionalUNet(1, num_hiddens), seed).eval()
    g = generator(seed)
    x = torch.randn((batch_size, *IMAGE), generator=g)
    t = torch.rand(batch_size, generator=g)
    with torch.no_grad():
        expected = reference(x, t)
    with forbid(TimeConditionalUNet, ClassConditionalUNet, UNetBody, FCBlock):
        model = run_student("TimeConditionalUNet", cls, in_channels=1, num_hiddens=num_hiddens)
        load_reference_weights(model, reference, "TimeConditionalUNet", UNET_NAMES)
        model.eval()
        with torch.no_grad():
            got = run_student("TimeConditionalUNet.forward", model, x, t)
            other_t = run_student("TimeConditionalUNet.forward", model, x, 1 - t)
    expect_tensor("predicted noise", got, (batch_size, *IMAGE))
    if torch.allclose(got, other_t):
        raise CheckFailed("your output does not change with t: add t1(t) to the Unflatten output and t2(t) to the "
                          "output of the first UpBlock (t reshaped to (N, 1) for the FCBlocks)")
    hint = first_match(got, unet_mutants(reference, x, t))
    expect_close("predicted noise", got, expected, hint or "compare your forward with the diagram: "
                 "unflatten + t1, then UpBlock(cat[h, 7x7 skip]) + t2, then UpBlock(cat[h, 14x14 skip])")
    passed(f"TimeConditionalUNet(num_hiddens={num_hiddens}) gives the reference output for {batch_size} images")


def _loss_mutants(x0: torch.Tensor, schedule: DDPMSchedule, seed: int) -> dict[str, Callable[[], torch.Tensor]]:
    """The DDPM loss with one known mistake each; every mutant draws from a fresh generator(seed)."""
    model = ToyModel()
    n, T = x0.shape[0], schedule.num_steps

    def loss(draw_t_first=True, t_low=0, time=lambda t: t.float() / T, x_t=None, target="eps", reduce="mean"):
        def compute():
            g = generator(seed)
            if draw_t_first:
                t = torch.randint(t_low, T + t_low, (n,), generator=g)
                eps = torch.randn(x0.shape, generator=g)
            else:
                eps = torch.randn(x0.shape, generator=g)
                t = torch.randint(t_low, T + t_low, (n,), generator=g)
            ab = schedule.alpha_bars[t.clamp(max=T - 1)].view(-1, 1, 1, 1)
            noisy = x_t(ab, eps) if x_t else ab.sqrt() * x0 + (1 - ab).sqrt() * eps
            return F.mse_loss(model(noisy, time(t)), eps if target == "eps" else x0, reduction=reduce)
        return compute

    return {
        "draw t first (torch.randint(0, T, (N,), generator=generator)), then eps with the same generator":
            loss(draw_t_first=False),
        "pass the time to the model as t / T (floats in [0, 1)), not the integer step": loss(time=lambda t: t.float()),
        "timesteps run over 0..T-1 in this course: torch.randint(0, T, ...)": loss(t_low=1),
        "x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) eps: did you forget the square roots?":
            loss(x_t=lambda ab, eps: ab * x0 + (1 - ab) * eps),
        "the network predicts the noise eps, not the clean image: the target is eps": loss(target="x0"),
        "use the mean squared error over all pixels (F.mse_loss), not the sum": loss(reduce="sum"),
    }


@single_threaded
def check_ddpm_loss(fn, batch_size: int = 8, num_steps: int = 50, seed: int = 0) -> None:
    """``fn(model, x0, schedule, generator)`` equals the reference DDPM loss on the same generator."""
    schedule = DDPMSchedule(num_steps)
    x0 = random_images(batch_size, seed + 1)
    expected = ddpm_answers.ddpm_loss(ToyModel(), x0, schedule, generator=generator(seed))
    spy = Spy(ToyModel())
    with forbid(ddpm_answers.ddpm_loss, answers.load("cfg").class_conditional_loss):
        got = run_student("ddpm_loss", fn, spy, x0, schedule, generator(seed))
    if not spy.calls:
        raise CheckFailed("your ddpm_loss never calls the model: the loss compares model(x_t, t / T) with eps")
    expect_scalar_loss(got)
    hint = first_match(got, _loss_mutants(x0, schedule, seed))
    expect_close("loss", got, expected, hint or "draw t, then eps, with `generator`; x_t by the closed form; "
                 "loss = mean of (model(x_t, t / T) - eps)^2")
    passed(f"ddpm_loss matches the reference (batch {batch_size}, T = {num_steps})")


# In float32, 1 - alpha_bar_t loses digits at small t, so the posterior form and Ho et al.'s form of the same
# step differ by up to about 1e-4 relative (T = 1000, t = 1): both must pass.
STEP_ATOL, STEP_RTOL = 1e-4, 1e-3


def _step_coefficients(step, t: int, schedule: DDPMSchedule) -> tuple[float, float, float]:
    """The coefficients (a, b, c) of x_{t-1} = a x_t + b eps + c z, read off ``step`` with unit inputs."""
    one, zero = torch.ones(1, *IMAGE), torch.zeros(1, *IMAGE)
    with torch.no_grad():
        return tuple(float(step(*inputs, t, schedule, z)[0, 0, 0, 0])
                     for *inputs, z in ((one, zero, zero), (zero, one, zero), (zero, zero, one)))


def _step_hint(student, t: int, schedule: DDPMSchedule) -> str:
    """Which coefficient of the student's reverse step is off, and what it should be."""
    got = _step_coefficients(student, t, schedule)
    want = _step_coefficients(ddpm_answers.ddpm_step, t, schedule)
    beta = float(schedule.betas[t])
    if abs(got[2] - want[2]) > 1e-6:
        if t == 0:
            return "did you add noise at the last step t = 0? x_0 is the mean, with no z"
        if abs(got[2] - beta) < 1e-7:
            return "sigma_t = sqrt(beta_t): the noise term is sqrt(beta_t) z, not beta_t z"
        return f"the coefficient of z should be sigma_t = sqrt(beta_t) = {want[2]:.4g}, yours is {got[2]:.4g}"
    if abs(got[0] - want[0]) > STEP_RTOL * abs(want[0]):
        hint = ("check the coefficient of x_t: sqrt(alpha_t) (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t), plus "
                "sqrt(alpha_bar_{t-1}) beta_t / (1 - alpha_bar_t) times 1 / sqrt(alpha_bar_t) through x0_hat")
        return hint + (" (alpha_bar_{t-1} = 1 at t = 0: use schedule.alpha_bars_prev())" if t == 0 else "")
    return ("check the coefficient of eps: x0_hat = (x_t - sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_bar_t), weighted by "
            "sqrt(alpha_bar_{t-1}) beta_t / (1 - alpha_bar_t)")


@single_threaded
def check_ddpm_step(fn, batch_size: int = 2, num_steps: int = 300, seed: int = 0) -> None:
    """``fn(x_t, eps, t, schedule, z)`` gives the reference x_{t-1} at t = T-1, T/2, 1 and 0, and with ``z=None``."""
    schedule = DDPMSchedule(num_steps)
    g = generator(seed)
    cases = []
    for t in sorted({num_steps - 1, num_steps // 2, 1 % num_steps, 0}, reverse=True):
        x_t, eps, z = (torch.randn((batch_size, *IMAGE), generator=g) for _ in range(3))
        cases += [(x_t, eps, t, noise, ddpm_answers.ddpm_step(x_t, eps, t, schedule, noise)) for noise in (z, None)]
    with forbid(ddpm_answers.ddpm_step):
        results = [run_student("ddpm_step", fn, x_t, eps, t, schedule, noise) for x_t, eps, t, noise, _ in cases]
    for (x_t, eps, t, noise, expected), got in zip(cases, results):
        expect_tensor("x_{t-1}", got, x_t.shape)
        if not torch.allclose(got, expected, atol=STEP_ATOL, rtol=STEP_RTOL):
            hint = ("with z=None return the mean only (no noise term)" if noise is None and t > 0
                    else _step_hint(fn, t, schedule))
            expect_close("x_{t-1}", got, expected, f"(t = {t}{', z=None' if noise is None else ''}) {hint}",
                         atol=STEP_ATOL, rtol=STEP_RTOL)
    passed(f"ddpm_step matches Algorithm 2 at t = {num_steps - 1}, {num_steps // 2}, 1 and 0, with and without z")


@single_threaded
def check_ddpm_sample(fn, num_samples: int = 2, num_steps: int = 10, seed: int = 0) -> None:
    """``fn(model, schedule, num_samples, generator, stochastic)`` returns ``(samples, trajectory)`` equal to the
    reference Algorithm 2 on the same generator, with and without the z term."""
    schedule = DDPMSchedule(num_steps)
    for stochastic in (True, False):
        expected, expected_path = ddpm_answers.ddpm_sample(tiny_unet(seed), schedule, num_samples, generator(seed),
                                                        stochastic, return_trajectory=True)
        spy = Spy(tiny_unet(seed))
        with forbid(ddpm_answers.ddpm_sample, ddpm_answers.reverse_chain, sampling.ddim_sample):
            result = run_student("ddpm_sample", fn, spy, schedule, num_samples, generator(seed), stochastic=stochastic)
        if not (isinstance(result, tuple) and len(result) == 2):
            raise CheckFailed("ddpm_sample should return a pair (samples, trajectory)")
        samples, path = result
        expect_tensor("samples", samples, expected.shape)
        expect_tensor("trajectory", path, expected_path.shape)
        expect_sampling_calls(spy, [t / num_steps for t in reversed(range(num_steps))], "ddpm_sample")
        expect_close("trajectory[0] (x_T)", path[0], expected_path[0],
                     "draw x_T = torch.randn((N, 1, 28, 28), generator=generator) before anything else")
        expect_close("samples", samples, path[-1], "return the last frame of the trajectory as the samples")
        for k in range(1, num_steps + 1):
            t = num_steps - k
            hint = (f"the frames first differ at x_{t}: " +
                    ("did you add noise at the last step t = 0?" if t == 0 and stochastic else
                     "with stochastic=False pass z=None to ddpm_step" if not stochastic else
                     "draw one z per step t > 0 with torch.randn(..., generator=generator), and check that "
                     "ddpm_step passes its check"))
            expect_close(f"trajectory[{k}]", path[k], expected_path[k], hint, atol=1e-4)
    passed(f"ddpm_sample reproduces Algorithm 2 ({num_steps} steps, with and without z)")
