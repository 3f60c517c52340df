"""Checks for stage 4 (class conditioning and classifier-free guidance): label dropout, the class-conditional
UNet, the class-conditional loss, the guided noise estimate and the guided sampler.

Each check (three parts, see :mod:`course_lib.checks.protocol`) builds seeded inputs, runs the student's code on
them, compares with the stage's answers on identical inputs and names the likely mistake. The loss, the guided
estimate and the sampler run on given seeded stand-ins (:class:`~course_lib.checks.harness.ToyModel`,
:class:`~course_lib.checks.harness.TinyNoisePredictor`) wrapped in a :class:`~course_lib.checks.harness.Spy` that
records what the student's code feeds them, so that the student's side never needs a reference network.

The probe and the judge of each check are here; its reference side, which builds the inputs and expected values
with the answers, is in ``reference.py`` beside this file (read through ``REFERENCE``), which only the grader has.
"""

from __future__ import annotations

import functools
from typing import Callable

import torch

from ...checks.harness import (IMAGE, CheckFailed, Spy, TinyNoisePredictor, ToyModel, close, compare,
                               condition_matters, expect_close, expect_sampling_calls, expect_tensor,
                               expect_time_per_image, generator, load_weights, matching_hint, recorded, recorded_loss,
                               recorded_tensor, run_student)
from ...checks.devices import OnCPU, device_run, module_device_run
from ...checks.protocol import check
from ...data import one_hot
from ..noising.api import DDPMSchedule
from ..stage import ReferenceCase
from . import STAGE


REFERENCE = ReferenceCase(STAGE)

NUM_CLASSES = 10


DROP_HINT = ("draw u = torch.rand(N, generator=generator, device=c.device), one number per row, and set row i to "
             "zeros when u[i] < p_uncond")


def _attempt(run: Callable[[], dict]) -> dict:
    """``run()``, or ``{"failed": message}`` when the student's code failed: the judge reports it in its turn."""
    try:
        return run()
    except CheckFailed as failure:
        return {"failed": str(failure)}


def _succeeded(result) -> dict:
    """A result of :func:`_attempt`, after raising the failure it recorded."""
    if "failed" in result:
        raise CheckFailed(str(result["failed"]))
    return result


def expect_class_width(c) -> None:
    """Fail, saying what to change, when the one-hot classes ``c`` the model got (N, width) are not 10 wide.

    The checks' labels hold no 9, so ``F.one_hot(labels)`` without ``num_classes`` (as wide as the largest label
    + 1) shows here, where the given models would take it (a toy model sums the row) or crash on it.
    """
    if isinstance(c, torch.Tensor) and c.dim() == 2 and c.shape[1] != NUM_CLASSES:
        raise CheckFailed(f"the one-hot classes your model got are {c.shape[1]} wide, expected {NUM_CLASSES}: "
                          f"F.one_hot(labels, {NUM_CLASSES}).float() (without num_classes, F.one_hot is only as wide "
                          "as the largest label in the batch + 1)")


def check_labels(batch_size: int, seed: int) -> torch.Tensor:
    """The digits of a loss or sampler check: random in 0..8, no 9 (see :func:`expect_class_width`)."""
    return torch.randint(0, NUM_CLASSES - 1, (batch_size,), generator=generator(seed))


def _drop_labels_probe(drop_labels, *, inputs: dict) -> dict:
    c = inputs["c"]

    def drop(p: float) -> dict:
        given = c.clone()
        got = run_student("drop_labels", drop_labels, given, p, generator(inputs["seed"]))
        return {"dropped": recorded(got), "c_after": given}

    return {"runs": [_attempt(lambda p=p: drop(p)) for p in (inputs["p_uncond"], 0.0, 1.0)]}


def _dropped(run, c: torch.Tensor) -> torch.Tensor:
    """The student's result of one recorded run, after the checks every run must pass."""
    run = _succeeded(run)
    if not torch.equal(run["c_after"], c):
        raise CheckFailed("your drop_labels changed c in place: return a new tensor (e.g. c * keep[:, None])")
    return recorded_tensor("dropped c", run["dropped"], c.shape)


