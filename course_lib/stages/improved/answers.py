"""Answers of stage 6 (``06_improved_unet``, optional): the sinusoidal time embedding and single-head
self-attention over the positions of a feature map, written with matrix products."""

from __future__ import annotations

import math

import torch
from torch import nn

from ...improved_unet import group_norm


def sinusoidal_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Transformer-style embedding of times ``t`` (N,) as (N, dim), dim even: ``[sin(t w_0) .. sin(t w_{h-1}),
    cos(t w_0) .. cos(t w_{h-1})]`` with h = dim // 2 and frequencies ``w_i = 10000 ** (-i / h)``."""
    half = dim // 2
    frequencies = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    angles = t.float()[:, None] * frequencies[None, :]
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)


class SelfAttention(nn.Module):
    """Single-head self-attention over the H*W positions of a feature map, with a residual connection.

    ``forward(x)``: x (N, C, H, W) -> x + out(softmax(q k^T / sqrt(C)) v), where q, k, v are the Linear maps
    ``query``, ``key``, ``value`` of the GroupNorm-ed features at each position, as rows (N, H*W, C).
    """

    def __init__(self, channels: int):
        super().__init__()
        self.norm = group_norm(channels)
        self.query = nn.Linear(channels, channels)
        self.key = nn.Linear(channels, channels)
        self.value = nn.Linear(channels, channels)
        self.out = nn.Linear(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        tokens = self.norm(x).flatten(2).transpose(1, 2)  # (N, HW, C)
        q, k, v = self.query(tokens), self.key(tokens), self.value(tokens)
        weights = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(c), dim=-1)  # (N, HW, HW), rows sum to 1
        attended = self.out(weights @ v)  # (N, HW, C)
        return x + attended.transpose(1, 2).reshape(n, c, h, w)
