"""The reference side of the checks of stage 5 (``05_flow``): for each case, the inputs and what the answers give on
them, with the outputs of known mistakes for the hints.

It needs the answers and spells out mistakes, so it never leaves the grader: no student package and no grading
kernel has this file (see :mod:`course_lib.stages.stage`).
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from ...checks.harness import IMAGE, TinyNoisePredictor, ToyModel, generator, random_images
from . import STAGE


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
        "x_t = (1 - t) x0 + t eps: t = 0 is the data, t = 1 the noise":
            loss(path=lambda t, eps: t * x0 + (1 - t) * eps),
        "use the mean squared error over all pixels (F.mse_loss), not the sum": loss(reduce="sum"),
    }


def flow_loss_case(batch_size: int, seed: int) -> tuple[dict, dict]:
    x0 = random_images(batch_size, seed + 1)
    with torch.no_grad():
        loss = STAGE.answers.flow_loss(ToyModel(), x0, generator=generator(seed))
        mistakes = [(compute(), hint) for hint, compute in _loss_mutants(x0, seed).items()]
    return {"x0": x0, "seed": seed}, {"loss": loss, "mistakes": mistakes}


def _euler(model, x: torch.Tensor, num_steps: int, sign: int) -> torch.Tensor:
    """Euler steps ``x <- x + sign * v(x, t) / num_steps`` from t = 1 (sign = -1 is the correct sampler)."""
    for k in range(num_steps):
        x = x + sign * model(x, torch.full((len(x),), 1 - k / num_steps)) / num_steps
    return x


def flow_sample_case(num_samples: int, num_steps: int, seed: int) -> tuple[dict, dict]:
    samples = STAGE.answers.flow_sample(TinyNoisePredictor(seed), num_samples, num_steps, generator(seed))
    x_start = torch.randn((num_samples, *IMAGE), generator=generator(seed))
    with torch.no_grad():
        wrong_sign = _euler(TinyNoisePredictor(seed).eval(), x_start, num_steps, sign=+1)
    return {"num_samples": num_samples, "num_steps": num_steps, "seed": seed}, {
        "samples": samples, "x_start": x_start, "times": [1 - k / num_steps for k in range(num_steps)],
        "mistakes": [(wrong_sign, "integrate towards the data: x <- x - dt * v (the velocity points towards the "
                                  "noise)")]}