def _drop_labels_judge(case: dict, inputs: dict, outputs: dict, expected: dict) -> str:
    batch_size, p_uncond = case["batch_size"], case["p_uncond"]
    c = inputs["c"]
    runs = outputs["runs"]
    got = _dropped(runs[0], c)
    kept = (got == c).all(1)
    dropped = (got == 0).all(1)
    if not (kept | dropped).all():
        raise CheckFailed("drop whole rows: each row of the result is either the one-hot row unchanged or all zeros")
    reference = expected["dropped"]
    if not torch.equal(got, reference):
        hint = ("you kept the rows that should be dropped: a row becomes zeros with probability p_uncond, "
                "so keep it when u >= p_uncond" if torch.equal(got, expected["inverted"]) else DROP_HINT)
        raise CheckFailed(f"your drop_labels zeroed {int(dropped.sum())} of {batch_size} rows, the reference "
                          f"{int((reference == 0).all(1).sum())} (rows {_rows(dropped)} against "
                          f"{_rows((reference == 0).all(1))}): {hint}")
    for run, p, what in ((runs[1], 0.0, "none"), (runs[2], 1.0, "all")):
        if not torch.equal(_dropped(run, c), c * (1 - p)):
            raise CheckFailed(f"with p_uncond = {p:g} your drop_labels should zero {what} of the rows: {DROP_HINT}")
    return f"drop_labels matches the reference ({batch_size} rows, p_uncond = {p_uncond:g}, and p_uncond = 0 and 1)"


def _rows(mask: torch.Tensor) -> str:
    """The first few indices where ``mask`` is true, for a message."""
    rows = mask.nonzero().flatten().tolist()
    return "[" + ", ".join(map(str, rows[:6])) + (", ...]" if len(rows) > 6 else "]")


def _drop_labels_devices(drop_labels, *, inputs: dict) -> str | None:
    return device_run("drop_labels", drop_labels, inputs["c"].clone(), inputs["p_uncond"], generator(inputs["seed"]),
                      holder="c", where="c.device")


@check(reference=REFERENCE.drop_labels_case, probe=_drop_labels_probe, judge=_drop_labels_judge,
       devices=_drop_labels_devices)
def check_drop_labels(fn, batch_size: int = 64, p_uncond: float = 0.1, seed: int = 0):
    """Check that ``fn(c, p_uncond, generator)`` zeroes whole rows of one-hot ``c`` exactly as the reference does.

    ``c`` holds ``batch_size`` random one-hot rows; both functions draw from a generator seeded with ``seed``.
    The check also runs ``fn`` with p_uncond = 0 (no row dropped) and 1 (every row dropped), and fails if it
    changes ``c`` in place.
    """


CFG_NAMES = ("name the layers as in the docstring: conv_in, down1, down2, flatten, unflatten, up1, up2, conv_out, "
             "head, t1 = FCBlock(1, 2D), t2 = FCBlock(1, D), c1 = FCBlock(10, 2D), c2 = FCBlock(10, D)")


def _unet_probe(cls, *, inputs: dict) -> dict:
    model = run_student("ClassConditionalUNet", cls, in_channels=1, num_classes=NUM_CLASSES,
                        num_hiddens=inputs["num_hiddens"])
    load_weights(model, inputs["weights"], inputs["num_parameters"], "ClassConditionalUNet", CFG_NAMES)
    run_student("ClassConditionalUNet.eval", model.eval)
    with torch.no_grad():
        got = run_student("ClassConditionalUNet.forward", model, inputs["x"].clone(), inputs["t"].clone(),
                          inputs["c"].clone())
        with_other_c = run_student("ClassConditionalUNet.forward", model, inputs["x"].clone(), inputs["t"].clone(),
                                   inputs["other_c"].clone())
    return {"noise": recorded(got), "noise_other_c": recorded(with_other_c)}


