"""Checks for stage 7 (editing with a class-conditional model): SDEdit, inpainting and class-guided editing.

Each check (three parts, see :mod:`course_lib.checks.protocol`) builds seeded inputs, runs the student's code on
them, compares with the stage's answers on identical inputs and names the likely mistake. The student's editors
run on a given seeded class-conditional noise predictor (:class:`~course_lib.checks.harness.TinyNoisePredictor`,
in train mode as after training) wrapped in a :class:`~course_lib.checks.harness.Spy`, which records the images,
times and classes the editor gives it at every step: the judge compares them step by step with the reference's.

The probe and the judge of each check are here; its reference side, which builds the inputs and expected values
with the answers, is in ``reference.py`` beside this file (read through ``REFERENCE``), which only the grader has.
"""

from __future__ import annotations

import torch

from ...checks.devices import OnCPU, device_run
from ...checks.harness import (IMAGE, CheckFailed, Spy, TinyNoisePredictor, close, expect_close,
                               expect_sampling_calls, expect_tensor, generator, matching_hint, recorded,
                               recorded_tensor, run_student)
from ...checks.protocol import check
from ...data import one_hot
from ..cfg.checks import expect_class_width
from ..noising.api import DDPMSchedule
from ..stage import ReferenceCase
from . import STAGE


REFERENCE = ReferenceCase(STAGE)

NUM_CLASSES = 10

NO_CLASS_HINT = ("the model is stage 4's class-conditional one, model(x, t / T, c): give it c = torch.zeros(N, 10, "
                 "device=device), the \"no class\" rows, to get the unconditional estimate")


def check_schedule(inputs: dict) -> DDPMSchedule:
    """The linear schedule of a case, rebuilt from its tables."""
    return DDPMSchedule.from_tables(inputs["betas"].clone(), inputs["alphas"].clone(), inputs["alpha_bars"].clone())


def run_editor(name: str, editor, inputs: dict, *args) -> dict:
    """Run the student's ``editor(model, schedule, *args, generator=...)`` on the case's recording model; return
    what it gave and every call the model saw (images, times, classes, train mode, autograd)."""
    spy = Spy(TinyNoisePredictor(inputs["model_seed"], num_classes=NUM_CLASSES))
    try:
        got = run_student(name, editor, spy, check_schedule(inputs), *args,
                          generator=generator(inputs["generator_seed"]))
    except CheckFailed:
        if spy.calls and spy.calls[-1]["c"] is None:
            raise CheckFailed(f"your {name} called the model without a class: {NO_CLASS_HINT}") from None
        if spy.calls:
            expect_class_width(spy.calls[-1]["c"])
        raise
    calls = [{key: call[key] for key in ("x", "t", "c", "training", "grad")} for call in spy.calls]
    return {"edited": recorded(got), "calls": calls}


def expect_calls(calls, what: str, num_steps: int, steps: int) -> None:
    """Fail, naming the mistake, unless ``calls`` are one per reverse step t = steps-1 .. 0, at t / T, in eval mode
    without autograd."""
    if isinstance(calls, (list, tuple)) and steps < num_steps and len(calls) == num_steps:
        raise CheckFailed(f"your {what} ran all T = {num_steps} reverse steps: SDEdit runs only the last `steps` = "
                          f"{steps}, t = steps - 1, ..., 0, from x0 noised to step steps - 1")
    if isinstance(calls, (list, tuple)) and len(calls) == steps + 1:
        raise CheckFailed(f"your {what} ran {steps + 1} reverse steps, one too many: with `steps` = {steps} start "
                          "at t = steps - 1 (x0 noised to step steps - 1) and end at t = 0")
    expect_sampling_calls(calls, [t / num_steps for t in reversed(range(steps))], what,
                          f"count t down from steps - 1 = {steps - 1} to 0 and pass t / T")


def expect_frames(calls, what: str, n: int, expected: dict, start_hint: str, step_hint: str) -> None:
    """Compare the images the model got at every step (the first ``n`` of each batch) with the reference's
    ``expected["frames"]``; a match with a known mistake's frames (``expected["mistakes"]``) names it."""
    frames = expected["frames"]
    for k, call in enumerate(calls):
        frame = expect_tensor(f"x at step {k + 1}", call["x"], (len(call["x"]), *IMAGE))[:n]
        if close(frame, frames[k], atol=1e-4):
            continue
        known = [(path[k], hint) for path, hint in expected["mistakes"] if len(path) > k]
        hint = matching_hint(frame, known) or (start_hint if k == 0 else step_hint)
        expect_close(f"x at step {k + 1} (the images the model got)", frame, frames[k], hint, atol=1e-4)


def expect_edited(outputs: dict, what: str, expected: dict, hint: str) -> torch.Tensor:
    """The edited images, checked against the reference's (a known mistake's last frame names it)."""
    got = recorded_tensor(f"your {what}'s result", outputs["edited"], tuple(expected["edited"].shape))
    known = [(path[-1], mistake) for path, mistake in expected["mistakes"]]
    expect_close(f"{what} result", got, expected["edited"], matching_hint(got, known) or hint, atol=1e-4)
    return got


