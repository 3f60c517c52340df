"""Blocks built from the operations, and the FCBlock that embeds a condition (t or a class).

    ConvBlock = Conv, Conv         (N, C_in, H, W)   -> (N, C_out, H, W)
    DownBlock = DownConv, ConvBlock (N, C_in, H, W)  -> (N, C_out, H/2, W/2)
    UpBlock   = UpConv, ConvBlock   (N, C_in, H, W)  -> (N, C_out, 2H, 2W)
    FCBlock   = Linear, GELU, Linear (N, F_in)       -> (N, F_out)
"""

from torch import nn

from .operations import Conv, DownConv, UpConv


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


class FCBlock(nn.Sequential):
    """Linear(F_in, F_out) + GELU + Linear(F_out, F_out): embeds t (F_in = 1) or a one-hot class (F_in = 10)."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__(nn.Linear(in_features, out_features), nn.GELU(), nn.Linear(out_features, out_features))
