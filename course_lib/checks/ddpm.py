"""Checks for stage 3 (DDPM): the FCBlock, the time-conditioned UNet, the DDPM loss (Algorithm 1),
one reverse step and the sampling loop (Algorithm 2).

Every ``check_*`` function runs the student's code with the course_lib reference forbidden (see
:func:`course_lib.checks.forbid`), compares it with the reference on identical seeded inputs, and
raises :class:`~course_lib.checks.CheckFailed` with a hint that names the likely mistake. The visible
check cells call them with their defaults; the hidden tests call them again with other seeds and sizes.

The helpers above the TODO checks (seeded inputs, :class:`Spy` that records a model's calls, weight
copying and scrambling, known-mistake "mutants" with :func:`first_match`) are shared with the checks of
stages 4 and 5 (:mod:`course_lib.checks.cfg`, :mod:`course_lib.checks.flow`). Checks run single-threaded
(:func:`single_threaded`): their models are tiny.
"""

from __future__ import annotations

import functools
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .. import objectives, sampling
from ..models import ClassConditionalUNet, FCBlock, TimeConditionalUNet, UNetBody
from ..noise import DDPMSchedule
from . import CheckFailed, expect_close, expect_tensor, forbid, passed, run_student

IMAGE = (1, 28, 28)


# ----------------------------------------------------------------------------------------------- helpers


def single_threaded(check):
    """Run ``check`` with one torch thread: its models are tiny, and on a busy CPU extra threads only wait."""
    @functools.wraps(check)
    def run(*args, **kwargs):
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return check(*args, **kwargs)
        finally:
            torch.set_num_threads(threads)
    return run


def generator(seed: int) -> torch.Generator:
    """A fresh CPU generator: the student's function and the reference each get their own, same seed."""
    return torch.Generator().manual_seed(seed)


def random_images(batch_size: int, seed: int) -> torch.Tensor:
    """Images (batch_size, 1, 28, 28) uniform in [-1, 1]: the value range of the diffusion stages."""
    return torch.rand((batch_size, *IMAGE), generator=generator(seed)) * 2 - 1


def first_match(got: torch.Tensor, mutants: dict[str, Callable[[], torch.Tensor]]) -> str | None:
    """The hint of the first mutant (a known mistake, computed by its callable) that reproduces ``got``."""
    for hint, compute in mutants.items():
        with torch.no_grad():
            value = compute()
        if value.shape == got.shape and torch.allclose(got.detach().float(), value.float(), atol=1e-5, rtol=1e-4):
            return hint
    return None


