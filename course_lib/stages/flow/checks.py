"""Checks for stage 5 (rectified flow): the flow-matching loss and the Euler sampler.

Each check (three parts, see :mod:`course_lib.checks.protocol`) builds seeded inputs, runs the student's code on
them, compares with the stage's answers on identical inputs and names the likely mistake. The student's loss and
sampler run on given seeded models (:class:`~course_lib.checks.harness.ToyModel`,
:class:`~course_lib.checks.harness.TinyNoisePredictor`), so that the student's side never needs a reference
network.

The probe and the judge of each check are here; its reference side, which builds the inputs and expected values
with the answers, is in ``reference.py`` beside this file (read through ``REFERENCE``), which only the grader has.
"""

from __future__ import annotations

import torch

from ...checks.harness import (IMAGE, CheckFailed, Spy, TinyNoisePredictor, ToyModel, expect_close,
                               expect_sampling_calls, expect_tensor, expect_time_per_image, generator, matching_hint,
                               recorded, recorded_loss, run_student)
from ...checks.devices import device_run
from ...checks.protocol import check
from ..stage import ReferenceCase
from . import STAGE


REFERENCE = ReferenceCase(STAGE)


def _flow_loss_probe(flow_loss, *, inputs: dict) -> dict:
    spy = Spy(ToyModel())
    got = run_student("flow_loss", flow_loss, spy, inputs["x0"].clone(), generator(inputs["seed"]))
    return {"loss": recorded(got), "requires_grad": bool(isinstance(got, torch.Tensor) and got.requires_grad),
            "model_calls": len(spy.calls), "times": spy.calls[0]["t"] if spy.calls else None}


def _flow_loss_judge(case: dict, inputs: dict, outputs: dict, expected: dict) -> str:
    if not outputs["model_calls"]:
        raise CheckFailed("your flow_loss never calls the model: the loss compares model(x_t, t) with eps - x0")
    expect_time_per_image(outputs["times"], case["batch_size"], "t = torch.rand(N, generator=generator)")
    got = recorded_loss(outputs)
    hint = matching_hint(got, expected["mistakes"])
    expect_close("loss", got, expected["loss"], hint or "draw t, then eps, with `generator`; x_t = (1 - t) x0 + t eps "
                 "with t reshaped to (N, 1, 1, 1); loss = mean of (model(x_t, t) - (eps - x0))^2")
    return f"flow_loss matches the reference (batch {case['batch_size']})"


def _flow_loss_devices(flow_loss, *, inputs: dict) -> str | None:
    return device_run("flow_loss", flow_loss, ToyModel(), inputs["x0"].clone(), generator(inputs["seed"]),
                      where="x0.device")


@check(reference=REFERENCE.flow_loss_case, probe=_flow_loss_probe, judge=_flow_loss_judge, devices=_flow_loss_devices)
def check_flow_loss(fn, batch_size: int = 8, seed: int = 0):
    """Check that ``fn(model, x0, generator)`` equals the reference rectified-flow loss on the same generator.

    ``x0`` holds ``batch_size`` images in [-1, 1]; ``model`` is a small given model (``0.5 x + t``) that records
    its calls; both losses draw t, then eps, from a generator seeded with ``seed``. The loss must be a scalar
    tensor with a gradient.
    """


def _flow_sample_run(flow_sample, inputs: dict, generator_seed: int, global_seed: int) -> tuple[Spy, object]:
    """The student's sampler on the check's model, with a generator seeded ``generator_seed`` and the global random
    state seeded ``global_seed``: the recording model and what the sampler returned."""
    spy = Spy(TinyNoisePredictor(inputs["seed"]))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(global_seed)
        got = run_student("flow_sample", flow_sample, spy, inputs["num_samples"], inputs["num_steps"],
                          generator(generator_seed))
    return spy, got


def _flow_sample_probe(flow_sample, *, inputs: dict) -> dict:
    # the global seed of the first run equals the generator's, as in a notebook seeded like the check: a sampler
    # that draws from the global state shows in the second run, under another global seed; one that seeds a fixed
    # state itself shows in the third, with another generator
    seed = inputs["seed"]
    spy, got = _flow_sample_run(flow_sample, inputs, seed, seed)
    again = _flow_sample_run(flow_sample, inputs, seed, seed + 1)[1]
    other = _flow_sample_run(flow_sample, inputs, seed + 1, seed + 1)[1]
    return {"samples": recorded(got), "again": recorded(again), "other_generator": recorded(other),
            "calls": [{"t": call["t"], "training": bool(call["training"]), "grad": bool(call["grad"])}
                      for call in spy.calls],
            "first_x": spy.calls[0]["x"] if spy.calls else None}


def _flow_sample_judge(case: dict, inputs: dict, outputs: dict, expected: dict) -> str:
    got = outputs["samples"]
    if isinstance(got, dict) and "not_a_tensor" in got:
        raise CheckFailed(f"samples should be a torch.Tensor, got {got['not_a_tensor']}")
    got = expect_tensor("samples", got, (case["num_samples"], *IMAGE))
    again = outputs["again"]
    if not (isinstance(again, torch.Tensor) and torch.equal(again, got)):
        raise CheckFailed("two runs with the same generator gave different samples: your flow_sample draws from the "
                          "global random state. Draw the start noise from the generator you are given, "
                          "x = torch.randn((N, 1, 28, 28), generator=generator, device=device)")
    if isinstance(outputs["other_generator"], torch.Tensor) and torch.equal(outputs["other_generator"], got):
        raise CheckFailed("a generator with another seed gave the same samples: your flow_sample ignores the "
                          "generator you are given (seed nothing yourself): x = torch.randn((N, 1, 28, 28), "
                          "generator=generator, device=device)")
    expect_sampling_calls(outputs["calls"], expected["times"], "flow_sample",
                          "start at t = 1 and evaluate v at the start of each step: t_k = 1 - k / num_steps")
    expect_close("first model input (x at t = 1)", outputs["first_x"], expected["x_start"],
                 "start from pure noise x = torch.randn((N, 1, 28, 28), generator=generator)")
    hint = matching_hint(got, expected["mistakes"])
    expect_close("samples", got, expected["samples"], hint or "each Euler step is x <- x - v(x, t) / num_steps",
                 atol=1e-4)
    return f"flow_sample matches the reference Euler sampler ({case['num_steps']} steps)"


def _flow_sample_devices(flow_sample, *, inputs: dict) -> str | None:
    return device_run("flow_sample", flow_sample, TinyNoisePredictor(inputs["seed"]), inputs["num_samples"],
                      inputs["num_steps"], generator(inputs["seed"]))


@check(reference=REFERENCE.flow_sample_case, probe=_flow_sample_probe, judge=_flow_sample_judge,
       devices=_flow_sample_devices)
def check_flow_sample(fn, num_samples: int = 2, num_steps: int = 5, seed: int = 0):
    """Check that ``fn(model, num_samples, num_steps, generator)`` integrates the flow ODE from t = 1 to 0 like
    the reference.

    ``model`` is a small seeded velocity predictor (given code, in train mode as after training, wrapped to record
    its calls); the check expects one call per step, in eval mode and without autograd, at t_k = 1 - k / num_steps,
    starting from torch.randn((num_samples, 1, 28, 28), generator=generator) with the generator seeded by ``seed``.
    It runs the sampler again under another global seed (the first run's equals ``seed``), where the samples must
    not change, and with a generator seeded ``seed + 1``, where they must.
    """
