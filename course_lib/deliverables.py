"""The figures the command line saves for each trained stage (``python -m course_lib train``).

Each training stage's entry (:mod:`course_lib.stages`) names its function here (``Model.figures``);
every one is ``figures(trained, generator, data_root) -> {file name: Figure}`` and samples with the stage's own
sampler (``Model.sampler``).
"""

from __future__ import annotations

import os

import matplotlib.pyplot as plt
import torch

from . import plots
from .data import DeviceImages, load_mnist
from .noise import add_noise
from .runs import TrainedStage
from .stages import get


def denoised_digits(trained: TrainedStage, generator: torch.Generator,
                    data_root: str | os.PathLike | None) -> dict[str, plt.Figure]:
    """Five test digits noised at each sigma of :data:`course_lib.plots.DEFAULT_SIGMAS`, and the denoiser's output."""
    device = generator.device
    test = DeviceImages.from_dataset(load_mnist(train=False, root=data_root), device, "unit", subset_size=5)
    clean, _ = test.first(5)
    trained.model.eval()
    with torch.no_grad():
        rows = [torch.cat([(noisy := add_noise(clean, s, generator)), trained.model(noisy)])
                for s in plots.DEFAULT_SIGMAS]
    grid = torch.stack([r.view(2, 5, 1, 28, 28) for r in rows], 2).flatten(0, 2)
    return {"denoised.png": plots.show_images(
        grid, "Noisy test digits (top 5 rows) and the denoiser's output (bottom 5 rows)",
        ncols=len(plots.DEFAULT_SIGMAS), col_labels=[f"sigma={s:g}" for s in plots.DEFAULT_SIGMAS])}


def ddpm_samples(trained: TrainedStage, generator: torch.Generator, data_root=None) -> dict[str, plt.Figure]:
    """40 samples of the DDPM (all T steps)."""
    samples = get(trained.stage).model.sampler()(trained.model, trained.schedule, 40, generator)
    return {"samples.png": plots.show_images(samples, "DDPM samples", value_range="signed")}


def guided_samples(trained: TrainedStage, generator: torch.Generator, data_root=None) -> dict[str, plt.Figure]:
    """Four guided samples (guidance 5) of every digit."""
    labels = torch.arange(10, device=generator.device).repeat(4)
    samples = get(trained.stage).model.sampler()(trained.model, trained.schedule, labels, 5.0, generator)
    return {"samples.png": plots.plot_digit_samples(samples, labels, "Guided samples (guidance 5), 4 per digit")}


def flow_samples(trained: TrainedStage, generator: torch.Generator, data_root=None) -> dict[str, plt.Figure]:
    """40 samples of the rectified flow (50 Euler steps)."""
    samples = get(trained.stage).model.sampler()(trained.model, 40, 50, generator)
    return {"samples.png": plots.show_images(samples, "Rectified-flow samples (50 Euler steps)",
                                             value_range="signed")}