def _unet_judge(case: dict, inputs: dict, outputs: dict, expected: dict) -> str:
    got = condition_matters(outputs, (case["batch_size"], *IMAGE), "noise_other_c",
                            "your output does not depend on c: multiply the Unflatten output by c1(c) and the first "
                            "UpBlock's output by c2(c)")
    hint = matching_hint(got, expected["mistakes"])
    expect_close("predicted noise", got, expected["noise"], hint or "unflatten = c1 * unflatten + t1 and "
                 "up1 = c2 * up1 + t2, with each FCBlock output reshaped to (N, F, 1, 1)")
    return (f"ClassConditionalUNet(num_hiddens={case['num_hiddens']}) gives the reference output for "
            f"{case['batch_size']} images")


def _unet_devices(cls, *, inputs: dict) -> str | None:
    build = functools.partial(cls, in_channels=1, num_classes=NUM_CLASSES, num_hiddens=inputs["num_hiddens"])
    return module_device_run("ClassConditionalUNet", build, inputs["x"].clone(), inputs["t"].clone(),
                             inputs["c"].clone(), holder="x", where="x.device")


@check(reference=REFERENCE.unet_case, probe=_unet_probe, judge=_unet_judge, devices=_unet_devices)
def check_class_conditional_unet(cls, num_hiddens: int = 8, batch_size: int = 4, seed: int = 0):
    """Check ``cls(in_channels=1, num_classes=10, num_hiddens=D)`` with ``forward(x, t, c)`` against the reference.

    The student's model gets the weights of a seeded reference (matched by name, else in registration order),
    and must give its output in eval mode for ``batch_size`` images, one of them with no class (c = zeros), and
    an output that changes with ``c``.
    """


GUIDANCE_BATCH_HINT = ("compute both predictions in ONE forward pass: model(torch.cat([x_t, x_t]), torch.cat([t, t]), "
                       "torch.cat([c, torch.zeros_like(c)])), then split the result with .chunk(2)")


def _guided_atol(guidance: float) -> float:
    """The absolute tolerance of a guided estimate: float32 rounding of the two estimates, amplified by gamma
    (a batched forward pass and two separate ones differ by about 1e-6)."""
    return 1e-5 * (1 + abs(guidance))


def _zero_rows(c) -> int | None:
    """How many rows of a recorded class batch are all zeros (None when the model got no c)."""
    if not isinstance(c, torch.Tensor) or c.dim() == 0:
        return None
    return int((c == 0).reshape(len(c), -1).all(1).sum())


def _guided_probe(guided_eps, *, inputs: dict) -> dict:
    def guided(scale: float) -> dict:
        spy = Spy(TinyNoisePredictor(inputs["model_seed"], num_classes=NUM_CLASSES)).eval()
        with torch.no_grad():
            got = run_student("guided_eps", guided_eps, spy, inputs["x_t"].clone(), inputs["t"].clone(),
                              inputs["c"].clone(), scale)
        return {"eps": recorded(got), "batch_sizes": [int(call["x"].shape[0]) for call in spy.calls],
                "zero_rows": [_zero_rows(call["c"]) for call in spy.calls]}

    return {"runs": [_attempt(lambda scale=scale: guided(scale)) for scale in inputs["scales"]]}


def _guided(run, batch_size: int, shape) -> torch.Tensor:
    """The student's estimate of one recorded run, after checking it came from one batched forward pass."""
    run = _succeeded(run)
    sizes = [int(size) for size in run["batch_sizes"]]
    if len(sizes) != 1 or sizes[0] != 2 * batch_size:
        raise CheckFailed(f"your guided_eps called the model {len(sizes)} times with batches of {sizes}: "
                          + GUIDANCE_BATCH_HINT)
    if run["zero_rows"][0] != batch_size:
        raise CheckFailed("half of the batched forward pass must be unconditional, with c = zeros: "
                          + GUIDANCE_BATCH_HINT)
    return recorded_tensor("guided eps", run["eps"], shape)


