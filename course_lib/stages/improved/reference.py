"""The reference side of the checks of the optional stage 6 (``06_improved_unet``): for each case, the inputs and what the answers give on
them, with the outputs of known mistakes for the hints.

It needs the answers and spells out mistakes, so it never leaves the grader: no student package and no grading
kernel has this file (see :mod:`course_lib.stages.stage`).
"""

from __future__ import annotations

import math

import torch

from ...checks.harness import generator, reference_weights
from . import STAGE


def _embedding_variant(t: torch.Tensor, dim: int, frequencies=None, order: str = "sin_cos") -> torch.Tensor:
    half = dim // 2
    w = frequencies if frequencies is not None else 10000.0 ** (-torch.arange(half, dtype=torch.float64) / half)
    angles = t.double()[:, None] * w[None, :]
    sin, cos = torch.sin(angles), torch.cos(angles)
    if order == "interleaved":
        return torch.stack([sin, cos], dim=2).flatten(1).float()
    return torch.cat([sin, cos] if order == "sin_cos" else [cos, sin], dim=1).float()


def embedding_case(num_times: int, dim: int, seed: int) -> tuple[dict, dict]:
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
    return {"t": t, "dim": dim}, {"embedding": STAGE.answers.sinusoidal_embedding(t, dim).float(),
                                  "mistakes": mistakes}


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


def attention_case(channels: int, height: int, width: int, batch_size: int, seed: int) -> tuple[dict, dict]:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        reference = STAGE.answers.SelfAttention(channels).eval()
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