def digits(n: int) -> str:
    """"1 digit", "3 digits": for the passed messages."""
    return f"{n} digit{'s' if n != 1 else ''}"


def expect_no_class(calls, n: int) -> None:
    """Fail unless the model got the "no class" rows, zeros (n, 10), at every step."""
    for call in calls:
        if call["c"] is None:
            raise CheckFailed(NO_CLASS_HINT)
        expect_class_width(call["c"])
        c = expect_tensor("the classes your model got", call["c"], (n, NUM_CLASSES))
        if c.any():
            raise CheckFailed(f"SDEdit and inpainting here use no class: {NO_CLASS_HINT}")


# ----------------------------------------------------------------------------------------------- SDEdit

SDEDIT_START = ("start from x0 noised to step t = steps - 1: draw its noise first, torch.randn(x0.shape, "
                "generator=generator, device=device), then q_sample(x0, t, that noise, schedule) with t a long tensor "
                "of shape (N,)")
SDEDIT_STEP = ("at each step t, the estimate model(x, t / T, zeros), then z = torch.randn(x.shape, "
               "generator=generator, device=device) for t > 0 only, then x = ddpm_step(x, eps, t, schedule, z)")


def _sdedit_probe(sdedit, *, inputs: dict) -> dict:
    x0 = inputs["x0"]
    result = run_editor("sdedit", sdedit, inputs, x0.clone(), inputs["steps"])
    untouched = run_editor("sdedit", sdedit, inputs, x0.clone(), 0)
    return {**result, "untouched": untouched["edited"], "untouched_calls": len(untouched["calls"])}


def _sdedit_judge(case: dict, inputs: dict, outputs: dict, expected: dict) -> str:
    n, num_steps, steps = case["num_images"], case["num_steps"], case["steps"]
    untouched = recorded_tensor("sdedit(..., steps=0)", outputs["untouched"], (n, *IMAGE))
    if outputs["untouched_calls"] or not torch.equal(untouched, inputs["x0"]):
        raise CheckFailed("with steps = 0 there is nothing to undo: return x0 unchanged, without noising it or "
                          "calling the model")
    calls = outputs["calls"]
    expect_calls(calls, "sdedit", num_steps, steps)
    expect_no_class(calls, n)
    expect_frames(calls, "sdedit", n, expected, SDEDIT_START, SDEDIT_STEP)
    expect_edited(outputs, "sdedit", expected, "return x after the last step t = 0, which adds no noise")
    return (f"sdedit matches the reference ({digits(n)}, the last {steps} of T = {num_steps} steps), and steps = 0 "
            "returns x0")


def _sdedit_devices(sdedit, *, inputs: dict) -> str | None:
    return device_run("sdedit", sdedit, TinyNoisePredictor(inputs["model_seed"], num_classes=NUM_CLASSES),
                      check_schedule(inputs), inputs["x0"].clone(), inputs["steps"],
                      generator=generator(inputs["generator_seed"]))


@check(reference=REFERENCE.sdedit_case, probe=_sdedit_probe, judge=_sdedit_judge, devices=_sdedit_devices)
def check_sdedit(fn, num_images: int = 3, num_steps: int = 10, steps: int = 6, seed: int = 0):
    """Check ``fn(model, schedule, x0, steps, generator=...)`` against the reference SDEdit on a small seeded
    class-conditional noise predictor (given code, in train mode, wrapped to record its calls), the linear schedule
    of ``num_steps`` steps and ``num_images`` images in [-1, 1]: the same noised start, the same images at each of
    the ``steps`` reverse steps (unconditional, c = zeros, at t / T, in eval mode without autograd), the same
    result; and x0 itself back with ``steps`` = 0.
    """


# ----------------------------------------------------------------------------------------------- inpainting

INPAINT_START = ("draw x_T = torch.randn(x0.shape, generator=generator, device=device) first; then, at every step "
                 "t before the estimate, replace the known pixels: x = mask * q_sample(x0, t, eps, schedule) + "
                 "(1 - mask) * x with fresh noise eps, torch.randn(x0.shape, generator=generator, device=device)")
INPAINT_STEP = ("at each step t: the known pixels replaced by x0 noised to step t (fresh eps from the generator), "
                "then the estimate model(x, t / T, zeros), then z (t > 0 only), then ddpm_step")


def _inpaint_probe(inpaint, *, inputs: dict) -> dict:
    return run_editor("inpaint", inpaint, inputs, inputs["x0"].clone(), inputs["mask"].clone())


def _inpaint_judge(case: dict, inputs: dict, outputs: dict, expected: dict) -> str:
    n, num_steps = case["num_images"], case["num_steps"]
    calls = outputs["calls"]
    expect_sampling_calls(calls, [t / num_steps for t in reversed(range(num_steps))], "inpaint")
    expect_no_class(calls, n)
    expect_frames(calls, "inpaint", n, expected, INPAINT_START, INPAINT_STEP)
    mask, x0 = inputs["mask"], inputs["x0"]
    got = recorded_tensor("your inpaint's result", outputs["edited"], (n, *IMAGE))
    if not close(got * mask, x0 * mask, atol=1e-6):
        raise CheckFailed("the known pixels of your result are not x0's: after the last step put them back, "
                          "mask * x0 + (1 - mask) * x")
    expect_edited(outputs, "inpaint", expected, "after the last step t = 0 (no noise), mask * x0 + (1 - mask) * x")
    return f"inpaint matches the reference ({digits(n)}, T = {num_steps}), and keeps the known pixels exactly"


