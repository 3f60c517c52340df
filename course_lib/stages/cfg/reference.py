"""The reference side of the checks of stage 4 (``04_cfg``): for each case, the inputs and what the answers give on
them, with the outputs of known mistakes for the hints.

It needs the answers and spells out mistakes, so it never leaves the grader: no student package and no grading
kernel has this file (see :mod:`course_lib.stages.stage`).
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
from torch import nn

from ...checks.harness import (IMAGE, Spy, TinyNoisePredictor, ToyModel, generator, random_images, reference_weights,
                               scramble_weights)
from ...data import one_hot
from ..ddpm import STAGE as DDPM
from ..ddpm.reference import unet_mutants
from ..noising.api import DDPMSchedule
from . import STAGE
from .api import P_UNCOND
from .checks import LOSS_ORDER, NUM_CLASSES, check_labels


def one_hot_batch(batch_size: int, seed: int, with_empty_row: bool = False) -> torch.Tensor:
    """Random one-hot classes (batch_size, 10); the last row all zeros ("no class") if asked."""
    labels = torch.randint(0, NUM_CLASSES, (batch_size,), generator=generator(seed))
    c = one_hot(labels, NUM_CLASSES)
    if with_empty_row:
        c[-1] = 0
    return c


def drop_labels_case(batch_size: int, p_uncond: float, seed: int) -> tuple[dict, dict]:
    c = one_hot_batch(batch_size, seed + 1)
    expected = STAGE.answers.drop_labels(c, p_uncond, generator(seed))
    inverted = c * (torch.rand(batch_size, generator=generator(seed)) < p_uncond)[:, None].float()
    return {"c": c, "p_uncond": p_uncond, "seed": seed}, {"dropped": expected, "inverted": inverted}


def unet_case(num_hiddens: int, batch_size: int, seed: int) -> tuple[dict, dict]:

    reference = scramble_weights(STAGE.answers.ClassConditionalUNet(1, NUM_CLASSES, num_hiddens), seed).eval()
    g = generator(seed)
    x = torch.randn((batch_size, *IMAGE), generator=g)
    t = torch.rand(batch_size, generator=g)
    c = one_hot_batch(batch_size, seed + 1, with_empty_row=True)
    other_c = one_hot_batch(batch_size, seed + 2)
    with torch.no_grad():
        noise = reference(x, t, c)
        mistakes = [(compute(), hint) for hint, compute in unet_mutants(reference, x, t, c).items()]
    inputs = {"x": x, "t": t, "c": c, "other_c": other_c, "num_hiddens": num_hiddens, **reference_weights(reference)}
    return inputs, {"noise": noise, "mistakes": mistakes}


def _guidance_model(seed: int) -> nn.Module:
    """The class-conditional model the guided estimates run on: given code, seeded, in eval mode."""
    return TinyNoisePredictor(seed, num_classes=NUM_CLASSES).eval()


def guided_case(batch_size: int, guidance: float, seed: int) -> tuple[dict, dict]:
    model = _guidance_model(seed)
    g = generator(seed)
    x_t = torch.randn((batch_size, *IMAGE), generator=g)
    t = torch.rand(batch_size, generator=g)
    c = one_hot_batch(batch_size, seed + 1)
    with torch.no_grad():
        eps_c, eps_u = model(x_t, t, c), model(x_t, t, torch.zeros_like(c))
    scales = (guidance, 0.0, 1.0)
    return {"x_t": x_t, "t": t, "c": c, "scales": list(scales), "model_seed": seed}, {
        "guided": [eps_u + scale * (eps_c - eps_u) for scale in scales],
        "mistakes": [
            (eps_c + guidance * (eps_u - eps_c),
             "you swapped eps_cond and eps_uncond: eps = eps_uncond + gamma (eps_cond - eps_uncond)"),
            (eps_c + guidance * (eps_c - eps_u),
             "start from the unconditional prediction: eps = eps_uncond + gamma (eps_cond - eps_uncond)")]}


def _loss_draws(x0: torch.Tensor, labels: torch.Tensor, schedule, p_uncond: float, seed: int, order) -> dict:
    """What the model gets when the loss draws the dropout, t and eps from generator(seed) in ``order``."""
    g = generator(seed)
    n, steps = x0.shape[0], schedule.num_steps
    c = one_hot(labels, NUM_CLASSES)
    draws = {}
    for what in order:
        if what == "drop":
            draws["c"] = c * (torch.rand(n, generator=g) >= p_uncond)[:, None].float()
        elif what == "t":
            draws["t"] = torch.randint(0, steps, (n,), generator=g)
        else:
            draws["eps"] = torch.randn(x0.shape, generator=g)
    alpha_bar = schedule.alpha_bars[draws["t"]].view(-1, 1, 1, 1)
    return {"c": draws["c"], "t": draws["t"].float() / steps,
            "x": alpha_bar.sqrt() * x0 + (1 - alpha_bar).sqrt() * draws["eps"], "eps": draws["eps"]}


def cfg_loss_case(batch_size: int, num_steps: int, p_uncond: float, seed: int) -> tuple[dict, dict]:
    schedule = DDPMSchedule(num_steps)
    x0 = random_images(batch_size, seed + 1)
    labels = check_labels(batch_size, seed + 2)
    spy = Spy(ToyModel())
    loss = STAGE.answers.class_conditional_loss(spy, x0, labels, schedule, p_uncond,
                                                      generator=generator(seed)).detach()
    call = spy.calls[0]
    others = [_loss_draws(x0, labels, schedule, p_uncond, seed, order)
              for order in itertools.permutations(LOSS_ORDER) if order != LOSS_ORDER]
    if p_uncond != P_UNCOND:
        fixed = _loss_draws(x0, labels, schedule, P_UNCOND, seed, LOSS_ORDER)["c"]
    else:
        fixed = call["c"]
    right = _loss_draws(x0, labels, schedule, p_uncond, seed, LOSS_ORDER)
    model = ToyModel()
    with torch.no_grad():
        output = model(right["x"], right["t"], right["c"])
        loss_mistakes = [
            (F.mse_loss(output, right["eps"], reduction="sum"), "use the mean squared error over all pixels "
                                                                "(F.mse_loss), not the sum"),
            (F.mse_loss(output, x0), "the network predicts the noise eps, not the clean image: the target is eps"),
        ]
    inputs = {"x0": x0, "labels": labels, "p_uncond": p_uncond, "generator_seed": seed,
              **{name: getattr(schedule, name).clone() for name in ("betas", "alphas", "alpha_bars")}}
    return inputs, {"loss": loss, "c": call["c"], "t": call["t"], "x": call["x"], "c_fixed_p": fixed,
                    "orders": [{key: draw[key] for key in ("c", "t", "x")} for draw in others],
                    "t_steps": right["t"] * num_steps, "loss_mistakes": loss_mistakes}


def _guided_chain(model, schedule, labels: torch.Tensor, guidance: float, seed: int, *, stochastic: bool = True,
                  last_noise: bool = False) -> torch.Tensor:
    """The guided sampler with a known mistake (no z at all, or noise at the last step): its trajectory
    (T + 1, N, 1, 28, 28), x_T first and the samples last."""
    cfg, ddpm = STAGE.answers, DDPM.answers
    g = generator(seed)
    steps, n = schedule.num_steps, len(labels)
    c = one_hot(labels, NUM_CLASSES)
    x = torch.randn((n, *IMAGE), generator=g)
    frames = [x]
    model.eval()
    with torch.no_grad():
        for t in reversed(range(steps)):
            eps = cfg.guided_eps(model, x, torch.full((n,), t / steps), c, guidance)
            z = torch.randn(x.shape, generator=g) if stochastic and (t > 0 or last_noise) else None
            x = ddpm.ddpm_step(x, eps, t, schedule, z)
            if t == 0 and z is not None:
                x = x + schedule.betas[0].sqrt() * z
            frames.append(x)
    return torch.stack(frames)


def cfg_sample_case(num_samples: int, num_steps: int, guidance: float, seed: int) -> tuple[dict, dict]:
    schedule = DDPMSchedule(num_steps)
    labels = check_labels(num_samples, seed + 1)
    samples, trajectory = STAGE.answers.cfg_sample(TinyNoisePredictor(seed, num_classes=NUM_CLASSES), schedule,
                                                         labels, guidance, generator(seed), return_trajectory=True)

    def variant(**kwargs) -> torch.Tensor:
        return _guided_chain(TinyNoisePredictor(seed, num_classes=NUM_CLASSES), schedule, labels,
                             kwargs.pop("scale", guidance), seed, **kwargs)

    mistakes = [(variant(last_noise=True), "did you add noise at the last step t = 0? There the sample is the mean, "
                                           "with no z (pass z=None, or draw z only for t > 0)"),
                (variant(stochastic=False), "no noise was added: draw a fresh z = torch.randn(x.shape, "
                                            "generator=generator, device=device) at every step t > 0"),
                (variant(scale=1.0), "your sampler follows guidance 1, the plain conditional model: pass the "
                                     "`guidance` argument to guided_eps")]
    if guidance != 5.0:
        mistakes.append((variant(scale=5.0), "your sampler follows guidance 5: pass the `guidance` argument to "
                                             "guided_eps, not a fixed value"))
    if guidance != 0.0:
        mistakes.append((variant(scale=0.0), "your sampler follows guidance 0, the unconditional model: pass "
                                             "the `guidance` argument to guided_eps"))
    inputs = {"labels": labels, "guidance": guidance, "model_seed": seed, "generator_seed": seed,
              **{name: getattr(schedule, name).clone() for name in ("betas", "alphas", "alpha_bars")}}
    return inputs, {"samples": samples.clone(), "trajectory": trajectory.clone(), "mistakes": mistakes}


def sample_digits_case(digits: tuple, per_digit: int, num_steps: int, guidance: float,
                       seed: int) -> tuple[dict, dict]:
    """The inputs of the check of ``sample_digits``; what is expected is worked out from the student's own
    ``cfg_sample`` (the probe replays it), so only the number of samples comes from here."""
    schedule = DDPMSchedule(num_steps)
    inputs = {"digits": list(digits), "per_digit": per_digit, "guidance": guidance, "model_seed": seed,
              "generator_seed": seed + 1,
              **{name: getattr(schedule, name).clone() for name in ("betas", "alphas", "alpha_bars")}}
    labels = STAGE.answers.sample_digits(TinyNoisePredictor(seed, num_classes=NUM_CLASSES), schedule, digits,
                                         per_digit, guidance, generator(seed + 1))[1]
    return inputs, {"counts": torch.bincount(labels, minlength=NUM_CLASSES)}
