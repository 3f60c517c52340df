"""Checks for the optional stage 6 (``06_improved_unet``): the sinusoidal time embedding and self-attention.

Each check (three parts, see :mod:`course_lib.checks.protocol`) builds seeded inputs, runs the student's code on
them, compares with the stage's answers on identical inputs (the same times; the same weights, copied into the
student's module) and names the likely mistake. The attention check also tests a property that holds whatever the
weights: attention has no notion of where a position is, so permuting the H*W positions of the input permutes
those of the output in the same way.

The probe and the judge of each check are here; its reference side, which builds the inputs and expected values
with the answers, is in ``reference.py`` beside this file (read through ``REFERENCE``), which only the grader has.
"""

from __future__ import annotations

import torch

from ...checks.harness import (CheckFailed, close, compare, expect_close, load_weights, matching_hint, recorded,
                               recorded_tensor, run_student)
from ...checks.devices import device_run, module_device_run
from ...checks.protocol import check
from ..stage import ReferenceCase
from . import STAGE


REFERENCE = ReferenceCase(STAGE)

EMBEDDING_HINT = ("with h = dim // 2 and w_i = 10000 ** (-i / h) for i = 0 .. h-1, return "
                  "torch.cat([sin(t[:, None] * w), cos(t[:, None] * w)], dim=1)")


def _embedding_probe(sinusoidal_embedding, *, inputs: dict) -> dict:
    t = inputs["t"].clone()
    got = run_student("sinusoidal_embedding", sinusoidal_embedding, t, inputs["dim"])
    return {"embedding": recorded(got), "t_after": t}


def _embedding_judge(case: dict, inputs: dict, outputs: dict, expected: dict) -> str:
    if not torch.equal(outputs["t_after"], inputs["t"]):
        raise CheckFailed("sinusoidal_embedding changed its input t in place: compute a new tensor, keep t as it is")
    shape = (case["num_times"], case["dim"])
    got = recorded_tensor("sinusoidal_embedding(t, dim)", outputs["embedding"], shape).float()
    if not close(got, expected["embedding"], atol=1e-4, rtol=1e-4) and got.shape[1] >= 2:
        half = case["dim"] // 2
        norms = got[:, :half].square() + got[:, half:].square()
        if matching_hint(got, expected["mistakes"]) is None and not close(norms, torch.ones_like(norms), 1e-3, 0):
            raise CheckFailed("each pair (sin(t w_i), cos(t w_i)) should have sin^2 + cos^2 = 1, yours does not: the "
                              "first h = dim // 2 columns are sines, the last h cosines of the same angles; "
                              f"{EMBEDDING_HINT}")
    tiny = inputs["t"] < 0.01  # at large t, a mistake with huge angles is only known up to float32's rounding
    if not close(got, expected["embedding"], atol=1e-4, rtol=1e-4):
        hint = matching_hint(got, expected["mistakes"]) or next(
            (hint for wrong, hint in expected["mistakes"]
             if close(got[tiny], wrong[tiny]) and not close(wrong[tiny], expected["embedding"][tiny])), None)
        expect_close("embedding", got, expected["embedding"], hint or EMBEDDING_HINT, atol=1e-4, rtol=1e-4)
    return (f"sinusoidal_embedding: {case['num_times']} times in [0, 1000) to {case['dim']} numbers each, "
            "as the reference")


def _embedding_devices(sinusoidal_embedding, *, inputs: dict) -> str | None:
    return device_run("sinusoidal_embedding", sinusoidal_embedding, inputs["t"].clone(), inputs["dim"], holder="t",
                      where="t.device")


@check(reference=REFERENCE.embedding_case, probe=_embedding_probe, judge=_embedding_judge,
       devices=_embedding_devices)
def check_sinusoidal_embedding(sinusoidal_embedding, num_times: int = 6, dim: int = 16, seed: int = 0):
    """Check ``sinusoidal_embedding(t, dim)`` on ``num_times`` >= 3 float times in [0, 1000)
    (the first 0, 0.001, 0.0025)
    against the reference, (num_times, dim)."""


ATTENTION_HINT = ("tokens = self.norm(x) as rows (N, H*W, C) (flatten(2), then transpose(1, 2)); q, k, v = "
                  "self.query(tokens), self.key(tokens), self.value(tokens); weights = softmax(q @ k^T / sqrt(C), "
                  "dim=-1); return x + self.out(weights @ v), turned back into (N, C, H, W)")


ATTENTION_NAMES = "keep the given __init__ (norm, query, key, value, out) as it is"


def _permuted(x: torch.Tensor, permutation: torch.Tensor) -> torch.Tensor:
    """``x`` (N, C, H, W) with its H*W positions reordered by ``permutation``."""
    return x.flatten(2)[:, :, permutation].reshape(x.shape)


def _attention_probe(cls, *, inputs: dict) -> dict:
    block = run_student("SelfAttention", cls, inputs["channels"])
    load_weights(block, inputs["weights"], inputs["num_parameters"], "SelfAttention", ATTENTION_NAMES)
    run_student("SelfAttention.eval", block.eval)
    x = inputs["x"].clone()
    with torch.no_grad():
        output = run_student("SelfAttention.forward", block, x)
        permuted = run_student("SelfAttention.forward", block, _permuted(inputs["x"], inputs["permutation"]))
    return {"output": recorded(output), "permuted": recorded(permuted), "x_after": x}


def _attention_judge(case: dict, inputs: dict, outputs: dict, expected: dict) -> str:
    x = inputs["x"]
    if not torch.equal(outputs["x_after"], x):
        raise CheckFailed("SelfAttention.forward changed its input x in place: return x + ..., do not use += on x")
    shape = tuple(x.shape)
    got = recorded_tensor("SelfAttention output", outputs["output"], shape)
    permuted = recorded_tensor("SelfAttention output on permuted positions", outputs["permuted"], shape)
    if not close(got, expected["output"], 1e-4, 1e-4) and matching_hint(got, expected["mistakes"]) is None:
        if not close(permuted, _permuted(got, inputs["permutation"]), 1e-4, 1e-4):
            raise CheckFailed("shuffling the H*W positions of the input should shuffle the output's positions in the "
                              "same way (attention does not know where a position is), yours does not: treat each "
                              f"position as one row of C features and mix positions only through the weights; "
                              f"{ATTENTION_HINT}")
    compare("output", got, expected["output"], expected["mistakes"], ATTENTION_HINT, atol=1e-4, rtol=1e-4)
    if not close(permuted, _permuted(got, inputs["permutation"]), 1e-4, 1e-4):
        raise CheckFailed("your output is right, but on the same positions shuffled it is not the shuffled output: "
                          "does forward depend on anything besides x?")
    return (f"SelfAttention({case['channels']}) on {case['batch_size']} maps of {case['height']}x{case['width']}: "
            "as the reference, and it permutes with the positions")


def _attention_devices(cls, *, inputs: dict) -> str | None:
    return module_device_run("SelfAttention", lambda: cls(inputs["channels"]), inputs["x"].clone(), holder="x",
                             where="x.device")


@check(reference=REFERENCE.attention_case, probe=_attention_probe, judge=_attention_judge,
       devices=_attention_devices)
def check_self_attention(cls, channels: int = 8, height: int = 7, width: int = 7, batch_size: int = 3, seed: int = 0):
    """Check ``cls(channels)``: with a seeded reference's weights (the given ``__init__`` names them), its output
    on random maps (batch_size, channels, height, width) matches the reference's, and shuffling the positions of the
    input shuffles those of the output alike."""