def _inpaint_devices(inpaint, *, inputs: dict) -> str | None:
    return device_run("inpaint", inpaint, TinyNoisePredictor(inputs["model_seed"], num_classes=NUM_CLASSES),
                      check_schedule(inputs), inputs["x0"].clone(), inputs["mask"].clone(),
                      generator=generator(inputs["generator_seed"]))


@check(reference=REFERENCE.inpaint_case, probe=_inpaint_probe, judge=_inpaint_judge, devices=_inpaint_devices)
def check_inpaint(fn, num_images: int = 2, num_steps: int = 8, seed: int = 0):
    """Check ``fn(model, schedule, x0, mask, generator=...)`` against the reference inpainting on a small seeded
    class-conditional noise predictor (given code, wrapped to record its calls), the linear schedule of
    ``num_steps`` steps, ``num_images`` images in [-1, 1] and a random 0/1 mask (1: known): the same images at every
    step (the known pixels noised to that step), unconditional estimates, and a result whose known pixels are x0's.
    """


# ----------------------------------------------------------------------------------------------- guided editing

GUIDED_BATCH_HINT = ("compute each step's estimate with guided_eps(model, x, t / T, c, guidance), which makes the "
                     "conditional and unconditional estimates in one batch of 2N")


def _guided_edit_probe(guided_edit, *, inputs: dict) -> dict:
    return run_editor("guided_edit", guided_edit, inputs, inputs["x0"].clone(), inputs["labels"].clone(),
                      inputs["steps"], float(inputs["guidance"]))


def _expect_guided_classes(calls, labels: torch.Tensor) -> None:
    """Fail unless every step gave the model one batch of 2N: the one-hot labels, then zeros."""
    n = len(labels)
    for call in calls:
        if call["c"] is None or len(call["x"]) != 2 * n:
            raise CheckFailed(f"at every step the model should get one batch of 2N = {2 * n} images (with their "
                              f"classes, then with zeros): {GUIDED_BATCH_HINT}")
        expect_class_width(call["c"])
        c = expect_tensor("the classes your model got", call["c"], (2 * n, NUM_CLASSES))
        if not torch.equal(c[:n].float(), one_hot(labels, NUM_CLASSES)) or c[n:].any():
            raise CheckFailed("the classes should be c = F.one_hot(labels, 10).float(), the digits to edit towards "
                              "(moved to the model's device): pass them to guided_eps")


def _guided_edit_judge(case: dict, inputs: dict, outputs: dict, expected: dict) -> str:
    n, num_steps, steps, guidance = case["num_images"], case["num_steps"], case["steps"], case["guidance"]
    calls = outputs["calls"]
    if isinstance(calls, (list, tuple)) and len(calls) == 2 * steps:
        raise CheckFailed(f"your guided_edit called the model {len(calls)} times for {steps} steps, twice per step: "
                          + GUIDED_BATCH_HINT)
    expect_calls(calls, "guided_edit", num_steps, steps)
    _expect_guided_classes(calls, inputs["labels"])
    expect_frames(calls, "guided_edit", n, expected, SDEDIT_START,
                  "at each step t, eps = guided_eps(model, x, t / T, c, guidance), then z (t > 0 only), then "
                  "ddpm_step, as in your sdedit")
    expect_edited(outputs, "guided_edit", expected, "return x after the last step t = 0, which adds no noise")
    return (f"guided_edit matches the reference ({digits(n)}, the last {steps} of T = {num_steps} steps, guidance "
            f"{guidance:g})")


def _guided_edit_devices(guided_edit, *, inputs: dict) -> str | None:
    # the labels stay on the CPU, as a caller may pass them: the editor moves its classes to the model's device
    return device_run("guided_edit", guided_edit, TinyNoisePredictor(inputs["model_seed"], num_classes=NUM_CLASSES),
                      check_schedule(inputs), inputs["x0"].clone(), OnCPU(inputs["labels"].clone(), "labels"),
                      inputs["steps"], float(inputs["guidance"]), generator=generator(inputs["generator_seed"]))


@check(reference=REFERENCE.guided_edit_case, probe=_guided_edit_probe, judge=_guided_edit_judge,
       devices=_guided_edit_devices)
def check_guided_edit(fn, num_images: int = 3, num_steps: int = 10, steps: int = 6, guidance: float = 3.0,
                      seed: int = 0):
    """Check ``fn(model, schedule, x0, labels, steps, guidance, generator=...)`` against the reference guided edit
    on a small seeded class-conditional noise predictor (given code, wrapped to record its calls), the linear
    schedule of ``num_steps`` steps, ``num_images`` images in [-1, 1] and random target digits (0 to 8): the same
    noised start and the same images at each of the ``steps`` reverse steps, one batched guided call per step.
    """
