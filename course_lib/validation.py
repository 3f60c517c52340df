"""Argument checks at the public boundary.

Every public function of ``course_lib`` checks its inputs with these helpers, so that a wrong shape,
dtype or range raises one short ``ValueError``/``TypeError`` that names the argument, what was
expected and what came, instead of a stack trace from deep inside torch.
"""

from __future__ import annotations

from typing import Sequence

import torch


def check_tensor(name: str, value, *, ndim: int | None = None, floating: bool | None = None) -> torch.Tensor:
    """Check that ``value`` is a tensor with ``ndim`` dimensions (and a floating dtype if asked)."""
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"`{name}` must be a torch.Tensor, got {type(value).__name__}")
    if ndim is not None and value.dim() != ndim:
        raise ValueError(f"`{name}` must have {ndim} dimensions, got shape {tuple(value.shape)}")
    if floating is True and not value.is_floating_point():
        raise TypeError(f"`{name}` must have a floating-point dtype, got {value.dtype}")
    if floating is False and value.is_floating_point():
        raise TypeError(f"`{name}` must have an integer dtype, got {value.dtype}")
    return value


def check_images(name: str, value, *, channels: int, size: int | None = None) -> torch.Tensor:
    """Check an image batch of shape (N, channels, size, size) with a floating dtype."""
    check_tensor(name, value, floating=True)
    expected = f"(N, {channels}, {size or 'H'}, {size or 'W'})"
    if value.dim() != 4 or value.shape[1] != channels or value.shape[0] == 0:
        raise ValueError(f"`{name}` must have shape {expected}, got {tuple(value.shape)}")
    if size is not None and tuple(value.shape[2:]) != (size, size):
        raise ValueError(f"`{name}` must have shape {expected}, got {tuple(value.shape)}")
    return value


def check_batch_vector(name: str, value, batch_size: int) -> torch.Tensor:
    """Check a per-example tensor of shape (batch_size,)."""
    check_tensor(name, value)
    if tuple(value.shape) != (batch_size,):
        raise ValueError(f"`{name}` must have shape ({batch_size},) to match the batch, got {tuple(value.shape)}")
    return value


def check_timesteps(name: str, t, batch_size: int, num_steps: int) -> torch.Tensor:
    """Check integer timesteps of shape (batch_size,) with values in 0..num_steps-1."""
    check_batch_vector(name, t, batch_size)
    check_tensor(name, t, floating=False)
    if t.numel() and (int(t.min()) < 0 or int(t.max()) >= num_steps):
        raise ValueError(
            f"`{name}` must hold integers in 0..{num_steps - 1}, got values from {int(t.min())} to {int(t.max())}"
        )
    return t


def check_same_shape(name: str, value: torch.Tensor, other_name: str, other: torch.Tensor) -> None:
    """Check that two tensors have the same shape."""
    if value.shape != other.shape:
        raise ValueError(
            f"`{name}` must have the same shape as `{other_name}` {tuple(other.shape)}, got {tuple(value.shape)}"
        )


def check_positive_int(name: str, value) -> int:
    """Check a strictly positive integer."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"`{name}` must be a positive integer, got {value!r}")
    return value


def check_in_range(name: str, value: float, low: float, high: float) -> float:
    """Check a number in the closed interval [low, high]."""
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not low <= value <= high:
        raise ValueError(f"`{name}` must be a number in [{low}, {high}], got {value!r}")
    return float(value)


def check_choice(name: str, value, choices: Sequence) -> None:
    """Check that ``value`` is one of ``choices``."""
    if value not in choices:
        raise ValueError(f"`{name}` must be one of {list(choices)}, got {value!r}")
