"""Checks for stage 3 (``03_ddpm``): the FCBlock, the time-conditioned UNet, the DDPM loss (Algorithm 1),
one reverse step, the sampling loop (Algorithm 2) and deterministic DDIM.

Each check (three parts, see :mod:`course_lib.checks.protocol`) builds seeded inputs, runs the student's code on
them, compares with the stage's answers on identical inputs (the same weights, the same generator), and raises
:class:`~course_lib.checks.CheckFailed` with a hint that names the likely mistake. The visible check cells call
them with their defaults; the hidden tests call them again with other seeds and sizes.

The probes need no answer: the student's modules get the reference's weights as tensors, and the student's loss
and sampler run on given stand-ins (:class:`~course_lib.checks.harness.ToyModel`,
:class:`~course_lib.checks.harness.TinyNoisePredictor`).

The probe and the judge of each check are here; its reference side, which builds the inputs and expected values
with the answers, is in ``reference.py`` beside this file (read through ``REFERENCE``), which only the grader has.
"""

from __future__ import annotations

import torch

from ...checks.harness import (IMAGE, CheckFailed, Spy, TinyNoisePredictor, ToyModel, close, compare,
                               condition_matters, expect_close, expect_sampling_calls, expect_time_per_image,
                               generator, load_weights, recorded, recorded_loss, recorded_tensor, run_student)
from ...checks.devices import device_run, module_device_run
from ...checks.protocol import check
from ..noising.api import DDPMSchedule
from ..stage import ReferenceCase
from . import STAGE
from .api import ddim_timesteps


REFERENCE = ReferenceCase(STAGE)


def _schedule(inputs: dict) -> DDPMSchedule:
    return DDPMSchedule.from_tables(inputs["betas"].clone(), inputs["alphas"].clone(), inputs["alpha_bars"].clone())


FC_HINT = "FCBlock = Linear(F_in, F_out), GELU, Linear(F_out, F_out)"


UNET_NAMES = ("name the layers as in the docstring: conv_in, down1, down2, flatten, unflatten, up1, up2, conv_out, "
              "head, t1 = FCBlock(1, 2D), t2 = FCBlock(1, D)")


def _fc_block_probe(cls, *, inputs: dict) -> dict:
    block = run_student("FCBlock", cls, inputs["in_features"], inputs["out_features"])
    load_weights(block, inputs["weights"], inputs["num_parameters"], "FCBlock", FC_HINT)
    with torch.no_grad():
        return {"output": recorded(run_student("FCBlock.forward", block, inputs["x"].clone()))}


def _fc_block_judge(case: dict, inputs: dict, outputs: dict, expected: dict) -> str:
    got = recorded_tensor("FCBlock output", outputs["output"], (case["batch_size"], case["out_features"]))
    compare("FCBlock output", got, expected["output"], expected["mistakes"], f"{FC_HINT}, applied in this order")
    return f"FCBlock({case['in_features']}, {case['out_features']}) matches the reference"


def _fc_block_devices(cls, *, inputs: dict) -> str | None:
    return module_device_run("FCBlock", lambda: cls(inputs["in_features"], inputs["out_features"]),
                             inputs["x"].clone(), holder="x", where="x.device")


@check(reference=REFERENCE.fc_block_case, probe=_fc_block_probe, judge=_fc_block_judge, devices=_fc_block_devices)
def check_fc_block(cls, in_features: int = 1, out_features: int = 6, batch_size: int = 5, seed: int = 0):
    """Check ``cls(in_features, out_features)``: with the weights of a seeded reference FCBlock (matched by name,
    else in registration order) it maps ``batch_size`` random rows (N, F_in) to the reference's (N, F_out)."""


def _unet_probe(cls, *, inputs: dict) -> dict:
    model = run_student("TimeConditionalUNet", cls, in_channels=1, num_hiddens=inputs["num_hiddens"])
    load_weights(model, inputs["weights"], inputs["num_parameters"], "TimeConditionalUNet", UNET_NAMES)
    run_student("TimeConditionalUNet.eval", model.eval)
    with torch.no_grad():
        got = run_student("TimeConditionalUNet.forward", model, inputs["x"].clone(), inputs["t"].clone())
        other_t = run_student("TimeConditionalUNet.forward", model, inputs["x"].clone(), 1 - inputs["t"])
    return {"noise": recorded(got), "noise_other_t": recorded(other_t)}