def _guided_judge(case: dict, inputs: dict, outputs: dict, expected: dict) -> str:
    batch_size, guidance = case["batch_size"], case["guidance"]
    shape = tuple(inputs["x_t"].shape)
    runs = outputs["runs"]
    got = _guided(runs[0], batch_size, shape)
    hint = matching_hint(got, expected["mistakes"])
    expect_close(f"guided eps at guidance {guidance:g}", got, expected["guided"][0],
                 hint or "eps = eps_uncond + gamma (eps_cond - eps_uncond)", atol=_guided_atol(guidance))
    for run, scale, wanted, meaning in zip(runs[1:], (0.0, 1.0), expected["guided"][1:],
                                           ("the unconditional prediction eps_u (c = zeros)",
                                            "the conditional prediction eps_c")):
        expect_close(f"guided eps at guidance {scale:g}", _guided(run, batch_size, shape), wanted,
                     f"with guidance {scale:g} the result must be {meaning}", atol=_guided_atol(scale))
    return f"guided_eps matches eps_u + gamma (eps_c - eps_u) at gamma = 0, 1 and {guidance:g}, in one forward pass"


def _guided_devices(guided_eps, *, inputs: dict) -> str | None:
    model = TinyNoisePredictor(inputs["model_seed"], num_classes=NUM_CLASSES).eval()
    return device_run("guided_eps", guided_eps, model, inputs["x_t"].clone(), inputs["t"].clone(), inputs["c"].clone(),
                      float(inputs["scales"][0]), where="x_t.device")


@check(reference=REFERENCE.guided_case, probe=_guided_probe, judge=_guided_judge, devices=_guided_devices)
def check_guided_eps(fn, batch_size: int = 3, guidance: float = 5.0, seed: int = 0):
    """Check that ``fn(model, x_t, t, c, guidance)`` returns eps_u + guidance (eps_c - eps_u) from one batched
    forward pass.

    ``model`` is a seeded class-conditional noise predictor in eval mode (given code, wrapped to record its
    calls); the check runs ``fn`` at ``guidance`` and at 0 (the unconditional estimate) and 1 (the conditional
    one), each time expecting one call on a batch of 2 * batch_size of which batch_size rows have c = zeros.
    """


LOSS_ORDER = ("drop", "t", "eps")  # the draws of the class-conditional loss, in the order the reference makes them


ORDER_HINT = ("draw in this order, all with `generator`: first the dropout (drop_labels), then t "
              "(torch.randint(0, T, (N,), ...)), then eps (torch.randn(x0.shape, ...))")


def _cfg_loss_probe(cfg_loss, *, inputs: dict) -> dict:
    schedule = DDPMSchedule.from_tables(inputs["betas"].clone(), inputs["alphas"].clone(), inputs["alpha_bars"].clone())
    spy = Spy(ToyModel())
    got = run_student("cfg_loss", cfg_loss, spy, inputs["x0"].clone(), inputs["labels"].clone(), schedule,
                      p_uncond=inputs["p_uncond"], generator=generator(inputs["generator_seed"]))
    requires_grad = isinstance(got, torch.Tensor) and got.requires_grad
    calls = [{"x": call["x"], "t": call["t"], "c": call["c"]} for call in spy.calls]
    return {"loss": recorded(got), "requires_grad": requires_grad, "calls": calls}


def _differs_in_order(got: torch.Tensor, key: str, expected: dict) -> bool:
    """Whether ``got`` is what the model would get with the draws made in another order."""
    return any(close(got, draw[key]) for draw in expected["orders"])


