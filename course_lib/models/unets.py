"""The three UNets of the course, sharing one body.

    ConvBlock(1->D) [28] -> DownBlock(D->D) [14] -> DownBlock(D->2D) [7] -> Flatten [1] -> Unflatten [7]
    -> (modulate) -> concat 7x7 -> UpBlock(4D->D) [14] -> (modulate) -> concat 14x14 -> UpBlock(2D->D) [28]
    -> concat 28x28 -> ConvBlock(2D->D) -> Conv2d(D->1, 3x3)

The two "modulate" points are where the conditional UNets inject their condition:
``unflatten = c1 * unflatten + t1`` and ``up1 = c2 * up1 + t2``.
"""

from __future__ import annotations

import torch
from torch import nn

from ..validation import check_batch_vector, check_images, check_positive_int, check_tensor
from .blocks import ConvBlock, DownBlock, FCBlock, UpBlock
from .operations import Flatten, Unflatten

IMAGE_SIZE = 28


class UNetBody(nn.Module):
    """The UNet without a condition; ``forward`` takes optional scales and shifts at the two modulation points.

    Args:
        in_channels: image channels (1 for MNIST).
        num_hiddens: D.
    """

    def __init__(self, in_channels: int, num_hiddens: int):
        super().__init__()
        d = check_positive_int("num_hiddens", num_hiddens)
        self.in_channels = check_positive_int("in_channels", in_channels)
        self.num_hiddens = d
        self.conv_in = ConvBlock(in_channels, d)
        self.down1 = DownBlock(d, d)
        self.down2 = DownBlock(d, 2 * d)
        self.flatten = Flatten()
        self.unflatten = Unflatten(2 * d)
        self.up1 = UpBlock(4 * d, d)
        self.up2 = UpBlock(2 * d, d)
        self.conv_out = ConvBlock(2 * d, d)
        self.head = nn.Conv2d(d, in_channels, 3, padding=1)

    def check_input(self, x) -> int:
        """Check ``x`` is (N, in_channels, 28, 28) floats; return N."""
        check_images("x", x, channels=self.in_channels, size=IMAGE_SIZE)
        return x.shape[0]

    def forward(self, x: torch.Tensor, bottleneck_scale=None, bottleneck_shift=None,
                up_scale=None, up_shift=None) -> torch.Tensor:
        """x: (N, C, 28, 28). Scales and shifts: (N, 2D, 1, 1) at the bottleneck, (N, D, 1, 1) after up1."""
        first = self.conv_in(x)                       # (N, D, 28, 28)
        skip14 = self.down1(first)                    # (N, D, 14, 14)
        skip7 = self.down2(skip14)                    # (N, 2D, 7, 7)
        h = self.unflatten(self.flatten(skip7))       # (N, 2D, 7, 7)
        h = _modulate(h, bottleneck_scale, bottleneck_shift)
        h = self.up1(torch.cat([h, skip7], dim=1))    # (N, D, 14, 14)
        h = _modulate(h, up_scale, up_shift)
        h = self.up2(torch.cat([h, skip14], dim=1))   # (N, D, 28, 28)
        h = self.conv_out(torch.cat([h, first], dim=1))
        return self.head(h)                           # (N, C, 28, 28)


def _modulate(h: torch.Tensor, scale: torch.Tensor | None, shift: torch.Tensor | None) -> torch.Tensor:
    if scale is not None:
        h = scale * h
    if shift is not None:
        h = h + shift
    return h


def _as_map(features: torch.Tensor) -> torch.Tensor:
    """(N, F) -> (N, F, 1, 1), to broadcast over a feature map."""
    return features[:, :, None, None]


class UnconditionalUNet(nn.Module):
    """Single-step denoiser: ``forward(x)`` maps noisy images (N, C, 28, 28) to clean ones, same shape."""

    def __init__(self, in_channels: int = 1, num_hiddens: int = 128):
        super().__init__()
        self.body = UNetBody(in_channels, num_hiddens)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.body.check_input(x)
        return self.body(x)


def _check_time(t, batch_size: int) -> torch.Tensor:
    check_tensor("t", t, floating=True)
    check_batch_vector("t", t, batch_size)
    return t


class TimeConditionalUNet(nn.Module):
    """Noise predictor conditioned on time: ``forward(x, t)``.

    Args of ``forward``:
        x: noisy images (N, C, 28, 28).
        t: float tensor (N,), the timestep already divided by T (in [0, 1]).
    Returns the predicted noise (or velocity), shape (N, C, 28, 28).
    """

    def __init__(self, in_channels: int = 1, num_hiddens: int = 64):
        super().__init__()
        self.body = UNetBody(in_channels, num_hiddens)
        self.t1 = FCBlock(1, 2 * num_hiddens)
        self.t2 = FCBlock(1, num_hiddens)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        _check_time(t, self.body.check_input(x))
        t = t[:, None].to(x.dtype)
        return self.body(x, bottleneck_shift=_as_map(self.t1(t)), up_shift=_as_map(self.t2(t)))


class ClassConditionalUNet(nn.Module):
    """Noise predictor conditioned on time and class: ``forward(x, t, c)``.

    Args of ``forward``:
        x: noisy images (N, C, 28, 28).
        t: float tensor (N,), the timestep divided by T.
        c: float one-hot classes (N, num_classes); an all-zero row means "no class".
    Returns the predicted noise, shape (N, C, 28, 28).
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 10, num_hiddens: int = 64):
        super().__init__()
        self.body = UNetBody(in_channels, num_hiddens)
        self.num_classes = check_positive_int("num_classes", num_classes)
        self.t1 = FCBlock(1, 2 * num_hiddens)
        self.t2 = FCBlock(1, num_hiddens)
        self.c1 = FCBlock(num_classes, 2 * num_hiddens)
        self.c2 = FCBlock(num_classes, num_hiddens)

    def forward(self, x: torch.Tensor, t: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        batch_size = self.body.check_input(x)
        _check_time(t, batch_size)
        check_tensor("c", c, floating=True)
        if tuple(c.shape) != (batch_size, self.num_classes):
            raise ValueError(f"`c` must be one-hot classes of shape ({batch_size}, {self.num_classes}), "
                             f"got {tuple(c.shape)}")
        t = t[:, None].to(x.dtype)
        c = c.to(x.dtype)
        return self.body(x, bottleneck_scale=_as_map(self.c1(c)), bottleneck_shift=_as_map(self.t1(t)),
                         up_scale=_as_map(self.c2(c)), up_shift=_as_map(self.t2(t)))
