"""What every sampling loop shares: where it runs, how the model is put in sampling mode, the start noise, and
:func:`run_chain`, the one place that keeps a trajectory. The samplers (``course_lib.sampling``) and the answers'
loops are built on it.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Iterable

import torch
from torch import nn

from .runtime import autocast_dtype
from .validation import check_positive_int

IMAGE_SHAPE = (1, 28, 28)


def device_of(model, device=None) -> torch.device:
    """``device`` if given, else the device of the model's first parameter, else the CPU."""
    if device is not None:
        return torch.device(device)
    if isinstance(model, nn.Module):
        for parameter in model.parameters():
            return parameter.device
    return torch.device("cpu")


@contextlib.contextmanager
def sampling_mode(model, device: torch.device):
    """Eval mode, no autograd, and the device's autocast precision; restores the training flag after."""
    was_training = isinstance(model, nn.Module) and model.training
    if isinstance(model, nn.Module):
        model.eval()
    dtype = autocast_dtype(device)
    precision = torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()
    try:
        with torch.inference_mode(), precision:  # no autocast where full precision is kept (any device type)
            yield
    finally:
        if was_training:
            model.train()


def start_noise(num_samples: int, device, generator, image_shape=IMAGE_SHAPE) -> torch.Tensor:
    """Pure noise (num_samples, *image_shape) drawn with ``generator``: where every sampler starts."""
    check_positive_int("num_samples", num_samples)
    return torch.randn((num_samples, *image_shape), device=device, generator=generator)


def run_chain(x: torch.Tensor, steps: Iterable, update: Callable[[torch.Tensor, object], torch.Tensor],
              return_trajectory: bool = False):
    """``x <- update(x, step)`` for each step in order; returns the last ``x``.

    With ``return_trajectory`` returns ``(x, trajectory)``: every frame from the start to the end, on the CPU,
    stacked to (number of steps + 1, *x.shape).
    """
    trajectory = [x.cpu()] if return_trajectory else None
    for step in steps:
        x = update(x, step)
        if trajectory is not None:
            trajectory.append(x.cpu())
    return (x, torch.stack(trajectory)) if return_trajectory else x