def _cfg_loss_judge(case: dict, inputs: dict, outputs: dict, expected: dict) -> str:
    calls = outputs["calls"]
    if not isinstance(calls, (list, tuple)) or not all(isinstance(call, dict) for call in calls):
        raise CheckFailed("cfg_loss: the record of its model calls is malformed")
    if not calls:
        raise CheckFailed("your cfg_loss never calls the model: the loss compares model(x_t, t / T, c) with eps")
    if len(calls) > 1:
        raise CheckFailed(f"your cfg_loss called the model {len(calls)} times: call it once, on the whole batch, "
                          "model(x_t, t / T, c)")
    call, n = calls[0], case["batch_size"]
    if call["c"] is None:
        raise CheckFailed("your model got no classes: pass them as its third input, model(x_t, t / T, c)")
    expect_class_width(call["c"])
    c = expect_tensor("the classes c your model got", call["c"], (n, NUM_CLASSES))
    if not close(c, expected["c"]):
        classes = one_hot(inputs["labels"], NUM_CLASSES)
        rows_ok = bool((((c == classes).all(1)) | ((c == 0).all(1))).all())
        if close(c, classes):
            hint = ("no row of c was dropped: pass the one-hot classes through your drop_labels(c, p_uncond, "
                    "generator) before the model")
        elif not rows_ok:
            hint = ("each row of c must be the one-hot class of its image, F.one_hot(labels, 10).float(), or zeros "
                    "where drop_labels dropped it")
        elif _differs_in_order(c, "c", expected):
            hint = ORDER_HINT
        elif close(c, expected["c_fixed_p"]):
            hint = "use the p_uncond argument, not a fixed probability"
        else:
            hint = ("the rows dropped differ from the reference: call drop_labels(c, p_uncond, generator) first, "
                    "before drawing t and eps (and check that drop_labels passes its check)")
        dropped, wanted = (c == 0).all(1), (expected["c"] == 0).all(1)
        raise CheckFailed(f"your model got {int(dropped.sum())} of {n} rows of c dropped, the reference "
                          f"{int(wanted.sum())} (rows {_rows(dropped)} against {_rows(wanted)}): {hint}")
    t = call["t"]
    if not isinstance(t, torch.Tensor) or tuple(t.shape) != (n,):
        raise CheckFailed(f"the time your model got should be a tensor of shape ({n},): t / T, one per image")
    expect_time_per_image(t, n, "torch.randint(0, T, (N,), generator=generator, device=x0.device), drawn after "
                                "the dropout")
    if not close(t, expected["t"]):
        if close(t, expected["t_steps"]):
            hint = "pass the time to the model as t / T (floats in [0, 1)), not the integer step"
        elif _differs_in_order(t, "t", expected):
            hint = ORDER_HINT
        else:
            hint = "t = torch.randint(0, T, (N,), generator=generator, device=x0.device), drawn after the dropout"
        expect_close("time input (t / T)", t.float(), expected["t"], hint)
    x = expect_tensor("x_t your model got", call["x"], tuple(inputs["x0"].shape))
    hint = (ORDER_HINT if _differs_in_order(x, "x", expected) else
            "x_t comes from q_sample on x0, t and eps, with eps = torch.randn(x0.shape, generator=generator, "
            "device=x0.device) drawn after t")
    expect_close("x_t your model got", x, expected["x"], hint)
    loss = recorded_loss(outputs)
    compare("loss", loss.detach(), expected["loss"], expected["loss_mistakes"],
            "loss = mean of (model(x_t, t / T, c) - eps)^2 over all pixels: F.mse_loss(model(...), eps)")
    return (f"cfg_loss matches the reference (batch {n}, T = {case['num_steps']}, p_uncond = {case['p_uncond']:g}, "
            f"{int((c == 0).all(1).sum())} rows dropped)")


def _cfg_loss_devices(cfg_loss, *, inputs: dict) -> str | None:
    schedule = DDPMSchedule.from_tables(inputs["betas"].clone(), inputs["alphas"].clone(), inputs["alpha_bars"].clone())
    return device_run("cfg_loss", cfg_loss, ToyModel(), inputs["x0"].clone(), inputs["labels"].clone(), schedule,
                      p_uncond=inputs["p_uncond"], generator=generator(inputs["generator_seed"]), where="x0.device")


