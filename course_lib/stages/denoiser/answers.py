"""Answers of stage 2 (``02_denoiser``): the five UNet operations, the three blocks, the UNet, the denoising
loss, one training step and the training loop with its per-epoch validation.

Shapes for an input of (N, C_in, H, W):
    Conv      -> (N, C_out, H, W)          ConvBlock = Conv, Conv
    DownConv  -> (N, C_out, H/2, W/2)      DownBlock = DownConv, ConvBlock
    UpConv    -> (N, C_out, 2H, 2W)        UpBlock   = UpConv, ConvBlock
    Flatten   -> (N, C, 1, 1) from 7x7     Unflatten -> (N, C, 7, 7) from 1x1

The UNet (D = num_hiddens; [size] the feature map's side):
    ConvBlock(1->D) [28] -> DownBlock(D->D) [14] -> DownBlock(D->2D) [7] -> Flatten [1] -> Unflatten [7]
    -> (modulate) -> concat 7x7 -> UpBlock(4D->D) [14] -> (modulate) -> concat 14x14 -> UpBlock(2D->D) [28]
    -> concat 28x28 -> ConvBlock(2D->D) -> Conv2d(D->1, 3x3)
:class:`UNetBody` is that network; the two "modulate" points are where stages 3 and 4 inject their condition.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ...validation import check_images, check_positive_int
from ..noising.answers import add_noise
from .api import DENOISER_SIGMA


IMAGE_SIZE = 28


class Conv(nn.Sequential):
    """Conv2d(3x3, stride 1, pad 1) + BatchNorm + GELU: changes the channels, keeps H and W."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(nn.Conv2d(in_channels, out_channels, 3, stride=1, padding=1),
                         nn.BatchNorm2d(out_channels), nn.GELU())


class DownConv(nn.Sequential):
    """Conv2d(3x3, stride 2, pad 1) + BatchNorm + GELU: halves H and W."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(nn.Conv2d(in_channels, out_channels, 3, stride=2, padding=1),
                         nn.BatchNorm2d(out_channels), nn.GELU())


class UpConv(nn.Sequential):
    """ConvTranspose2d(4x4, stride 2, pad 1) + BatchNorm + GELU: doubles H and W."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(nn.ConvTranspose2d(in_channels, out_channels, 4, stride=2, padding=1),
                         nn.BatchNorm2d(out_channels), nn.GELU())


class Flatten(nn.Sequential):
    """AvgPool2d(7) + GELU: 7x7 features to 1x1."""

    def __init__(self):
        super().__init__(nn.AvgPool2d(7), nn.GELU())


class Unflatten(nn.Sequential):
    """ConvTranspose2d(7x7, stride 7, pad 0) + BatchNorm + GELU: 1x1 features back to 7x7."""

    def __init__(self, channels: int):
        super().__init__(nn.ConvTranspose2d(channels, channels, 7, stride=7, padding=0),
                         nn.BatchNorm2d(channels), nn.GELU())


class ConvBlock(nn.Sequential):
    """Two :class:`Conv` operations: ``in_channels -> out_channels -> out_channels``."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(Conv(in_channels, out_channels), Conv(out_channels, out_channels))


class DownBlock(nn.Sequential):
    """:class:`DownConv` then :class:`ConvBlock`: halves H and W."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(DownConv(in_channels, out_channels), ConvBlock(out_channels, out_channels))


class UpBlock(nn.Sequential):
    """:class:`UpConv` then :class:`ConvBlock`: doubles H and W."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(UpConv(in_channels, out_channels), ConvBlock(out_channels, out_channels))


def _modulate(h: torch.Tensor, scale: torch.Tensor | None, shift: torch.Tensor | None) -> torch.Tensor:
    if scale is not None:
        h = scale * h
    if shift is not None:
        h = h + shift
    return h


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


class UnconditionalUNet(nn.Module):
    """Single-step denoiser: ``forward(x)`` maps noisy images (N, C, 28, 28) to clean ones, same shape."""

    def __init__(self, in_channels: int = 1, num_hiddens: int = 128):
        super().__init__()
        self.body = UNetBody(in_channels, num_hiddens)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.body.check_input(x)
        return self.body(x)


def denoising_loss(model, x: torch.Tensor, sigma: float = DENOISER_SIGMA,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """``mean (model(x + sigma eps) - x)^2``: the denoiser predicts the clean image. x: (N, 1, 28, 28) in [0, 1]."""
    return F.mse_loss(model(add_noise(x, sigma, generator)), x)


def train_step(model, optimizer: torch.optim.Optimizer, x: torch.Tensor,
               generator: torch.Generator | None = None) -> float:
    """One optimizer step of :func:`denoising_loss` on the batch ``x``; returns the batch's loss before the step."""
    optimizer.zero_grad()
    loss = denoising_loss(model, x, generator=generator)
    loss.backward()
    optimizer.step()
    return loss.item()


def train_denoiser(model, optimizer: torch.optim.Optimizer, train_data, val_data, epochs: int, batch_size: int,
                   generator: torch.Generator, on_epoch_end=None) -> tuple[list[float], list[float]]:
    """``epochs`` passes of :func:`train_step` with ``optimizer`` (kept across epochs, and restored from a checkpoint
    by the caller on a resume) over ``train_data`` (shuffled with ``generator``), the validation loss on every
    digit of ``val_data`` after each; returns (a loss per step, a validation loss per epoch)."""
    train_losses, val_losses = [], []
    for epoch in range(1, epochs + 1):
        model.train()
        for x, _ in train_data.batches(batch_size, generator):
            train_losses.append(train_step(model, optimizer, x, generator))
        model.eval()
        val_generator = torch.Generator(device=val_data.device).manual_seed(0)  # the same noise every epoch
        total = 0.0
        with torch.no_grad():
            for x, _ in val_data.batches(batch_size, shuffle=False, drop_last=False):
                total += denoising_loss(model, x, generator=val_generator).item() * len(x)
        val_losses.append(total / len(val_data))
        if on_epoch_end is not None:
            on_epoch_end(epoch, model, train_losses, val_losses)
    return train_losses, val_losses