def _unet_judge(case: dict, inputs: dict, outputs: dict, expected: dict) -> str:
    got = condition_matters(outputs, (case["batch_size"], *IMAGE), "noise_other_t",
                            "your output does not change with t: add t1(t) to the Unflatten output and t2(t) to the "
                            "output of the first UpBlock (t reshaped to (N, 1) for the FCBlocks)")
    compare("predicted noise", got, expected["noise"], expected["mistakes"], "compare your forward with the diagram: "
            "unflatten + t1, then UpBlock(cat[h, 7x7 skip]) + t2, then UpBlock(cat[h, 14x14 skip])")
    return (f"TimeConditionalUNet(num_hiddens={case['num_hiddens']}) gives the reference output for "
            f"{case['batch_size']} images")


def _unet_devices(cls, *, inputs: dict) -> str | None:
    return module_device_run("TimeConditionalUNet", lambda: cls(in_channels=1, num_hiddens=inputs["num_hiddens"]),
                             inputs["x"].clone(), inputs["t"].clone(), holder="x", where="x.device")


@check(reference=REFERENCE.unet_case, probe=_unet_probe, judge=_unet_judge, devices=_unet_devices)
def check_time_conditional_unet(cls, num_hiddens: int = 8, batch_size: int = 3, seed: int = 0):
    """Check ``cls(in_channels=1, num_hiddens=D)`` with ``forward(x, t)``: with the weights of a seeded reference
    (matched by name, else in registration order) it gives the reference's output in eval mode for ``batch_size``
    random images and times, and an output that changes with ``t``."""


def _loss_probe(ddpm_loss, *, inputs: dict) -> dict:
    spy = Spy(ToyModel())
    got = run_student("ddpm_loss", ddpm_loss, spy, inputs["x0"].clone(), _schedule(inputs),
                      generator(inputs["generator_seed"]))
    requires_grad = isinstance(got, torch.Tensor) and got.requires_grad
    return {"loss": recorded(got), "requires_grad": requires_grad, "model_calls": len(spy.calls),
            "times": spy.calls[0]["t"] if spy.calls else None}


def _loss_judge(case: dict, inputs: dict, outputs: dict, expected: dict) -> str:
    if outputs["model_calls"] == 0:
        raise CheckFailed("your ddpm_loss never calls the model: the loss compares model(x_t, t / T) with eps")
    expect_time_per_image(outputs["times"], case["batch_size"], "t = torch.randint(0, T, (N,), generator=generator)")
    loss = recorded_loss(outputs)
    compare("loss", loss.detach(), expected["loss"], expected["mistakes"], "draw t, then eps, with `generator`; "
            "x_t by the closed form; loss = mean of (model(x_t, t / T) - eps)^2")
    return f"ddpm_loss matches the reference (batch {case['batch_size']}, T = {case['num_steps']})"


def _loss_devices(ddpm_loss, *, inputs: dict) -> str | None:
    return device_run("ddpm_loss", ddpm_loss, ToyModel(), inputs["x0"].clone(), _schedule(inputs),
                      generator(inputs["generator_seed"]), where="x0.device")


@check(reference=REFERENCE.loss_case, probe=_loss_probe, judge=_loss_judge, devices=_loss_devices)
def check_ddpm_loss(fn, batch_size: int = 8, num_steps: int = 50, seed: int = 0):
    """Check ``fn(model, x0, schedule, generator)``: on a toy model, ``batch_size`` images in [-1, 1] and the
    linear schedule of ``num_steps`` steps, a scalar loss with a gradient, equal to the reference DDPM loss drawn
    from a generator seeded with ``seed``."""


STEP_ATOL, STEP_RTOL = 1e-4, 1e-3


def step_coefficients(step, t: int, schedule: DDPMSchedule) -> list[float]:
    """The coefficients [a, b, c] of x_{t-1} = a x_t + b eps + c z, read off ``step`` with unit inputs."""
    one, zero = torch.ones(1, *IMAGE), torch.zeros(1, *IMAGE)
    coefficients = []
    with torch.no_grad():
        for *inputs, z in ((one, zero, zero), (zero, one, zero), (zero, zero, one)):
            result = run_student("ddpm_step", step, *(v.clone() for v in inputs), t, schedule, z.clone())
            if not isinstance(result, torch.Tensor) or tuple(result.shape) != (1, *IMAGE):
                raise CheckFailed("ddpm_step should return a tensor shaped like x_t")
            coefficients.append(float(result[0, 0, 0, 0]))
    return coefficients


def _step_hint(got: list[float] | None, want: list[float], t: int, beta: float) -> str:
    """Which coefficient of the student's reverse step is off, and what it should be."""
    if got is None:
        return "compare each term of your step with Algorithm 2"
    got, want = [float(v) for v in got], [float(v) for v in want]
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