@check(reference=REFERENCE.cfg_loss_case, probe=_cfg_loss_probe, judge=_cfg_loss_judge, devices=_cfg_loss_devices)
def check_cfg_loss(fn, batch_size: int = 16, num_steps: int = 50, p_uncond: float = 0.3, seed: int = 0):
    """Check ``fn(model, x0, labels, schedule, p_uncond=..., generator=...)``: on a toy model (wrapped to record
    what it gets), ``batch_size`` images in [-1, 1] with random digits (0 to 8) and the linear schedule of
    ``num_steps`` steps, the model must get the reference's classes (one-hot, 10 wide, rows dropped with
    ``p_uncond``), one time t / T per image and x_t, drawn from a generator seeded with ``seed`` in the order
    dropout, t, eps; and the loss must be the reference's scalar, with a gradient."""


def _cfg_sample_probe(cfg_sample, *, inputs: dict) -> dict:
    schedule = DDPMSchedule.from_tables(inputs["betas"].clone(), inputs["alphas"].clone(), inputs["alpha_bars"].clone())
    spy = Spy(TinyNoisePredictor(inputs["model_seed"], num_classes=NUM_CLASSES))  # in train mode, as after training
    try:
        got = run_student("cfg_sample", cfg_sample, spy, schedule, inputs["labels"].clone(),
                          float(inputs["guidance"]), generator=generator(inputs["generator_seed"]))
    except CheckFailed:
        if spy.calls:  # the model got classes it cannot take: say why, rather than how it crashed
            expect_class_width(spy.calls[-1]["c"])
        raise
    calls = [{"x": call["x"], "t": call["t"], "c": call["c"], "training": bool(call["training"]),
              "grad": bool(call["grad"])} for call in spy.calls]
    return {"samples": recorded(got), "calls": calls}


def _cfg_sample_judge(case: dict, inputs: dict, outputs: dict, expected: dict) -> str:
    num_steps, n = case["num_steps"], case["num_samples"]
    calls = outputs["calls"]
    if not isinstance(calls, (list, tuple)) or not all(isinstance(call, dict) for call in calls):
        raise CheckFailed("cfg_sample: the record of its model calls is malformed")
    if len(calls) == 2 * num_steps:
        raise CheckFailed(f"your cfg_sample called the model {len(calls)} times for {num_steps} steps, twice per "
                          "step: use your guided_eps, which makes both estimates in one batched pass (and check that "
                          "guided_eps passes its check)")
    if calls and len(calls) == num_steps and any(int(call["x"].shape[0]) != 2 * n for call in calls):
        raise CheckFailed(f"at every step the model should get one batch of 2N = {2 * n} images (the images with "
                          "their classes, then with zeros): compute each step's estimate with your guided_eps")
    expect_sampling_calls(calls, [t / num_steps for t in reversed(range(num_steps))], "cfg_sample")
    expect_class_width(calls[0]["c"])
    c = expect_tensor("the classes your model got", calls[0]["c"], (2 * n, NUM_CLASSES))
    if not torch.equal(c[:n].float(), one_hot(inputs["labels"], NUM_CLASSES)) or c[n:].any():
        raise CheckFailed("the model should get c = F.one_hot(labels, 10).float() for the first N images and zeros "
                          "for the second N: pass c = F.one_hot(labels, 10).float() to guided_eps")
    trajectory, mistakes = expected["trajectory"], expected["mistakes"]
    for k, call in enumerate(calls):
        frame = expect_tensor(f"x at step {k + 1}", call["x"], (2 * n, *IMAGE))[:n]
        if close(frame, trajectory[k], atol=1e-4):
            continue
        if k == 0:
            hint = ("draw x_T = torch.randn((N, 1, 28, 28), generator=generator, device=device) before anything "
                    "else")
        else:
            hint = matching_hint(frame, [(path[k], hint) for path, hint in mistakes]) or (
                f"the images first differ at x_{num_steps - k}, after {k} step{'s' if k > 1 else ''}: use your "
                "guided_eps with `guidance`, draw one z per step t > 0 after the estimate with torch.randn(x.shape, "
                "generator=generator, device=device), and pass it to ddpm_step")
        expect_close(f"x_{num_steps - k} (the images the model got at step {k + 1})", frame, trajectory[k], hint,
                     atol=1e-4)
    samples = recorded_tensor("samples", outputs["samples"], tuple(expected["samples"].shape))
    compare("samples", samples, expected["samples"], [(path[-1], hint) for path, hint in mistakes],
            "return the images after the last step, x_0 = ddpm_step(x_1, eps, 0, schedule, None)", atol=1e-4)
    return (f"cfg_sample reproduces guided sampling ({n} digits, {num_steps} steps, guidance {case['guidance']:g}) "
            "in eval mode without gradients")


