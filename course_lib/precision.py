"""Mixed precision chosen by measurement: time a few training steps in fp32, bf16 and fp16, keep the fastest.

Lower precision is not always faster: a small UNet at batch 128 is bound by kernel launches, not by
arithmetic, and autocast adds cast kernels (measured on an H200: bf16 slower than fp32). So on a GPU
:func:`fastest_autocast_dtype` times the real step in each candidate precision once per GPU model (and
model and batch shape) and remembers the answer for the session; on the CPU it returns ``None`` (fp32)
without measuring.
"""

from __future__ import annotations

import copy
import math
import time

import torch
from torch import nn

from .optimizers import make_optimizer
from .train_step import LossFunction, TrainStep

FP32 = None  # autocast off
MARGIN = 0.05  # a lower precision must be this much faster than fp32 to be chosen (fp32 is the safe default)
_CHOICES: dict[tuple, torch.dtype | None] = {}


def autocast_candidates(device: torch.device | str) -> list[torch.dtype | None]:
    """The precisions worth timing on ``device``: on CUDA fp32 (``None``), bf16 from compute capability 8
    (bf16 tensor cores; below that it is emulated) and fp16; elsewhere fp32 only."""
    device = torch.device(device)
    if device.type != "cuda":
        return [FP32]
    major, _ = torch.cuda.get_device_capability(device)
    return [FP32] + ([torch.bfloat16] if major >= 8 else []) + [torch.float16]


def step_seconds(model: nn.Module, loss_fn: LossFunction, images: torch.Tensor, labels: torch.Tensor,
                 dtype: torch.dtype | None, *, steps: int = 10, warmup: int = 3, capture: bool = False) -> float:
    """Seconds per training step (wall time, device synchronized) of a copy of ``model`` under autocast
    ``dtype``, after ``warmup`` untimed steps (cudnn autotuning, compilation). ``model`` is left untouched.

    images: a batch (B, 1, 28, 28) on the training device; labels: (B,) int64 there.
    """
    device = images.device
    trial = copy.deepcopy(model).train()
    step = TrainStep(trial, loss_fn, make_optimizer(trial.parameters(), 1e-4, device),
                     torch.amp.GradScaler(device.type, enabled=dtype == torch.float16), dtype, capture=capture)
    generator = torch.Generator(device=device).manual_seed(0)
    for _ in range(warmup):
        step(images, labels, generator)
    _synchronize(device)
    started = time.perf_counter()
    for _ in range(steps):
        step(images, labels, generator)
    _synchronize(device)
    return (time.perf_counter() - started) / steps


def fastest(timings: dict[torch.dtype | None, float], margin: float = MARGIN) -> torch.dtype | None:
    """The fastest precision of ``{dtype: seconds per step}``; fp32 unless another is ``margin`` faster."""
    best = min(timings, key=timings.get)
    if FP32 in timings and timings[best] > (1 - margin) * timings[FP32]:
        return FP32
    return best


def fastest_autocast_dtype(model: nn.Module, loss_fn: LossFunction, images: torch.Tensor, labels: torch.Tensor, *,
                           steps: int = 10, warmup: int = 3, capture: bool = False) -> torch.dtype | None:
    """The autocast dtype for training ``model`` on ``images``' device: ``None`` (fp32) on the CPU; on CUDA the
    fastest of :func:`autocast_candidates` by :func:`step_seconds` (a candidate that fails counts as infinitely
    slow), measured once per (GPU name, model class, batch shape, capture) in this session."""
    device = images.device
    if device.type != "cuda":
        return FP32
    key = (torch.cuda.get_device_name(device), type(model).__name__, tuple(images.shape), capture)
    if key not in _CHOICES:
        timings = {}
        for dtype in autocast_candidates(device):
            try:
                timings[dtype] = step_seconds(model, loss_fn, images, labels, dtype, steps=steps, warmup=warmup,
                                              capture=capture)
            except Exception:  # e.g. an op without a kernel in this precision
                timings[dtype] = math.inf
        _CHOICES[key] = fastest(timings)
    return _CHOICES[key]


def _synchronize(device: torch.device) -> None:
    """Wait for the work queued on ``device`` (CUDA only; elsewhere nothing is queued)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
