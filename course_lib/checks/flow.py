"""Checks for stage 5 (rectified flow): the flow-matching loss and the Euler sampler.

Every check runs the student's code with the reference forbidden,
compares it with :mod:`course_lib` on identical seeded inputs and names the likely mistake.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from .. import answers
from .conditional_unets import tiny_unet
from .harness import (IMAGE, Spy, ToyModel, expect_close, expect_sampling_calls, expect_scalar_loss, expect_tensor,
                      first_match, forbid, generator, passed, random_images, run_student, single_threaded)

flow_answers = answers.load("flow")


def _loss_mutants(x0: torch.Tensor, seed: int) -> dict[str, Callable[[], torch.Tensor]]:
    """The flow loss with one known mistake each; every mutant draws from a fresh generator(seed)."""
    model = ToyModel()
    n = x0.shape[0]

    def loss(t_first=True, path=lambda t, eps: (1 - t) * x0 + t * eps, target=lambda eps: eps - x0, reduce="mean"):
        def compute():
            g = generator(seed)
            if t_first:
                t = torch.rand(n, generator=g)
                eps = torch.randn(x0.shape, generator=g)
            else:
                eps = torch.randn(x0.shape, generator=g)
                t = torch.rand(n, generator=g)
            return F.mse_loss(model(path(t.view(-1, 1, 1, 1), eps), t), target(eps), reduction=reduce)
        return compute

    return {
        "draw t first (torch.rand(N, generator=generator)), then eps with the same generator": loss(t_first=False),
        "the velocity points from the data to the noise: the target is eps - x0, not x0 - eps":
            loss(target=lambda eps: x0 - eps),
        "the network predicts the velocity eps - x0, not the noise eps": loss(target=lambda eps: eps),
        "x_t = (1 - t) x0 + t eps: t = 0 is the data, t = 1 the noise": loss(path=lambda t, eps: t * x0 + (1 - t) * eps),
        "use the mean squared error over all pixels (F.mse_loss), not the sum": loss(reduce="sum"),
    }


@single_threaded
def check_flow_loss(fn, batch_size: int = 8, seed: int = 0) -> None:
    """``fn(model, x0, generator)`` equals the reference rectified-flow loss on the same generator."""
    x0 = random_images(batch_size, seed + 1)
    expected = flow_answers.flow_loss(ToyModel(), x0, generator=generator(seed))
    spy = Spy(ToyModel())
    with forbid(flow_answers.flow_loss, flow_answers.flow_interpolate):
        got = run_student("flow_loss", fn, spy, x0, generator(seed))
    if not spy.calls:
        raise CheckFailed("your flow_loss never calls the model: the loss compares model(x_t, t) with eps - x0")
    expect_scalar_loss(got)
    hint = first_match(got, _loss_mutants(x0, seed))
    expect_close("loss", got, expected, hint or "draw t, then eps, with `generator`; x_t = (1 - t) x0 + t eps with t "
                 "reshaped to (N, 1, 1, 1); loss = mean of (model(x_t, t) - (eps - x0))^2")
    passed(f"flow_loss matches the reference (batch {batch_size})")


@single_threaded
def check_flow_sample(fn, num_samples: int = 2, num_steps: int = 5, seed: int = 0) -> None:
    """``fn(model, num_samples, num_steps, generator)`` integrates the flow ODE from t = 1 to 0 like the reference."""
    expected = flow_answers.flow_sample(tiny_unet(seed), num_samples, num_steps, generator(seed))
    spy = Spy(tiny_unet(seed))
    with forbid(flow_answers.flow_sample):
        got = run_student("flow_sample", fn, spy, num_samples, num_steps, generator(seed))
    expect_tensor("samples", got, (num_samples, *IMAGE))
    expect_sampling_calls(spy, [1 - k / num_steps for k in range(num_steps)], "flow_sample",
                          "start at t = 1 and evaluate v at the start of each step: t_k = 1 - k / num_steps")
    x_start = torch.randn((num_samples, *IMAGE), generator=generator(seed))
    expect_close("first model input (x at t = 1)", spy.calls[0]["x"], x_start,
                 "start from pure noise x = torch.randn((N, 1, 28, 28), generator=generator)")
    hint = first_match(got, {"integrate towards the data: x <- x - dt * v (the velocity points towards the noise)":
                             lambda: _euler(tiny_unet(seed).eval(), x_start, num_steps, sign=+1)})
    expect_close("samples", got, expected, hint or "each Euler step is x <- x - v(x, t) / num_steps", atol=1e-4)
    passed(f"flow_sample matches the reference Euler sampler ({num_steps} steps)")


def _euler(model, x: torch.Tensor, num_steps: int, sign: int) -> torch.Tensor:
    """Euler steps ``x <- x + sign * v(x, t) / num_steps`` from t = 1 (sign = -1 is the correct sampler)."""
    for k in range(num_steps):
        x = x + sign * model(x, torch.full((len(x),), 1 - k / num_steps)) / num_steps
    return x
