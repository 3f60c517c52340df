"""Checks for stage 4 (class conditioning and classifier-free guidance): label dropout, the class-conditional
UNet and the guided noise estimate.

Every check runs the student's code with the reference forbidden,
compares it with :mod:`course_lib` on identical seeded inputs and names the likely mistake.
"""

from __future__ import annotations

import torch

from .. import answers, objectives
from ..models import ClassConditionalUNet, UNetBody
from .conditional_unets import unet_mutants
from .harness import (IMAGE, CheckFailed, Spy, expect_close, expect_tensor, first_match, forbid, generator,
                      load_reference_weights, passed, run_student, scramble_weights, single_threaded)

cfg_answers = answers.load("cfg")

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


def _drop(fn, c: torch.Tensor, p_uncond: float, seed: int) -> torch.Tensor:
    """Run the student's dropout on a copy of ``c``; fail if it changed its input or returned a wrong shape."""
    given = c.clone()
    with forbid(cfg_answers.drop_labels, cfg_answers.class_conditional_loss):
        got = run_student("drop_labels", fn, given, p_uncond, generator(seed))
    if not torch.equal(given, c):
        raise CheckFailed("your drop_labels changed c in place: return a new tensor (e.g. c * keep[:, None])")
    return expect_tensor("dropped c", got, c.shape)


@single_threaded
def check_drop_labels(fn, batch_size: int = 64, p_uncond: float = 0.1, seed: int = 0) -> None:
    """``fn(c, p_uncond, generator)`` zeroes whole rows of one-hot ``c`` exactly as the reference does."""
    c = one_hot_batch(batch_size, seed + 1)
    got = _drop(fn, c, p_uncond, seed)
    kept = (got == c).all(1)
    dropped = (got == 0).all(1)
    if not (kept | dropped).all():
        raise CheckFailed("drop whole rows: each row of the result is either the one-hot row unchanged or all zeros")
    expected = cfg_answers.drop_labels(c, p_uncond, generator(seed))
    if not torch.equal(got, expected):
        inverted = c * (torch.rand(batch_size, generator=generator(seed)) < p_uncond)[:, None].float()
        hint = ("you kept the rows that should be dropped: a row becomes zeros with probability p_uncond, "
                "so keep it when u >= p_uncond" if torch.equal(got, inverted) else DROP_HINT)
        raise CheckFailed(f"your drop_labels zeroed {int(dropped.sum())} of {batch_size} rows, the reference "
                          f"{int((expected == 0).all(1).sum())} (rows {_rows(dropped)} against "
                          f"{_rows((expected == 0).all(1))}): {hint}")
    for p, what in ((0.0, "none"), (1.0, "all")):
        if not torch.equal(_drop(fn, c, p, seed), c * (1 - p)):
            raise CheckFailed(f"with p_uncond = {p:g} your drop_labels should zero {what} of the rows: {DROP_HINT}")
    passed(f"drop_labels matches the reference ({batch_size} rows, p_uncond = {p_uncond:g}, and p_uncond = 0 and 1)")


def _rows(mask: torch.Tensor) -> str:
    """The first few indices where ``mask`` is true, for a message."""
    rows = mask.nonzero().flatten().tolist()
    return "[" + ", ".join(map(str, rows[:6])) + (", ...]" if len(rows) > 6 else "]")


CFG_NAMES = ("name the layers as in the docstring: conv_in, down1, down2, flatten, unflatten, up1, up2, conv_out, "
             "head, t1 = FCBlock(1, 2D), t2 = FCBlock(1, D), c1 = FCBlock(10, 2D), c2 = FCBlock(10, D)")


