"""The improved UNet of the optional stage 6 (``06_improved_unet``): given code around the student's two pieces.

What changes against stage 3's :class:`~course_lib.models.TimeConditionalUNet` (Berkeley's UNet, the time t/T
through two FCBlocks added at two places):

- **time**: a sinusoidal embedding of the timestep (the student's ``sinusoidal_embedding``), then a small MLP, gives
  one vector per image that every residual block adds to its features: conditioning at every level;
- **class** (optional, ``num_classes``): a one-hot label (a zero row: no label, as in stage 4) through a Linear
  layer, added to the time vector, so it reaches every level too;
- **residual blocks** with GroupNorm and SiLU (:class:`ResidualBlock`) instead of Conv-BatchNorm-GELU stacks;
- **self-attention** at 7x7 (the student's ``SelfAttention``), in the middle of the network;
- max-pooling down and bilinear upsampling up (Radboud's UNet), skip connections concatenated as in stage 2.

The student's pieces are passed in (``embed_time``, ``attention``), so this module needs no answer.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

GROUPS = 8  # GroupNorm's number of groups (fewer when the channels are not a multiple of 8)
TIME_SCALE = 1000.0  # the model gets t / T in [0, 1]; the sinusoids see t / T * 1000, as for T = 1000 steps


def group_norm(channels: int) -> nn.GroupNorm:
    """``nn.GroupNorm`` over ``channels`` with :data:`GROUPS` groups, or the largest divisor of both."""
    return nn.GroupNorm(math.gcd(GROUPS, channels), channels)


class ResidualBlock(nn.Module):
    """GroupNorm, SiLU, 3x3 conv; add the embedding (one shift per channel); GroupNorm, SiLU, 3x3 conv; plus the
    input (through a 1x1 conv when the channel count changes). ``forward(x, emb)``: (N, C_in, H, W), (N, E) ->
    (N, C_out, H, W)."""

    def __init__(self, in_channels: int, out_channels: int, embedding_dim: int):
        super().__init__()
        self.norm1 = group_norm(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.embedding = nn.Linear(embedding_dim, out_channels)
        self.norm2 = group_norm(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.skip = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.embedding(emb)[:, :, None, None]
        h = self.conv2(F.silu(self.norm2(h)))
        return h + self.skip(x)


class ImprovedUNet(nn.Module):
    """Noise predictor ``forward(x, t)`` (or ``forward(x, t, c)`` with ``num_classes``), a drop-in for stage 3's.

    Args:
        embed_time: ``embed_time(t, dim) -> (N, dim)``, the sinusoidal embedding of timesteps (N,).
        attention: ``attention(channels)`` builds a module (N, C, H, W) -> (N, C, H, W), used at 7x7.
        in_channels: image channels (1 for MNIST).
        num_hiddens: D; the levels have D (28x28), 2D (14x14) and 2D (7x7) channels.
        num_classes: with a number, ``forward`` takes a one-hot (or zero) label c (N, num_classes) too.

    Args of ``forward``: x (N, C, 28, 28); t floats (N,), the timestep divided by T, in [0, 1]; c as above.
    Returns the predicted noise (N, C, 28, 28).
    """

    def __init__(self, embed_time: Callable[[torch.Tensor, int], torch.Tensor], attention: Callable[[int], nn.Module],
                 in_channels: int = 1, num_hiddens: int = 64, num_classes: int | None = None):
        super().__init__()
        d, e = num_hiddens, 4 * num_hiddens
        self.embed_time, self.num_hiddens = embed_time, num_hiddens
        self.time_mlp = nn.Sequential(nn.Linear(d, e), nn.SiLU(), nn.Linear(e, e))
        self.label = nn.Linear(num_classes, e, bias=False) if num_classes else None
        self.conv_in = nn.Conv2d(in_channels, d, 3, padding=1)
        self.down1 = ResidualBlock(d, d, e)          # 28x28
        self.down2 = ResidualBlock(d, 2 * d, e)      # 14x14
        self.down3 = ResidualBlock(2 * d, 2 * d, e)  # 7x7
        self.mid1 = ResidualBlock(2 * d, 2 * d, e)
        self.attention = attention(2 * d)            # 7x7: 49 positions attend to each other
        self.mid2 = ResidualBlock(2 * d, 2 * d, e)
        self.up3 = ResidualBlock(4 * d, 2 * d, e)    # 7x7, with the skip of down3
        self.up2 = ResidualBlock(4 * d, d, e)        # 14x14, with the skip of down2
        self.up1 = ResidualBlock(2 * d, d, e)        # 28x28, with the skip of down1
        self.norm_out = group_norm(d)
        self.conv_out = nn.Conv2d(d, in_channels, 3, padding=1)

    def embedding(self, t: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        """The conditioning vector (N, 4D) every residual block receives."""
        emb = self.time_mlp(self.embed_time(t * TIME_SCALE, self.num_hiddens).to(self.conv_in.weight.dtype))
        if self.label is not None:
            if c is None:
                raise ValueError("this ImprovedUNet was built with num_classes: pass the one-hot labels c (N, K)")
            emb = emb + self.label(c.to(emb.dtype))
        return emb

    def forward(self, x: torch.Tensor, t: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        if x.dim() != 4 or x.shape[-2:] != (28, 28):
            raise ValueError(f"`x` must have shape (N, C, 28, 28), got {tuple(x.shape)}")
        if t.shape != (x.shape[0],):
            raise ValueError(f"`t` must have shape ({x.shape[0]},), got {tuple(t.shape)}")
        emb = self.embedding(t, c)
        skip1 = self.down1(self.conv_in(x), emb)                   # (N, D, 28, 28)
        skip2 = self.down2(F.max_pool2d(skip1, 2), emb)            # (N, 2D, 14, 14)
        skip3 = self.down3(F.max_pool2d(skip2, 2), emb)            # (N, 2D, 7, 7)
        h = self.mid2(self.attention(self.mid1(skip3, emb)), emb)  # (N, 2D, 7, 7)
        h = self.up3(torch.cat([h, skip3], 1), emb)
        h = F.interpolate(h, scale_factor=2, mode="bilinear", align_corners=False)
        h = self.up2(torch.cat([h, skip2], 1), emb)                # (N, D, 14, 14)
        h = F.interpolate(h, scale_factor=2, mode="bilinear", align_corners=False)
        h = self.up1(torch.cat([h, skip1], 1), emb)                # (N, D, 28, 28)
        return self.conv_out(F.silu(self.norm_out(h)))
