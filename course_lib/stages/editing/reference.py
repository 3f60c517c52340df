"""The reference side of the checks of stage 7 (``07_editing``): for each case, the inputs and what the answers give
on them (the images the model gets at every step, and the result), with the same of known mistakes for the hints.

It needs the answers and spells out mistakes, so it never leaves the grader: no student package and no grading
kernel has this file (see :mod:`course_lib.stages.stage`).
"""

from __future__ import annotations

import torch

from ...checks.harness import IMAGE, Spy, TinyNoisePredictor, generator, random_images
from ..cfg import STAGE as CFG
from ..cfg.checks import check_labels
from ..ddpm import STAGE as DDPM
from ..noising.api import DDPMSchedule
from . import STAGE
from .checks import NUM_CLASSES

LAST_NOISE = ("did you add noise at the last step t = 0? There the result is the mean, with no z (draw z only for "
              "t > 0)")
NO_NOISE = ("no noise was added: draw z = torch.randn(x.shape, generator=generator, device=device) at every step "
            "t > 0, after the estimate, and pass it to ddpm_step")


def _model(seed: int) -> TinyNoisePredictor:
    return TinyNoisePredictor(seed, num_classes=NUM_CLASSES)


def _tables(schedule: DDPMSchedule) -> dict:
    return {name: getattr(schedule, name).clone() for name in ("betas", "alphas", "alpha_bars")}


def _recorded_path(edit, seed: int, n: int) -> dict:
    """Run the answer ``edit(model)`` on a recording model: the first ``n`` images of every model call, the result
    last, stacked (calls + 1, n, 1, 28, 28), and the result."""
    spy = Spy(_model(seed))
    edited = edit(spy)
    frames = [call["x"][:n].clone() for call in spy.calls]
    return {"frames": torch.stack(frames + [edited.clone()]), "edited": edited.clone()}


def _noised(x0: torch.Tensor, t: int, schedule, g: torch.Generator) -> torch.Tensor:
    """x0 noised to step ``t`` with eps drawn from ``g`` (the closed form, written out)."""
    alpha_bar = schedule.alpha_bars[t]
    return alpha_bar.sqrt() * x0 + (1 - alpha_bar).sqrt() * torch.randn(x0.shape, generator=g)


def _reverse(x: torch.Tensor, t: int, eps: torch.Tensor, schedule, g, stochastic: bool, last_noise: bool):
    """One reverse step of a mutant: stage 3's, with z for t > 0 (or never, or also at t = 0)."""
    z = torch.randn(x.shape, generator=g) if stochastic and (t > 0 or last_noise) else None
    x = DDPM.answers.ddpm_step(x, eps, t, schedule, z)
    return x + schedule.betas[0].sqrt() * z if t == 0 and z is not None else x


def _edit_path(x0: torch.Tensor, schedule, steps: int, seed: int, *, classes=None, guidance: float = 0.0,
               start: str = "noised", stochastic: bool = True, last_noise: bool = False) -> torch.Tensor:
    """SDEdit (``classes`` None) or the guided edit with one known mistake: the images the model gets at every step
    and the result, stacked (steps + 1, N, 1, 28, 28). ``start``: "noised" (right), "late" (noised to step
    ``steps``), "clean" (x0 itself) or "noise" (pure noise)."""
    g, n, num_steps = generator(seed), len(x0), schedule.num_steps
    x = {"noised": lambda: _noised(x0, steps - 1, schedule, g), "late": lambda: _noised(x0, steps, schedule, g),
         "clean": x0.clone, "noise": lambda: torch.randn(x0.shape, generator=g)}[start]()
    model, frames = _model(seed).eval(), []
    with torch.no_grad():
        for t in reversed(range(steps)):
            frames.append(x)
            time = torch.full((n,), t / num_steps)
            eps = (model(x, time, torch.zeros(n, NUM_CLASSES)) if classes is None
                   else CFG.answers.guided_eps(model, x, time, classes, guidance))
            x = _reverse(x, t, eps, schedule, g, stochastic, last_noise)
    return torch.stack(frames + [x])


def _edit_mistakes(x0: torch.Tensor, schedule, steps: int, seed: int, **guided) -> list[tuple[torch.Tensor, str]]:
    """The paths of the mistakes SDEdit and the guided edit share."""
    mistakes = [(_edit_path(x0, schedule, steps, seed, start="clean", **guided),
                 "noise x0 before the first step: x = q_sample(x0, t, eps, schedule) at t = steps - 1; SDEdit "
                 "starts from the noised digit, not from the digit itself"),
                (_edit_path(x0, schedule, steps, seed, start="noise", **guided),
                 "SDEdit starts from x0 noised to step steps - 1 (q_sample), not from pure noise: that would make a "
                 "new digit that ignores x0"),
                (_edit_path(x0, schedule, steps, seed, last_noise=True, **guided), LAST_NOISE),
                (_edit_path(x0, schedule, steps, seed, stochastic=False, **guided), NO_NOISE)]
    if steps < schedule.num_steps:
        mistakes.append((_edit_path(x0, schedule, steps, seed, start="late", **guided),
                         "you noised x0 to step `steps`: the first reverse step is t = steps - 1, so noise x0 to "
                         "that step, q_sample(x0, steps - 1, eps, schedule)"))
    return mistakes