def _cfg_sample_devices(cfg_sample, *, inputs: dict) -> str | None:
    # the labels stay on the CPU, as a caller may pass them: the sampler moves its classes to the model's device
    schedule = DDPMSchedule.from_tables(inputs["betas"].clone(), inputs["alphas"].clone(), inputs["alpha_bars"].clone())
    return device_run("cfg_sample", cfg_sample, TinyNoisePredictor(inputs["model_seed"], num_classes=NUM_CLASSES),
                      schedule, OnCPU(inputs["labels"].clone(), "labels"), float(inputs["guidance"]),
                      generator=generator(inputs["generator_seed"]))


@check(reference=REFERENCE.cfg_sample_case, probe=_cfg_sample_probe, judge=_cfg_sample_judge,
       devices=_cfg_sample_devices)
def check_cfg_sample(fn, num_samples: int = 3, num_steps: int = 8, guidance: float = 3.0, seed: int = 0):
    """Check ``fn(model, schedule, labels, guidance, generator=...)`` against the reference guided sampler on a small
    seeded class-conditional noise predictor (given code, in train mode, wrapped to record its calls), the linear
    schedule of ``num_steps`` steps, ``num_samples`` random digits (0 to 8) and one generator: the same x_T, the
    same images at every step, the same samples; one batched call per step, in eval mode, without autograd, at t / T.
    """


def _schedule(inputs: dict) -> DDPMSchedule:
    return DDPMSchedule.from_tables(inputs["betas"].clone(), inputs["alphas"].clone(), inputs["alpha_bars"].clone())


def _replay(cfg_sample: Callable, inputs: dict, labels: torch.Tensor, guidance: float) -> dict:
    """The student's cfg_sample run once on ``labels`` with ``guidance`` and the check's generator: its samples and
    how many times it called the model."""
    spy = Spy(TinyNoisePredictor(inputs["model_seed"], num_classes=NUM_CLASSES))
    samples = run_student("cfg_sample", cfg_sample, spy, _schedule(inputs), labels.clone(), guidance,
                          generator=generator(inputs["generator_seed"]))
    return {"samples": recorded(samples), "calls": len(spy.calls)}


def _sample_digits_probe(sample_digits: Callable, cfg_sample: Callable, *, inputs: dict) -> dict:
    spy = Spy(TinyNoisePredictor(inputs["model_seed"], num_classes=NUM_CLASSES))
    returned = run_student("sample_digits", sample_digits, spy, _schedule(inputs), list(inputs["digits"]),
                           int(inputs["per_digit"]), float(inputs["guidance"]),
                           generator=generator(inputs["generator_seed"]))
    if not (isinstance(returned, (tuple, list)) and len(returned) == 2):
        raise CheckFailed(f"sample_digits should return two tensors, (samples, labels), got {type(returned).__name__}")
    samples, labels = returned
    outputs = {"samples": recorded(samples), "labels": recorded(labels), "calls": len(spy.calls)}
    if isinstance(labels, torch.Tensor) and labels.dtype == torch.int64 and labels.ndim == 1:
        labels = labels.detach().cpu()
        outputs["replays"] = {str(guidance): _replay(cfg_sample, inputs, labels, guidance)
                              for guidance in sorted({float(inputs["guidance"]), 5.0, 1.0})}
    return outputs