@single_threaded
def check_class_conditional_unet(cls, num_hiddens: int = 8, batch_size: int = 4, seed: int = 0) -> None:
    """``cls(in_channels=1, num_classes=10, num_hiddens=D)`` with ``forward(x, t, c)`` matches the reference
    (same weights), including a row with no class."""
    reference = scramble_weights(ClassConditionalUNet(1, NUM_CLASSES, num_hiddens), seed).eval()
    g = generator(seed)
    x = torch.randn((batch_size, *IMAGE), generator=g)
    t = torch.rand(batch_size, generator=g)
    c = one_hot_batch(batch_size, seed + 1, with_empty_row=True)
    other_c = one_hot_batch(batch_size, seed + 2)
    with torch.no_grad():
        expected = reference(x, t, c)
    with forbid(ClassConditionalUNet, UNetBody):
        model = run_student("ClassConditionalUNet", cls, in_channels=1, num_classes=NUM_CLASSES,
                            num_hiddens=num_hiddens)
        load_reference_weights(model, reference, "ClassConditionalUNet", CFG_NAMES)
        model.eval()
        with torch.no_grad():
            got = run_student("ClassConditionalUNet.forward", model, x, t, c)
            with_other_c = run_student("ClassConditionalUNet.forward", model, x, t, other_c)
    expect_tensor("predicted noise", got, (batch_size, *IMAGE))
    if torch.allclose(got, with_other_c):
        raise CheckFailed("your output does not depend on c: multiply the Unflatten output by c1(c) and the first "
                          "UpBlock's output by c2(c)")
    hint = first_match(got, unet_mutants(reference, x, t, c))
    expect_close("predicted noise", got, expected, hint or "unflatten = c1 * unflatten + t1 and up1 = c2 * up1 + t2, "
                 "with each FCBlock output reshaped to (N, F, 1, 1)")
    passed(f"ClassConditionalUNet(num_hiddens={num_hiddens}) gives the reference output for {batch_size} images")


GUIDANCE_BATCH_HINT = ("compute both predictions in ONE forward pass: model(torch.cat([x_t, x_t]), torch.cat([t, t]), "
                       "torch.cat([c, torch.zeros_like(c)])), then split the result with .chunk(2)")


def _guided_atol(guidance: float) -> float:
    """The absolute tolerance of a guided estimate: float32 rounding of the two estimates, amplified by gamma
    (a batched forward pass and two separate ones differ by about 1e-6)."""
    return 1e-5 * (1 + abs(guidance))


@single_threaded
def check_guided_eps(fn, batch_size: int = 3, guidance: float = 5.0, seed: int = 0) -> None:
    """``fn(model, x_t, t, c, guidance)`` returns eps_u + guidance (eps_c - eps_u) from one batched forward pass."""
    model = scramble_weights(ClassConditionalUNet(1, NUM_CLASSES, 4), seed).eval()
    g = generator(seed)
    x_t = torch.randn((batch_size, *IMAGE), generator=g)
    t = torch.rand(batch_size, generator=g)
    c = one_hot_batch(batch_size, seed + 1)
    with torch.no_grad():
        eps_c, eps_u = model(x_t, t, c), model(x_t, t, torch.zeros_like(c))

    def guided(scale: float) -> torch.Tensor:
        spy = Spy(model)
        with forbid(cfg_answers.guided_eps, cfg_answers.cfg_sample), torch.no_grad():
            got = run_student("guided_eps", fn, spy, x_t, t, c, scale)
        if len(spy.calls) != 1 or spy.calls[0]["x"].shape[0] != 2 * batch_size:
            sizes = [call["x"].shape[0] for call in spy.calls]
            raise CheckFailed(f"your guided_eps called the model {len(spy.calls)} times with batches of {sizes}: "
                              + GUIDANCE_BATCH_HINT)
        given_c = spy.calls[0]["c"]
        if int((given_c == 0).all(1).sum()) != batch_size:
            raise CheckFailed("half of the batched forward pass must be unconditional, with c = zeros: "
                              + GUIDANCE_BATCH_HINT)
        return expect_tensor("guided eps", got, x_t.shape)

    got = guided(guidance)
    hint = first_match(got, {
        "you swapped eps_cond and eps_uncond: eps = eps_uncond + gamma (eps_cond - eps_uncond)":
            lambda: eps_c + guidance * (eps_u - eps_c),
        "start from the unconditional prediction: eps = eps_uncond + gamma (eps_cond - eps_uncond)":
            lambda: eps_c + guidance * (eps_c - eps_u)})
    expect_close(f"guided eps at guidance {guidance:g}", got, eps_u + guidance * (eps_c - eps_u),
                 hint or "eps = eps_uncond + gamma (eps_cond - eps_uncond)", atol=_guided_atol(guidance))
    for scale, meaning in ((0.0, "the unconditional prediction eps_u (c = zeros)"),
                           (1.0, "the conditional prediction eps_c")):
        expect_close(f"guided eps at guidance {scale:g}", guided(scale), eps_u + scale * (eps_c - eps_u),
                     f"with guidance {scale:g} the result must be {meaning}", atol=_guided_atol(scale))
    passed(f"guided_eps matches eps_u + gamma (eps_c - eps_u) at gamma = 0, 1 and {guidance:g}, in one forward pass")