def step_times(num_steps: int) -> list[int]:
    """The steps checked: T-1, T/2, 1 and 0 (without repeats), in the order of the reverse process."""
    return sorted({num_steps - 1, num_steps // 2, 1 % num_steps, 0}, reverse=True)


def _step_probe(ddpm_step, *, inputs: dict) -> dict:
    schedule = _schedule(inputs)
    results = []
    for case in inputs["cases"]:
        t, x_t, eps = int(case["t"]), case["x_t"].clone(), case["eps"].clone()  # both calls get the same tensors
        result = {name: recorded(run_student("ddpm_step", ddpm_step, x_t, eps, t, schedule, noise))
                  for name, noise in (("with_z", case["z"].clone()), ("without_z", None))}
        try:  # read only for a hint when the step is wrong
            result["coefficients"] = step_coefficients(ddpm_step, t, schedule)
        except CheckFailed:
            result["coefficients"] = None
        results.append(result)
    return {"cases": results}


def _step_judge(case: dict, inputs: dict, outputs: dict, expected: dict) -> str:
    num_steps, shape = case["num_steps"], (case["batch_size"], *IMAGE)
    times = step_times(num_steps)
    if len(outputs["cases"]) != len(times):
        raise CheckFailed("ddpm_step: the recorded result is incomplete")
    for t, got, want in zip(times, outputs["cases"], expected["cases"]):
        for name, noise in (("with_z", True), ("without_z", False)):
            result = recorded_tensor("x_{t-1}", got[name], shape)
            if close(result, want[name], STEP_ATOL, STEP_RTOL):
                continue
            hint = ("with z=None return the mean only (no noise term)" if not noise and t > 0
                    else _step_hint(got["coefficients"], want["coefficients"], t, float(inputs["betas"][t])))
            expect_close("x_{t-1}", result, want[name], f"(t = {t}{'' if noise else ', z=None'}) {hint}",
                         atol=STEP_ATOL, rtol=STEP_RTOL)
    return f"ddpm_step matches Algorithm 2 at t = {num_steps - 1}, {num_steps // 2}, 1 and 0, with and without z"


def _step_devices(ddpm_step, *, inputs: dict) -> str | None:
    case = inputs["cases"][0]
    return device_run("ddpm_step", ddpm_step, case["x_t"].clone(), case["eps"].clone(), int(case["t"]),
                      _schedule(inputs), case["z"].clone(), holder="x_t", where="x_t.device")


@check(reference=REFERENCE.step_case, probe=_step_probe, judge=_step_judge, devices=_step_devices)
def check_ddpm_step(fn, batch_size: int = 2, num_steps: int = 300, seed: int = 0):
    """Check ``fn(x_t, eps, t, schedule, z)``: the reference x_{t-1} at t = T-1, T/2, 1 and 0 on the linear
    schedule of ``num_steps`` steps, for ``batch_size`` random x_t, eps and z, and with ``z=None``. A wrong step is
    told which coefficient (of x_t, eps or z) is off, read from its outputs on unit inputs."""


SAMPLE_MODES = (True, False)  # stochastic, then deterministic


def _sample_probe(ddpm_sample, *, inputs: dict) -> dict:
    schedule = _schedule(inputs)
    runs = []
    for stochastic in SAMPLE_MODES:
        spy = Spy(TinyNoisePredictor(inputs["model_seed"]))
        result = run_student("ddpm_sample", ddpm_sample, spy, schedule, inputs["num_samples"],
                             generator(inputs["generator_seed"]), stochastic=stochastic)
        if not (isinstance(result, tuple) and len(result) == 2):
            raise CheckFailed("ddpm_sample should return a pair (samples, trajectory)")
        calls = [{"x": call["x"].clone(), "t": call["t"].clone(), "training": bool(call["training"]),
                  "grad": bool(call["grad"])} for call in spy.calls]
        runs.append({"samples": recorded(result[0]), "trajectory": recorded(result[1]), "calls": calls})
    return {"runs": runs}


def _sample_judge(case: dict, inputs: dict, outputs: dict, expected: dict) -> str:
    num_steps = case["num_steps"]
    if len(outputs["runs"]) != len(SAMPLE_MODES):
        raise CheckFailed("ddpm_sample: the recorded result is incomplete")
    for stochastic, run, want in zip(SAMPLE_MODES, outputs["runs"], expected["runs"]):
        samples = recorded_tensor("samples", run["samples"], want["samples"].shape)
        path = recorded_tensor("trajectory", run["trajectory"], want["trajectory"].shape)
        expect_sampling_calls(run["calls"], [t / num_steps for t in reversed(range(num_steps))], "ddpm_sample")
        expected_path = want["trajectory"]
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
    return f"ddpm_sample reproduces Algorithm 2 ({num_steps} steps, with and without z)"


def _sample_devices(ddpm_sample, *, inputs: dict) -> str | None:
    return device_run("ddpm_sample", ddpm_sample, TinyNoisePredictor(inputs["model_seed"]), _schedule(inputs),
                      inputs["num_samples"], generator(inputs["generator_seed"]), stochastic=True)


@check(reference=REFERENCE.sample_case, probe=_sample_probe, judge=_sample_judge, devices=_sample_devices)
def check_ddpm_sample(fn, num_samples: int = 2, num_steps: int = 10, seed: int = 0):
    """Check ``fn(model, schedule, num_samples, generator, stochastic)`` returns ``(samples, trajectory)`` equal to
    the reference Algorithm 2 run on the same small seeded noise predictor (``TinyNoisePredictor(seed)``) and the
    same generator, with and without the z term; and that it calls the model once per step, in eval mode, without
    autograd, at t / T."""


DDIM_HINT = ("for each timestep t of ddim_timesteps(T, num_steps), with s the next one (alpha_bar = 1 after the "
             "last): x0_hat = (x - sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_bar_t), then "
             "x = sqrt(alpha_bar_s) x0_hat + sqrt(1 - alpha_bar_s) eps, with no fresh noise")


def _ddim_probe(ddim_sample, *, inputs: dict) -> dict:
    spy = Spy(TinyNoisePredictor(inputs["model_seed"]))
    result = run_student("ddim_sample", ddim_sample, spy, _schedule(inputs), inputs["num_samples"],
                         inputs["num_sampling_steps"], generator(inputs["generator_seed"]))
    if not (isinstance(result, tuple) and len(result) == 2):
        raise CheckFailed("ddim_sample should return a pair (samples, trajectory)")
    calls = [{"x": call["x"].clone(), "t": call["t"].clone(), "training": bool(call["training"]),
              "grad": bool(call["grad"])} for call in spy.calls]
    return {"samples": recorded(result[0]), "trajectory": recorded(result[1]), "calls": calls}


def _ddim_judge(case: dict, inputs: dict, outputs: dict, expected: dict) -> str:
    num_steps, steps = case["num_steps"], case["num_sampling_steps"]
    timesteps = ddim_timesteps(num_steps, steps).tolist()
    expect_sampling_calls(outputs["calls"], [t / num_steps for t in timesteps], "ddim_sample",
                          "visit the timesteps of ddim_timesteps(T, num_steps), from T-1 down to 0, and pass t / T")
    samples = recorded_tensor("samples", outputs["samples"], expected["trajectory"].shape[1:])
    path = recorded_tensor("trajectory", outputs["trajectory"], expected["trajectory"].shape)
    expect_close("trajectory[0] (x_T)", path[0], expected["trajectory"][0],
                 "draw x_T = torch.randn((N, 1, 28, 28), generator=generator) before anything else")
    expect_close("samples", samples, path[-1], "return the last frame of the trajectory as the samples")
    first = next((k for k in range(1, steps + 1) if not close(path[k], expected["trajectory"][k], 1e-4, 1e-3)), None)
    if first is not None:
        where = f"the frames first differ after step {first} (t = {timesteps[first - 1]}): "
        compare("trajectory", path, expected["trajectory"], expected["mistakes"], where + DDIM_HINT, 1e-4, 1e-3)
    return f"ddim_sample reproduces deterministic DDIM ({steps} of {num_steps} timesteps)"


def _ddim_devices(ddim_sample, *, inputs: dict) -> str | None:
    return device_run("ddim_sample", ddim_sample, TinyNoisePredictor(inputs["model_seed"]), _schedule(inputs),
                      inputs["num_samples"], inputs["num_sampling_steps"], generator(inputs["generator_seed"]))


@check(reference=REFERENCE.ddim_case, probe=_ddim_probe, judge=_ddim_judge, devices=_ddim_devices)
def check_ddim_sample(fn, num_samples: int = 2, num_steps: int = 50, num_sampling_steps: int = 6, seed: int = 0):
    """Check ``fn(model, schedule, num_samples, num_steps, generator)`` returns ``(samples, trajectory)`` equal to
    deterministic DDIM (eta = 0) over ``num_sampling_steps`` of the ``num_steps`` timesteps of the linear schedule,
    run on the same small seeded noise predictor and generator; and that it calls the model once per step, in eval
    mode, without autograd, at t / T."""
