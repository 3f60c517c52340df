"""Figures: image grids, loss curves, the noising and forward-process figures, 4 samples per digit,
and a sampling trajectory as a strip of frames or a GIF. Every function returns its matplotlib ``Figure``
(or the GIF's path) and never calls ``plt.show()``, so notebooks display it and the command line saves it.

Images are tensors (N, 1, H, W); pass ``value_range="signed"`` for images in [-1, 1].
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Sequence

import matplotlib.pyplot as plt
import torch

from .data import to_unit
from .noise import DDPMSchedule, add_noise, q_sample
from .validation import check_choice, check_tensor

DEFAULT_SIGMAS = (0.0, 0.2, 0.4, 0.5, 0.6, 0.8, 1.0)


def _display(images: torch.Tensor, value_range: str) -> torch.Tensor:
    """Images (N, 1, H, W) as CPU floats in [0, 1] for imshow."""
    check_tensor("images", images, ndim=4)
    check_choice("value_range", value_range, ("unit", "signed"))
    images = images.detach().float().cpu()
    return to_unit(images) if value_range == "signed" else images.clamp(0, 1)


def image_grid(images: torch.Tensor, ncols: int, value_range: str = "unit", pad: int = 2) -> torch.Tensor:
    """Tile images (N, 1, H, W) into one (rows*(H+pad), ncols*(W+pad)) array in [0, 1], row by row."""
    images = _display(images, value_range)
    n, _, h, w = images.shape
    rows = math.ceil(n / ncols)
    grid = torch.ones(rows * (h + pad) - pad, ncols * (w + pad) - pad)
    for i in range(n):
        r, c = divmod(i, ncols)
        grid[r * (h + pad): r * (h + pad) + h, c * (w + pad): c * (w + pad) + w] = images[i, 0]
    return grid


def show_images(images: torch.Tensor, title: str, ncols: int = 10, value_range: str = "unit",
                row_labels: Sequence[str] | None = None, col_labels: Sequence[str] | None = None,
                ax=None) -> plt.Figure:
    """An image grid with a title, optional row and column labels, no pixel axes."""
    ncols = min(ncols, len(images))
    grid = image_grid(images, ncols, value_range)
    rows = math.ceil(len(images) / ncols)
    if ax is None:
        fig, ax = plt.subplots(figsize=(max(3.0, 0.9 * ncols), max(1.6, 0.9 * rows + 0.6)))
    else:
        fig = ax.figure
    ax.imshow(grid.numpy(), cmap="gray", vmin=0, vmax=1)
    ax.set_title(title)
    cell_h, cell_w = images.shape[2] + 2, images.shape[3] + 2
    ax.set_xticks([cell_w * (i + 0.5) - 1 for i in range(ncols)] if col_labels else [])
    ax.set_xticklabels(col_labels or [])
    ax.set_yticks([cell_h * (i + 0.5) - 1 for i in range(rows)] if row_labels else [])
    ax.set_yticklabels(row_labels or [])
    ax.tick_params(length=0)
    for side in ax.spines.values():
        side.set_visible(False)
    fig.tight_layout()
    return fig


def plot_losses(losses: Sequence[float], title: str = "Training loss", log_scale: bool = True,
                steps_per_epoch: int | None = None, smooth: int = 20,
                validation: Sequence[float] | None = None) -> plt.Figure:
    """The per-step training loss with a moving average and, when given, the validation loss of every epoch, placed
    at the step that ends the epoch; a log-scale y axis by default; epoch boundaries dashed; a legend.

    ``losses`` may be the :class:`course_lib.training.LossHistory` that ``train`` returns: its ``validation`` and
    ``steps_per_epoch`` are then the defaults of ``validation`` and ``steps_per_epoch``. Without
    ``steps_per_epoch``, epochs are taken to be equally long (``len(losses) // len(validation)`` steps).
    """
    if len(losses) == 0:
        raise ValueError("`losses` is empty: train for at least one step first")
    validation = list(getattr(losses, "validation", None) or ()) if validation is None else list(validation)
    steps_per_epoch = steps_per_epoch or getattr(losses, "steps_per_epoch", None)
    values = torch.tensor(list(losses), dtype=torch.float64)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(values, lw=0.6, alpha=0.4, label="training, per step")
    window = max(1, min(smooth, len(values) // 5))
    if window > 1:
        kernel = torch.ones(1, 1, window, dtype=values.dtype) / window
        average = torch.nn.functional.conv1d(values.view(1, 1, -1), kernel).flatten()
        ax.plot(range(window - 1, len(values)), average, lw=1.6, label=f"training, mean of {window} steps")
    if steps_per_epoch:
        for boundary in range(steps_per_epoch, len(values), steps_per_epoch):
            ax.axvline(boundary, color="gray", ls="--", lw=0.6)
    if validation:
        epoch_length = steps_per_epoch or len(values) // len(validation)
        ax.plot([epoch_length * epoch for epoch in range(1, len(validation) + 1)], validation, "o-", lw=1.6,
                color="tab:red", label="validation, per epoch")
    if log_scale:
        ax.set_yscale("log")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("MSE loss" + (" (log scale)" if log_scale else ""))
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    return fig


def plot_noising(images: torch.Tensor, sigmas: Sequence[float] = DEFAULT_SIGMAS,
                 generator: torch.Generator | None = None,
                 title: str = "Gaussian noising z = x + sigma * eps") -> plt.Figure:
    """Each image (rows, in [0, 1]) noised at each sigma (columns)."""
    check_tensor("images", images, ndim=4)
    noisy = torch.stack([add_noise(images, s, generator) for s in sigmas], dim=1).flatten(0, 1)
    return show_images(noisy, title, ncols=len(sigmas), col_labels=[f"sigma={s:g}" for s in sigmas])


def plot_forward_process(x0: torch.Tensor, schedule: DDPMSchedule, timesteps: Sequence[int],
                         generator: torch.Generator | None = None,
                         title: str = "Forward process x_t (closed form)") -> plt.Figure:
    """Each image of ``x0`` (rows, in [-1, 1]) at each timestep (columns), all with the same eps."""
    check_tensor("x0", x0, ndim=4)
    eps = torch.randn(x0.shape, generator=generator, device=x0.device)
    frames = [q_sample(x0, torch.full((len(x0),), t, device=x0.device), eps, schedule) for t in timesteps]
    return show_images(torch.stack(frames, 1).flatten(0, 1), title, ncols=len(timesteps), value_range="signed",
                       col_labels=[f"t={t}" for t in timesteps])


def plot_schedules(schedules: dict[str, DDPMSchedule], title: str = "alpha_bar_t of the noise schedules") -> plt.Figure:
    """``alpha_bar_t`` against t for several named schedules (anything with an ``alpha_bars`` tensor)."""
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for name, schedule in schedules.items():
        ax.plot(schedule.alpha_bars.cpu(), label=name)
    ax.set_xlabel("timestep t")
    ax.set_ylabel("alpha_bar_t")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    return fig


def plot_digit_samples(samples: torch.Tensor, labels: torch.Tensor, title: str,
                       value_range: str = "signed") -> plt.Figure:
    """Samples arranged one column per digit 0..9 (4 samples of each in the course)."""
    check_tensor("labels", labels, ndim=1)
    digits = sorted(set(labels.tolist()))
    per_digit = min(int((labels == d).sum()) for d in digits)
    columns = [samples[labels.cpu() == d][:per_digit] for d in digits]
    grid = torch.stack(columns, 1).flatten(0, 1)  # row-major: sample i of every digit on row i
    fig = show_images(grid, title, ncols=len(digits), value_range=value_range, col_labels=[str(d) for d in digits])
    fig.axes[0].set_xlabel("digit asked for")
    fig.axes[0].set_ylabel("sample")
    fig.tight_layout()
    return fig


def plot_paths(times: torch.Tensor, paths: torch.Tensor, title: str) -> plt.Figure:
    """Paths of a 1-D SDE: ``times`` (K,), ``paths`` (K, num_paths)."""
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(times, paths.cpu(), lw=0.9)
    ax.set_xlabel("time t")
    ax.set_ylabel("x(t)")
    ax.set_title(title)
    fig.tight_layout()
    return fig


def show_trajectory(trajectory: torch.Tensor, title: str, num_frames: int = 8, num_samples: int = 4,
                    frame_label=str, xlabel: str = "steps done", value_range: str = "signed") -> plt.Figure:
    """A sampling trajectory (steps + 1, N, 1, H, W) as a strip: one row per sample (the first ``num_samples``),
    ``num_frames`` columns spread evenly from the first frame (the starting noise, left) to the last (the samples).

    ``frame_label(k)`` labels the column of frame ``k`` (frames count from 0); ``xlabel`` says what the columns are.
    """
    check_tensor("trajectory", trajectory, ndim=5)
    steps = len(trajectory) - 1
    picks = torch.linspace(0, steps, min(num_frames, steps + 1)).round().long()
    frames = trajectory[picks, :num_samples].transpose(0, 1).flatten(0, 1)
    fig = show_images(frames, title, ncols=len(picks), value_range=value_range,
                      col_labels=[frame_label(int(k)) for k in picks])
    ax = fig.axes[0]
    ax.set_xlabel(xlabel)
    ax.set_ylabel("sample")
    fig.tight_layout()
    return fig


def save_gif(trajectory: torch.Tensor, path: str | os.PathLike, ncols: int = 10, num_frames: int = 60,
             seconds: float = 4.0, value_range: str = "signed", scale: int = 2) -> Path:
    """Write a sampling trajectory (steps + 1, N, 1, H, W) as an animated GIF of ``num_frames`` frames.

    Frames are spread evenly over the trajectory, always keeping the last one, which is held for one second.
    """
    from PIL import Image

    check_tensor("trajectory", trajectory, ndim=5)
    count = min(num_frames, len(trajectory))
    picks = torch.linspace(0, len(trajectory) - 1, count).round().long().tolist()
    frames = []
    for i in picks:
        grid = (image_grid(trajectory[i], ncols, value_range) * 255).round().to(torch.uint8).numpy()
        image = Image.fromarray(grid, mode="L")
        frames.append(image.resize((image.width * scale, image.height * scale), Image.NEAREST))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    durations = [int(1000 * seconds / count)] * (count - 1) + [1000]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=durations, loop=0)
    return path
