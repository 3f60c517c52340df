"""The five UNet operations of COURSE.md section 2. Each is conv (or pool) + BatchNorm + GELU.

Shapes for an input of (N, C_in, H, W):
    Conv      -> (N, C_out, H, W)
    DownConv  -> (N, C_out, H/2, W/2)
    UpConv    -> (N, C_out, 2H, 2W)
    Flatten   -> (N, C, 1, 1)   from 7x7
    Unflatten -> (N, C, 7, 7)   from 1x1
"""

from torch import nn


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
