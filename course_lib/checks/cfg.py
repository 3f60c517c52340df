"""Checks for stage 4 (class conditioning and classifier-free guidance): label dropout, the class-conditional
UNet and the guided noise estimate.

Each check (three parts, see :mod:`course_lib.checks.protocol`) builds seeded inputs, runs the student's code on
them, compares with the stage's answers on identical inputs and names the likely mistake. The guided estimate
runs on a given seeded model (:class:`~course_lib.checks.harness.TinyNoisePredictor`), so that the student's
side never needs a reference network.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from .. import answers, models, objectives
from .harness import (IMAGE, CheckFailed, Spy, TinyNoisePredictor, close, expect_close, expect_tensor, generator,
                      load_weights, reference_weights, run_student, scramble_weights)
from .protocol import check

NUM_CLASSES = 10
DROP_HINT = ("draw u = torch.rand(N, generator=generator, device=c.device), one number per row, and set row i to "
             "zeros when u[i] < p_uncond")


def one_hot_batch(batch_size: int, seed: int, with_empty_row: bool = False) -> torch.Tensor:
    """Random one-hot classes (batch_size, 10); the last row all zeros ("no class") if asked."""
    labels = torch.randint(0, NUM_CLASSES, (batch_size,), generator=generator(seed))
    c = objectives.one_hot(labels, NUM_CLASSES)
    if with_empty_row:
        c[-1] = 0
    return c


# ------------------------------------------------------------------------------------- shared by the parts


def _attempt(run: Callable[[], dict]) -> dict:
    """``run()``, or ``{"failed": message}`` when the student's code failed: the judge reports it in its turn."""
    try:
        return run()
    except CheckFailed as failure:
        return {"failed": str(failure)}


def _recorded(value):
    """What a probe records of a returned value: a detached tensor, or the name of the type that came instead."""
    if isinstance(value, torch.Tensor):
        return value.detach()
    return {"not_a_tensor": type(value).__name__}


def _returned(name: str, value, shape) -> torch.Tensor:
    """Fail unless the recorded ``value`` is a floating tensor of ``shape`` (see :func:`_recorded`)."""
    if isinstance(value, dict) and "not_a_tensor" in value:
        raise CheckFailed(f"{name} should be a torch.Tensor, got {value['not_a_tensor']}")
    return expect_tensor(name, value, shape)


def _succeeded(result) -> dict:
    """A result of :func:`_attempt`, after raising the failure it recorded."""
    if "failed" in result:
        raise CheckFailed(str(result["failed"]))
    return result


def _matching_hint(got: torch.Tensor, mistakes) -> str | None:
    """The hint of the first stored ``(tensor, hint)`` mistake that ``got`` reproduces."""
    return next((hint for wrong, hint in mistakes if close(got, wrong)), None)


# ------------------------------------------------------------------------------------------- drop_labels


def _drop_labels_reference(batch_size: int, p_uncond: float, seed: int) -> tuple[dict, dict]:
    c = one_hot_batch(batch_size, seed + 1)
    expected = answers.load("cfg").drop_labels(c, p_uncond, generator(seed))
    inverted = c * (torch.rand(batch_size, generator=generator(seed)) < p_uncond)[:, None].float()
    return {"c": c, "p_uncond": p_uncond, "seed": seed}, {"dropped": expected, "inverted": inverted}


def _drop_labels_probe(drop_labels, *, inputs: dict) -> dict:
    c = inputs["c"]

    def drop(p: float) -> dict:
        given = c.clone()
        got = run_student("drop_labels", drop_labels, given, p, generator(inputs["seed"]))
        return {"dropped": _recorded(got), "c_after": given}

    return {"runs": [_attempt(lambda p=p: drop(p)) for p in (inputs["p_uncond"], 0.0, 1.0)]}


def _dropped(run, c: torch.Tensor) -> torch.Tensor:
    """The student's result of one recorded run, after the checks every run must pass."""
    run = _succeeded(run)
    if not torch.equal(run["c_after"], c):
        raise CheckFailed("your drop_labels changed c in place: return a new tensor (e.g. c * keep[:, None])")
    return _returned("dropped c", run["dropped"], c.shape)


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


@check(reference=_drop_labels_reference, probe=_drop_labels_probe, judge=_drop_labels_judge)
def check_drop_labels(fn, batch_size: int = 64, p_uncond: float = 0.1, seed: int = 0):
    """Check that ``fn(c, p_uncond, generator)`` zeroes whole rows of one-hot ``c`` exactly as the reference does.

    ``c`` holds ``batch_size`` random one-hot rows; both functions draw from a generator seeded with ``seed``.
    The check also runs ``fn`` with p_uncond = 0 (no row dropped) and 1 (every row dropped), and fails if it
    changes ``c`` in place.
    """


# ----------------------------------------------------------------------------------- ClassConditionalUNet

