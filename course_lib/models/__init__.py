"""The course's networks: UNet operations and blocks, the FCBlock, and the three UNets."""

from .blocks import ConvBlock, DownBlock, FCBlock, UpBlock
from .operations import Conv, DownConv, Flatten, Unflatten, UpConv
from .unets import ClassConditionalUNet, TimeConditionalUNet, UnconditionalUNet, UNetBody

__all__ = ["Conv", "DownConv", "UpConv", "Flatten", "Unflatten", "ConvBlock", "DownBlock", "UpBlock", "FCBlock",
           "UNetBody", "UnconditionalUNet", "TimeConditionalUNet", "ClassConditionalUNet"]