def _expect_labels(value, digits: list, per_digit: int) -> torch.Tensor:
    n = len(digits) * per_digit
    if isinstance(value, dict) and isinstance(value.get("not_a_tensor"), str):
        raise CheckFailed(f"labels should be a torch.Tensor of int64, got {value['not_a_tensor']}")
    if not isinstance(value, torch.Tensor) or value.dtype != torch.int64 or value.ndim != 1:
        raise CheckFailed(f"labels should be an int64 tensor of shape ({n},), one digit per sample, got "
                          f"{getattr(value, 'dtype', type(value).__name__)} of shape {tuple(getattr(value, 'shape', ()))}")
    if sorted(value.tolist()) != sorted(list(digits) * per_digit):
        counts = {d: int((value == d).sum()) for d in sorted(set(value.tolist()))}
        raise CheckFailed(f"labels should hold each digit of {list(digits)} {per_digit} times ({n} labels), got these "
                          f"counts: {counts}")
    return value


def _sample_digits_judge(case: dict, inputs: dict, outputs: dict, expected: dict) -> str:
    digits, per_digit, guidance = list(case["digits"]), case["per_digit"], float(case["guidance"])
    labels = _expect_labels(outputs["labels"], digits, per_digit)
    samples = recorded_tensor("samples", outputs["samples"], (len(labels), *IMAGE))
    replays = outputs["replays"]
    asked = replays[str(guidance)]
    if close(samples, recorded_tensor("cfg_sample's samples", asked["samples"], tuple(samples.shape)), atol=1e-5):
        return (f"sample_digits: {per_digit} guided samples of each of the digits {digits} from one call of your "
                f"cfg_sample, with guidance {guidance:g}")
    if int(outputs["calls"]) != int(asked["calls"]):
        raise CheckFailed(f"your sample_digits called the model {int(outputs['calls'])} times where one call of your "
                          f"cfg_sample calls it {int(asked['calls'])} times: draw all the samples in one call of "
                          "cfg_sample, with all the labels, so that they come from one run of the generator")
    for other in sorted(set(replays) - {str(guidance)}):
        if close(samples, replays[other]["samples"], atol=1e-5):
            raise CheckFailed(f"your samples follow guidance {float(other):g}, not the {guidance:g} asked for: "
                              "pass the `guidance` argument on to cfg_sample")
    raise CheckFailed("your samples are not what your cfg_sample gives for the labels you return: samples[i] should be "
                      "the sample of labels[i], from one call of cfg_sample with those labels, `guidance` and "
                      "`generator` (if check_cfg_sample fails, fix cfg_sample first)")


def _sample_digits_devices(sample_digits: Callable, cfg_sample: Callable, *, inputs: dict) -> str | None:
    return device_run("sample_digits", sample_digits, TinyNoisePredictor(inputs["model_seed"], num_classes=NUM_CLASSES),
                      _schedule(inputs), list(inputs["digits"]), int(inputs["per_digit"]), float(inputs["guidance"]),
                      generator=generator(inputs["generator_seed"]))


@check(reference=REFERENCE.sample_digits_case, probe=_sample_digits_probe, judge=_sample_digits_judge,
       devices=_sample_digits_devices)
def check_sample_digits(sample_digits, cfg_sample, digits: tuple = (3,), per_digit: int = 4, num_steps: int = 6,
                        guidance: float = 3.0, seed: int = 0):
    """Check ``sample_digits(model, schedule, digits, per_digit, guidance, generator)`` with your ``cfg_sample``.

    On a small seeded class-conditional noise predictor (given code) and the linear schedule of ``num_steps`` steps,
    the labels returned must hold every digit of ``digits`` ``per_digit`` times (in any order), and the samples must
    be what one call of your ``cfg_sample`` gives for those labels with ``guidance`` and the same generator.
    """