class Spy(nn.Module):
    """Wraps a model and records every call: inputs, whether it was in train mode, whether autograd was on."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.calls: list[dict] = []

    def forward(self, x, t, *rest):
        self.calls.append({"x": x.detach().clone(), "t": t.detach().clone(),
                           "c": rest[0].detach().clone() if rest else None,
                           "training": self.training, "grad": torch.is_grad_enabled()})
        return self.model(x, t, *rest)


def load_reference_weights(student: nn.Module, reference: nn.Module, name: str, names_hint: str) -> None:
    """Copy the reference's parameters and buffers into the student's module.

    Matched by name (the reference's ``body.`` prefix ignored), else in registration order when
    every shape agrees. Fails with the parameter counts and ``names_hint`` when neither works.
    """
    wanted = {key.removeprefix("body."): value for key, value in reference.state_dict().items()}
    own = student.state_dict()
    if set(own) == set(wanted) and all(own[k].shape == wanted[k].shape for k in own):
        student.load_state_dict(wanted)
        return
    if [v.shape for v in own.values()] == [v.shape for v in wanted.values()]:
        student.load_state_dict(dict(zip(own, wanted.values())))
        return
    count = sum(p.numel() for p in student.parameters())
    expected = sum(p.numel() for p in reference.parameters())
    if count != expected:
        raise CheckFailed(f"your {name} has {count} parameters, expected {expected}: {names_hint}")
    missing = sorted(set(wanted) - set(own))[:3]
    raise CheckFailed(f"your {name} has the right number of parameters but its layers do not match the reference "
                      f"(e.g. no {', '.join(missing)}): {names_hint}")


def scramble_weights(model: nn.Module, seed: int) -> nn.Module:
    """Give ``model`` random weights that keep activations of order 1 through every layer (in place; returns it).

    A freshly initialised UNet shrinks its signal layer by layer, so wiring mistakes barely change its
    output; with these weights (He-normal convolutions, random BatchNorm statistics) they change it clearly.
    """
    g = generator(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
                weight = module.weight
                fan_in = weight[0].numel() if not isinstance(module, nn.ConvTranspose2d) else weight[:, 0].numel()
                weight.copy_(torch.randn(weight.shape, generator=g) * (2 / fan_in) ** 0.5)
                module.bias.copy_(torch.randn(module.bias.shape, generator=g) * 0.1)
            elif isinstance(module, nn.BatchNorm2d):
                module.weight.copy_(0.5 + torch.rand(module.weight.shape, generator=g))
                module.bias.copy_(torch.randn(module.bias.shape, generator=g) * 0.1)
                module.running_mean.copy_(torch.randn(module.running_mean.shape, generator=g) * 0.1)
                module.running_var.copy_(0.5 + torch.rand(module.running_var.shape, generator=g))
    return model


def reference_unet_forward(model: nn.Module, x, t, c=None, *, skip_first: bool = False,
                           shift_before_unflatten: bool = False, shift_after_up2: bool = False,
                           shift_then_scale: bool = False, add_class: bool = False) -> torch.Tensor:
    """The reference time/class-conditional UNet's forward with one known mistake switched on (for hints).

    ``model`` is a course_lib :class:`TimeConditionalUNet` (``c`` None) or :class:`ClassConditionalUNet`.
    """
    body: UNetBody = model.body
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
    """Known wiring mistakes of the conditional UNets, each with its hint."""
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


class ToyModel(nn.Module):
    """A tiny deterministic stand-in for a noise predictor, ``0.5 x + t`` (with a weight so losses have gradients).

    Used by the loss checks: it makes a wrong time input or a wrong x_t change the loss visibly.
    """

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(0.5))

    def forward(self, x, t, c=None):
        out = self.scale * x + t.view(-1, 1, 1, 1).to(x.dtype)
        return out if c is None else out + c.sum(1).view(-1, 1, 1, 1) / 10


def expect_scalar_loss(got) -> None:
    """Fail unless ``got`` is a scalar tensor with a gradient (the loss the optimizer can use)."""
    if not isinstance(got, torch.Tensor):
        raise CheckFailed(f"your loss should be a torch.Tensor, got {type(got).__name__}: do not call .item()")
    if got.dim() != 0:
        raise CheckFailed(f"your loss has shape {tuple(got.shape)}, expected a scalar: take the mean over all pixels")
    if not got.requires_grad:
        raise CheckFailed("your loss has no gradient: compute it from the model's output, outside torch.no_grad()")


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
    expected = objectives.ddpm_loss(ToyModel(), x0, schedule, generator=generator(seed))
    spy = Spy(ToyModel())
    with forbid(objectives.ddpm_loss, objectives.class_conditional_loss):
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
    want = _step_coefficients(sampling.ddpm_step, t, schedule)
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
        cases += [(x_t, eps, t, noise, sampling.ddpm_step(x_t, eps, t, schedule, noise)) for noise in (z, None)]
    with forbid(sampling.ddpm_step):
        results = [run_student("ddpm_step", fn, x_t, eps, t, schedule, noise) for x_t, eps, t, noise, _ in cases]
    for (x_t, eps, t, noise, expected), got in zip(cases, results):
        expect_tensor("x_{t-1}", got, x_t.shape)
        if not torch.allclose(got, expected, atol=STEP_ATOL, rtol=STEP_RTOL):
            hint = ("with z=None return the mean only (no noise term)" if noise is None and t > 0
                    else _step_hint(fn, t, schedule))
            expect_close("x_{t-1}", got, expected, f"(t = {t}{', z=None' if noise is None else ''}) {hint}",
                         atol=STEP_ATOL, rtol=STEP_RTOL)
    passed(f"ddpm_step matches Algorithm 2 at t = {num_steps - 1}, {num_steps // 2}, 1 and 0, with and without z")


def tiny_unet(seed: int, num_hiddens: int = 4) -> nn.Module:
    """A small seeded reference TimeConditionalUNet (in train mode, as after training)."""
    torch.manual_seed(seed)
    return TimeConditionalUNet(1, num_hiddens)


def expect_sampling_calls(spy: Spy, times: list[float], what: str,
                          time_hint: str = "count t down from T-1 to 0 and pass t / T") -> None:
    """Fail unless the sampler called the model once per step, in eval mode, without autograd, at ``times``."""
    if len(spy.calls) != len(times):
        raise CheckFailed(f"your {what} called the model {len(spy.calls)} times, expected once per step "
                          f"({len(times)} steps)")
    if any(call["training"] for call in spy.calls):
        raise CheckFailed(f"your {what} runs the model in training mode: call model.eval() before sampling "
                          "(BatchNorm must use its running statistics)")
    if any(call["grad"] for call in spy.calls):
        raise CheckFailed(f"your {what} tracks gradients: wrap the loop in torch.no_grad() "
                          "(otherwise memory grows with every step)")
    for k, (call, want) in enumerate(zip(spy.calls, times)):
        got = call["t"]
        if got.dim() != 1 or not torch.allclose(got.float(), torch.full_like(got.float(), want), atol=1e-6):
            raise CheckFailed(f"at step {k + 1} your {what} gave the model time {got.flatten()[0].item():.4g}, "
                              f"expected {want:.4g} for every image (a float tensor of shape (N,)): {time_hint}")


@single_threaded
def check_ddpm_sample(fn, num_samples: int = 2, num_steps: int = 10, seed: int = 0) -> None:
    """``fn(model, schedule, num_samples, generator, stochastic)`` returns ``(samples, trajectory)`` equal to the
    reference Algorithm 2 on the same generator, with and without the z term."""
    schedule = DDPMSchedule(num_steps)
    for stochastic in (True, False):
        reference = tiny_unet(seed)
        expected, expected_path = sampling.ddpm_sample(reference, schedule, num_samples, generator=generator(seed),
                                                       return_trajectory=True, stochastic=stochastic)
        spy = Spy(tiny_unet(seed))
        with forbid(sampling.ddpm_sample, sampling.ddim_sample, sampling.cfg_sample):
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
