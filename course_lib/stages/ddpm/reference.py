"""The reference side of the checks of stage 3 (``03_ddpm``): for each case, the inputs and what the answers give on
them, with the outputs of known mistakes for the hints.

It needs the answers and spells out mistakes, so it never leaves the grader: no student package and no grading
kernel has this file (see :mod:`course_lib.stages.stage`).
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ...checks.harness import (IMAGE, TinyNoisePredictor, ToyModel, generator, random_images, reference_weights,
                               scramble_weights)
from ..noising.api import DDPMSchedule
from . import STAGE
from .api import ddim_timesteps
from .checks import SAMPLE_MODES, step_coefficients, step_times


def _tables(schedule: DDPMSchedule) -> dict:
    """A schedule as the probes get it (they rebuild it with :meth:`DDPMSchedule.from_tables`)."""
    return {name: getattr(schedule, name).clone() for name in ("betas", "alphas", "alpha_bars")}


def fc_block_case(in_features: int, out_features: int, batch_size: int, seed: int) -> tuple[dict, dict]:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        reference = STAGE.answers.FCBlock(in_features, out_features)
    x = torch.randn(batch_size, in_features, generator=generator(seed))
    with torch.no_grad():
        output = reference(x)
        relu = reference[2](F.relu(reference[0](x)))
    inputs = {"in_features": in_features, "out_features": out_features, "x": x, **reference_weights(reference)}
    return inputs, {"output": output, "mistakes": [(relu, "use GELU between the two Linear layers, not ReLU")]}


def unet_case(num_hiddens: int, batch_size: int, seed: int) -> tuple[dict, dict]:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        reference = scramble_weights(STAGE.answers.TimeConditionalUNet(1, num_hiddens), seed).eval()
    g = generator(seed)
    x = torch.randn((batch_size, *IMAGE), generator=g)
    t = torch.rand(batch_size, generator=g)
    with torch.no_grad():
        noise = reference(x, t)
        mistakes = [(compute(), hint) for hint, compute in unet_mutants(reference, x, t).items()]
    inputs = {"num_hiddens": num_hiddens, "x": x, "t": t, **reference_weights(reference)}
    return inputs, {"noise": noise, "mistakes": mistakes}


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


def loss_case(batch_size: int, num_steps: int, seed: int) -> tuple[dict, dict]:
    schedule = DDPMSchedule(num_steps)
    x0 = random_images(batch_size, seed + 1)
    loss = STAGE.answers.ddpm_loss(ToyModel(), x0, schedule, generator=generator(seed)).detach()
    with torch.no_grad():
        mistakes = [(compute().detach(), hint) for hint, compute in _loss_mutants(x0, schedule, seed).items()]
    return {"x0": x0, "generator_seed": seed, **_tables(schedule)}, {"loss": loss, "mistakes": mistakes}


def step_case(batch_size: int, num_steps: int, seed: int) -> tuple[dict, dict]:
    ddpm_step = STAGE.answers.ddpm_step
    schedule = DDPMSchedule(num_steps)
    g = generator(seed)
    cases, expected = [], []
    for t in step_times(num_steps):
        x_t, eps, z = (torch.randn((batch_size, *IMAGE), generator=g) for _ in range(3))
        cases.append({"t": t, "x_t": x_t, "eps": eps, "z": z})
        expected.append({"with_z": ddpm_step(x_t, eps, t, schedule, z), "without_z": ddpm_step(x_t, eps, t, schedule),
                         "coefficients": step_coefficients(ddpm_step, t, schedule)})
    return {"cases": cases, **_tables(schedule)}, {"cases": expected}


def sample_case(num_samples: int, num_steps: int, seed: int) -> tuple[dict, dict]:
    ddpm_sample = STAGE.answers.ddpm_sample
    schedule = DDPMSchedule(num_steps)
    runs = []
    for stochastic in SAMPLE_MODES:
        samples, trajectory = ddpm_sample(TinyNoisePredictor(seed), schedule, num_samples, generator(seed),
                                          stochastic, return_trajectory=True)
        runs.append({"samples": samples.clone(), "trajectory": trajectory.clone()})
    inputs = {"num_samples": num_samples, "model_seed": seed, "generator_seed": seed, **_tables(schedule)}
    return inputs, {"runs": runs}


def _ddim_mutant(model: nn.Module, schedule: DDPMSchedule, num_samples: int, steps: int, seed: int,
                 last: str = "one", noise: str = "sqrt", clip: bool = False, ddpm: bool = False) -> torch.Tensor:
    """Deterministic DDIM's trajectory with one known mistake: ``last`` the alpha_bar after the last step (``"one"``
    right, ``"first"`` alpha_bars[0]), ``noise`` the weight of eps (``"sqrt"`` right, ``"plain"`` 1 - alpha_bar),
    ``clip`` x0_hat clipped to [-1, 1], ``ddpm`` the DDPM mean step between the kept timesteps instead."""
    timesteps = ddim_timesteps(schedule.num_steps, steps).tolist()
    after = schedule.alpha_bars[0] if last == "first" else torch.tensor(1.0)
    alpha_bars = torch.cat([schedule.alpha_bars[timesteps], after.view(1)])
    x = torch.randn((num_samples, *IMAGE), generator=generator(seed))
    frames = [x]
    model.eval()
    with torch.no_grad():
        for i, t in enumerate(timesteps):
            ab, ab_next = alpha_bars[i], alpha_bars[i + 1]
            eps = model(x, torch.full((num_samples,), t / schedule.num_steps))
            x0_hat = (x - (1 - ab).sqrt() * eps) / ab.sqrt()
            if clip:
                x0_hat = x0_hat.clamp(-1, 1)
            if ddpm:  # the posterior mean of q(x_next | x_t, x0_hat), as if the steps were adjacent
                beta = 1 - ab / ab_next
                x = (ab_next.sqrt() * beta / (1 - ab)) * x0_hat + ((1 - beta).sqrt() * (1 - ab_next) / (1 - ab)) * x
            else:
                x = ab_next.sqrt() * x0_hat + ((1 - ab_next).sqrt() if noise == "sqrt" else 1 - ab_next) * eps
            frames.append(x)
    return torch.stack(frames)


DDIM_MUTANTS = {
    "after the last timestep alpha_bar = 1 (no noise left): the last step returns x0_hat": {"last": "first"},
    "re-noise x0_hat with sqrt(1 - alpha_bar_s) eps: did you forget the square root?": {"noise": "plain"},
    "do not clip x0_hat: the course's DDIM uses it as it is": {"clip": True},
    "DDIM is not DDPM's posterior mean between the kept timesteps: re-noise x0_hat to the next level with the "
    "predicted eps, x = sqrt(alpha_bar_s) x0_hat + sqrt(1 - alpha_bar_s) eps": {"ddpm": True},
}


def ddim_case(num_samples: int, num_steps: int, num_sampling_steps: int, seed: int) -> tuple[dict, dict]:
    schedule = DDPMSchedule(num_steps)
    _, trajectory = STAGE.answers.ddim_sample(TinyNoisePredictor(seed), schedule, num_samples, num_sampling_steps,
                                              generator(seed), return_trajectory=True)
    mistakes = [(_ddim_mutant(TinyNoisePredictor(seed), schedule, num_samples, num_sampling_steps, seed, **mistake),
                 hint) for hint, mistake in DDIM_MUTANTS.items()]
    inputs = {"num_samples": num_samples, "num_sampling_steps": num_sampling_steps, "model_seed": seed,
              "generator_seed": seed, **_tables(schedule)}
    return inputs, {"trajectory": trajectory.clone(), "mistakes": mistakes}


def reference_unet_forward(model: nn.Module, x, t, c=None, *, skip_first: bool = False,
                           shift_before_unflatten: bool = False, shift_after_up2: bool = False,
                           shift_then_scale: bool = False, add_class: bool = False) -> torch.Tensor:
    """The reference time/class-conditional UNet's forward with one known mistake switched on (for hints).

    ``model`` is a course_lib :class:`TimeConditionalUNet` (``c`` None) or :class:`ClassConditionalUNet`.
    """
    body = model.body
    t = t[:, None].to(x.dtype)
    t1, t2 = model.t1(t)[:, :, None, None], model.t2(t)[:, :, None, None]
    c1 = c2 = None
    if c is not None:
        c1, c2 = model.c1(c)[:, :, None, None], model.c2(c)[:, :, None, None]

    def modulate(h, scale, shift):
        if scale is None:
            return h + shift
        if add_class:
            return h + scale + shift
        return scale * (h + shift) if shift_then_scale else scale * h + shift

    def cat(h, skip):
        return torch.cat([skip, h] if skip_first else [h, skip], dim=1)

    first = body.conv_in(x)
    skip14 = body.down1(first)
    skip7 = body.down2(skip14)
    flat = body.flatten(skip7)
    h = body.unflatten(flat + t1) if shift_before_unflatten else modulate(body.unflatten(flat), c1, t1)
    h = body.up1(cat(h, skip7))
    if not shift_after_up2:
        h = modulate(h, c2, t2)
    h = body.up2(cat(h, skip14))
    if shift_after_up2:
        h = modulate(h, c2, t2)
    return body.head(body.conv_out(cat(h, first)))


def unet_mutants(reference: nn.Module, x, t, c=None) -> dict[str, Callable[[], torch.Tensor]]:
    """Known wiring mistakes of the conditional UNets, each with its hint (reference side: it runs ``reference``)."""
    def run(**variant):
        return lambda: reference_unet_forward(reference, x, t, c, **variant)

    mutants = {
        "concatenate the decoder features first, then the skip connection: torch.cat([h, skip], dim=1)":
            run(skip_first=True),
        "add t1 to the OUTPUT of Unflatten (2D channels, 7x7), not to the 1x1 features before it":
            run(shift_before_unflatten=True),
        "add t2 to the output of the FIRST UpBlock (14x14), not after the second one": run(shift_after_up2=True),
    }
    if c is not None:
        mutants["scale first, then shift: unflatten = c1 * unflatten + t1 (not c1 * (unflatten + t1))"] = \
            run(shift_then_scale=True)
        mutants["the class embedding multiplies the features: c1 * unflatten + t1 (not unflatten + c1 + t1)"] = \
            run(add_class=True)
    return mutants