def _edit_inputs(num_images: int, num_steps: int, seed: int) -> tuple[DDPMSchedule, torch.Tensor, dict]:
    schedule = DDPMSchedule(num_steps)
    x0 = random_images(num_images, seed + 1)
    return schedule, x0, {"x0": x0, "model_seed": seed, "generator_seed": seed, **_tables(schedule)}


def sdedit_case(num_images: int, num_steps: int, steps: int, seed: int) -> tuple[dict, dict]:
    schedule, x0, inputs = _edit_inputs(num_images, num_steps, seed)
    expected = _recorded_path(lambda model: STAGE.answers.sdedit(model, schedule, x0, steps, generator(seed)), seed,
                              num_images)
    return {**inputs, "steps": steps}, {**expected, "mistakes": _edit_mistakes(x0, schedule, steps, seed)}


def guided_edit_case(num_images: int, num_steps: int, steps: int, guidance: float, seed: int) -> tuple[dict, dict]:
    schedule, x0, inputs = _edit_inputs(num_images, num_steps, seed)
    labels = check_labels(num_images, seed + 2)
    classes = torch.nn.functional.one_hot(labels, NUM_CLASSES).float()
    expected = _recorded_path(lambda model: STAGE.answers.guided_edit(model, schedule, x0, labels, steps, guidance,
                                                                      generator(seed)), seed, num_images)
    mistakes = _edit_mistakes(x0, schedule, steps, seed, classes=classes, guidance=guidance)
    for scale, hint in ((1.0, "your edit follows guidance 1, the plain conditional model: pass the `guidance` "
                              "argument to guided_eps"),
                        (5.0, "your edit follows guidance 5: pass the `guidance` argument to guided_eps, not a fixed "
                              "value"),
                        (0.0, "your edit follows guidance 0, the unconditional model (plain SDEdit): pass the "
                              "`guidance` argument to guided_eps")):
        if scale != guidance:
            mistakes.append((_edit_path(x0, schedule, steps, seed, classes=classes, guidance=scale), hint))
    return {**inputs, "labels": labels, "steps": steps, "guidance": guidance}, {**expected, "mistakes": mistakes}


def _inpaint_path(x0: torch.Tensor, mask: torch.Tensor, schedule, seed: int, *, known: str = "noised",
                  inverted: bool = False, paste: bool = True, z_first: bool = False) -> torch.Tensor:
    """Inpainting with one known mistake: the images the model gets at every step and the result, stacked
    (T + 1, N, 1, 28, 28). ``known``: what replaces the known pixels before each step, "noised" (x0 noised to
    step t: right), "clean" (x0) or "none"; "after" replaces them after each step, by x0 noised to step t - 1."""
    g, n, num_steps = generator(seed), len(x0), schedule.num_steps
    keep = 1 - mask if inverted else mask
    x = torch.randn(x0.shape, generator=g)
    model, frames = _model(seed).eval(), []
    with torch.no_grad():
        for t in reversed(range(num_steps)):
            z = torch.randn(x.shape, generator=g) if z_first and t > 0 else None
            if known in ("noised", "clean"):
                x = keep * (_noised(x0, t, schedule, g) if known == "noised" else x0) + (1 - keep) * x
            frames.append(x)
            eps = model(x, torch.full((n,), t / num_steps), torch.zeros(n, NUM_CLASSES))
            if not z_first and t > 0:
                z = torch.randn(x.shape, generator=g)
            x = DDPM.answers.ddpm_step(x, eps, t, schedule, z)
            if known == "after":
                x = keep * (_noised(x0, t - 1, schedule, g) if t > 0 else x0) + (1 - keep) * x
    result = keep * x0 + (1 - keep) * x if paste else x
    return torch.stack(frames + [result])


def inpaint_case(num_images: int, num_steps: int, seed: int) -> tuple[dict, dict]:
    schedule, x0, inputs = _edit_inputs(num_images, num_steps, seed)
    mask = (torch.rand((num_images, *IMAGE), generator=generator(seed + 2)) < 0.5).float()
    expected = _recorded_path(lambda model: STAGE.answers.inpaint(model, schedule, x0, mask, generator(seed)), seed,
                              num_images)

    def path(**mistake) -> torch.Tensor:
        return _inpaint_path(x0, mask, schedule, seed, **mistake)

    mistakes = [(path(known="none"), "replace the known pixels at every step t, before the estimate: x = mask * "
                                     "q_sample(x0, t, eps, schedule) + (1 - mask) * x"),
                (path(known="clean"), "replace the known pixels by x0 noised to step t (q_sample with a fresh eps), "
                                      "not by x0 itself: the rest of x_t is noisy at level t, and the known part must "
                                      "match it"),
                (path(inverted=True), "the mask is 1 where the pixel is known: mask * known + (1 - mask) * x"),
                (path(known="after"), "replace the known pixels at the start of each step t, before the estimate, "
                                      "by x0 noised to step t (not after the step)"),
                (path(z_first=True), "draw in this order at each step: the forward noise of the known pixels, then, "
                                     "after the estimate, z"),
                (path(paste=False), "after the last step put the known pixels back: mask * x0 + (1 - mask) * x")]
    return {**inputs, "mask": mask}, {**expected, "mistakes": mistakes}