CFG_NAMES = ("name the layers as in the docstring: conv_in, down1, down2, flatten, unflatten, up1, up2, conv_out, "
             "head, t1 = FCBlock(1, 2D), t2 = FCBlock(1, D), c1 = FCBlock(10, 2D), c2 = FCBlock(10, D)")


def _unet_reference(num_hiddens: int, batch_size: int, seed: int) -> tuple[dict, dict]:
    from .conditional_unets import unet_mutants  # reference side only: it runs the reference UNet's layers

    reference = scramble_weights(models.ClassConditionalUNet(1, NUM_CLASSES, num_hiddens), seed).eval()
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
    return {"noise": _recorded(got), "noise_other_c": _recorded(with_other_c)}


def _unet_judge(case: dict, inputs: dict, outputs: dict, expected: dict) -> str:
    shape = (case["batch_size"], *IMAGE)
    got = _returned("predicted noise", outputs["noise"], shape)
    with_other_c = _returned("predicted noise", outputs["noise_other_c"], shape)
    if torch.allclose(got, with_other_c):
        raise CheckFailed("your output does not depend on c: multiply the Unflatten output by c1(c) and the first "
                          "UpBlock's output by c2(c)")
    hint = _matching_hint(got, expected["mistakes"])
    expect_close("predicted noise", got, expected["noise"], hint or "unflatten = c1 * unflatten + t1 and "
                 "up1 = c2 * up1 + t2, with each FCBlock output reshaped to (N, F, 1, 1)")
    return (f"ClassConditionalUNet(num_hiddens={case['num_hiddens']}) gives the reference output for "
            f"{case['batch_size']} images")


@check(reference=_unet_reference, probe=_unet_probe, judge=_unet_judge)
def check_class_conditional_unet(cls, num_hiddens: int = 8, batch_size: int = 4, seed: int = 0):
    """Check ``cls(in_channels=1, num_classes=10, num_hiddens=D)`` with ``forward(x, t, c)`` against the reference.

    The student's model gets the weights of a seeded reference (matched by name, else in registration order),
    and must give its output in eval mode for ``batch_size`` images, one of them with no class (c = zeros), and
    an output that changes with ``c``.
    """


# --------------------------------------------------------------------------------------------- guided_eps

GUIDANCE_BATCH_HINT = ("compute both predictions in ONE forward pass: model(torch.cat([x_t, x_t]), torch.cat([t, t]), "
                       "torch.cat([c, torch.zeros_like(c)])), then split the result with .chunk(2)")


def _guided_atol(guidance: float) -> float:
    """The absolute tolerance of a guided estimate: float32 rounding of the two estimates, amplified by gamma
    (a batched forward pass and two separate ones differ by about 1e-6)."""
    return 1e-5 * (1 + abs(guidance))


def _guidance_model(seed: int) -> nn.Module:
    """The class-conditional model the guided estimates run on: given code, seeded, in eval mode."""
    return TinyNoisePredictor(seed, num_classes=NUM_CLASSES).eval()


def _guided_reference(batch_size: int, guidance: float, seed: int) -> tuple[dict, dict]:
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
        return {"eps": _recorded(got), "batch_sizes": [int(call["x"].shape[0]) for call in spy.calls],
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
    return _returned("guided eps", run["eps"], shape)


def _guided_judge(case: dict, inputs: dict, outputs: dict, expected: dict) -> str:
    batch_size, guidance = case["batch_size"], case["guidance"]
    shape = tuple(inputs["x_t"].shape)
    runs = outputs["runs"]
    got = _guided(runs[0], batch_size, shape)
    hint = _matching_hint(got, expected["mistakes"])
    expect_close(f"guided eps at guidance {guidance:g}", got, expected["guided"][0],
                 hint or "eps = eps_uncond + gamma (eps_cond - eps_uncond)", atol=_guided_atol(guidance))
    for run, scale, wanted, meaning in zip(runs[1:], (0.0, 1.0), expected["guided"][1:],
                                           ("the unconditional prediction eps_u (c = zeros)",
                                            "the conditional prediction eps_c")):
        expect_close(f"guided eps at guidance {scale:g}", _guided(run, batch_size, shape), wanted,
                     f"with guidance {scale:g} the result must be {meaning}", atol=_guided_atol(scale))
    return f"guided_eps matches eps_u + gamma (eps_c - eps_u) at gamma = 0, 1 and {guidance:g}, in one forward pass"


@check(reference=_guided_reference, probe=_guided_probe, judge=_guided_judge)
def check_guided_eps(fn, batch_size: int = 3, guidance: float = 5.0, seed: int = 0):
    """Check that ``fn(model, x_t, t, c, guidance)`` returns eps_u + guidance (eps_c - eps_u) from one batched
    forward pass.

    ``model`` is a seeded class-conditional noise predictor in eval mode (given code, wrapped to record its
    calls); the check runs ``fn`` at ``guidance`` and at 0 (the unconditional estimate) and 1 (the conditional
    one), each time expecting one call on a batch of 2 * batch_size of which batch_size rows have c = zeros.
    """
