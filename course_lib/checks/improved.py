"""Checks for the optional stage 6 (``06_improved_unet``): the sinusoidal time embedding and self-attention.

Each check (three parts, see :mod:`course_lib.checks.protocol`) builds seeded inputs, runs the student's code on
them, compares with the stage's answers on identical inputs (the same times; the same weights, copied into the
student's module) and names the likely mistake. The attention check also tests a property that holds whatever the
weights: attention has no notion of where a position is, so permuting the H*W positions of the input permutes
those of the output in the same way.
"""

from __future__ import annotations

import math

import torch

from .. import answers
from .harness import (CheckFailed, close, compare, expect_close, generator, load_weights, matching_hint, recorded,
                      recorded_tensor, reference_weights, run_student)
from .protocol import check








# ------------------------------------------------------------------------------------ sinusoidal_embedding

EMBEDDING_HINT = ("with h = dim // 2 and w_i = 10000 ** (-i / h) for i = 0 .. h-1, return "
                  "torch.cat([sin(t[:, None] * w), cos(t[:, None] * w)], dim=1)")


def _embedding_variant(t: torch.Tensor, dim: int, frequencies=None, order: str = "sin_cos") -> torch.Tensor:
    half = dim // 2
    w = frequencies if frequencies is not None else 10000.0 ** (-torch.arange(half, dtype=torch.float64) / half)
    angles = t.double()[:, None] * w[None, :]
    sin, cos = torch.sin(angles), torch.cos(angles)
    if order == "interleaved":
        return torch.stack([sin, cos], dim=2).flatten(1).float()
    return torch.cat([sin, cos] if order == "sin_cos" else [cos, sin], dim=1).float()


def _embedding_reference(num_times: int, dim: int, seed: int) -> tuple[dict, dict]:
    if dim % 2 or dim < 4:
        raise ValueError(f"`dim` must be even and at least 4, got {dim}")
    if num_times < 3:
        raise ValueError(f"`num_times` must be at least 3 (the check includes t = 0 and two tiny times), "
                         f"got {num_times}")
    t = torch.rand(num_times, generator=generator(seed)) * 1000
    t[0], t[1], t[2] = 0.0, 1e-3, 2.5e-3  # tiny times: wrong frequencies give angles float32 still computes exactly
    half = dim // 2
    i = torch.arange(half, dtype=torch.float64)
    mistakes = [
        (_embedding_variant(t, dim, order="cos_sin"), "the cosines come second: torch.cat([sin, cos], dim=1)"),
        (_embedding_variant(t, dim, order="interleaved"),
         "sin and cos are interleaved: put all the sines first, then all the cosines (torch.cat, not torch.stack)"),
        (_embedding_variant(t, dim, 10000.0 ** (i / half)),
         "your frequencies grow with i: w_i = 10000 ** (-i / h) falls from 1 to almost 1/10000"),
        (_embedding_variant(t, dim, 10000.0 ** (-i / max(half - 1, 1))),
         "divide by h = dim // 2, not h - 1: w_i = 10000 ** (-i / h)"),
        (_embedding_variant(t, dim, 10000.0 ** (-i / dim)),
         "divide the exponent by h = dim // 2, not by dim: w_i = 10000 ** (-i / h)"),
        (_embedding_variant(t, dim, torch.exp(-4.0 * i / half)),
         "exp(-log(10000) * i / h) needs the natural log, math.log(10000.0), not log10"),
    ]
    return {"t": t, "dim": dim}, {"embedding": answers.load("improved").sinusoidal_embedding(t, dim).float(),
                                  "mistakes": mistakes}


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


@check(reference=_embedding_reference, probe=_embedding_probe, judge=_embedding_judge)
def check_sinusoidal_embedding(sinusoidal_embedding, num_times: int = 6, dim: int = 16, seed: int = 0):
    """Check ``sinusoidal_embedding(t, dim)`` on ``num_times`` >= 3 float times in [0, 1000)
    (the first 0, 0.001, 0.0025)
    against the reference, (num_times, dim)."""


# ------------------------------------------------------------------------------------------- SelfAttention

ATTENTION_HINT = ("tokens = self.norm(x) as rows (N, H*W, C) (flatten(2), then transpose(1, 2)); q, k, v = "
                  "self.query(tokens), self.key(tokens), self.value(tokens); weights = softmax(q @ k^T / sqrt(C), "
                  "dim=-1); return x + self.out(weights @ v), turned back into (N, C, H, W)")
ATTENTION_NAMES = "keep the given __init__ (norm, query, key, value, out) as it is"


def _attention_variant(module, x: torch.Tensor, *, scale=None, softmax_dim: int = -1, residual: bool = True,
                       normalise: bool = True, as_view: bool = False) -> torch.Tensor:
    """The attention block with one known mistake, from the reference module's layers."""
    n, c, h, w = x.shape
    features = module.norm(x) if normalise else x
    tokens = features.reshape(n, h * w, c) if as_view else features.flatten(2).transpose(1, 2)
    q, k, v = module.query(tokens), module.key(tokens), module.value(tokens)
    scores = q @ k.transpose(1, 2) / (math.sqrt(c) if scale is None else scale)
    out = module.out(torch.softmax(scores, dim=softmax_dim) @ v)
    out = out.reshape(n, c, h, w) if as_view else out.transpose(1, 2).reshape(n, c, h, w)
    return x + out if residual else out


def _attention_reference(channels: int, height: int, width: int, batch_size: int, seed: int) -> tuple[dict, dict]:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        reference = answers.load("improved").SelfAttention(channels).eval()
        with torch.no_grad():  # sharper attention than at initialisation, so that every mistake shows
            for layer in (reference.query, reference.key):
                layer.weight.mul_(4.0)
            reference.norm.weight.uniform_(0.5, 1.5)
            reference.norm.bias.normal_(0.0, 0.2)
    g = generator(seed)
    x = torch.randn((batch_size, channels, height, width), generator=g)
    permutation = torch.randperm(height * width, generator=g)
    with torch.no_grad():
        output = reference(x)
        mistakes = [
            (_attention_variant(reference, x, scale=1.0), "divide the scores q @ k^T by sqrt(C) before the softmax"),
            (_attention_variant(reference, x, scale=float(channels)), "divide the scores by sqrt(C), not by C"),
            (_attention_variant(reference, x, scale=math.sqrt(height * width)),
             "divide the scores by sqrt(C), the channels, not by the square root of the number of positions"),
            (_attention_variant(reference, x, softmax_dim=1),
             "take the softmax over the keys (dim=-1): each query's weights over the positions must sum to 1"),
            (_attention_variant(reference, x, residual=False), "add the input back: return x + attention output"),
            (_attention_variant(reference, x, normalise=False),
             "apply self.norm to x before the query, key and value maps (but add the un-normalised x back)"),
            (_attention_variant(reference, x, as_view=True),
             "x.reshape(N, H*W, C) mixes channels and positions: flatten to (N, C, H*W), then transpose(1, 2)"),
        ]
    inputs = {"channels": channels, "x": x, "permutation": permutation, **reference_weights(reference)}
    return inputs, {"output": output, "mistakes": mistakes}


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


@check(reference=_attention_reference, probe=_attention_probe, judge=_attention_judge)
def check_self_attention(cls, channels: int = 8, height: int = 7, width: int = 7, batch_size: int = 3, seed: int = 0):
    """Check ``cls(channels)``: with a seeded reference's weights (the given ``__init__`` names them), its output
    on random maps (batch_size, channels, height, width) matches the reference's, and shuffling the positions of the
    input shuffles those of the output alike."""
