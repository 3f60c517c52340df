"""Train a stage's reference model end to end: what the command line, the benchmarks and stage 5's DDPM
comparison call. Notebooks wire the same pieces by hand, so that the student sees (and writes) each of them."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch import nn

from .data import DeviceImages, load_mnist, validation_split
from .noise import DDPMSchedule, course_schedule
from .runtime import pick_device
from .stages import StageBudget, budget, build_model, stage_loss, value_range
from .training import LossHistory, train


@dataclass
class TrainedStage:
    """What :func:`train_stage` returns: the model, its schedule (unused by the denoiser and flow),
    the per-step losses (with the per-epoch validation losses in ``losses.validation``), the budget used and the
    number of training images."""

    stage: str
    model: nn.Module
    schedule: DDPMSchedule
    losses: LossHistory
    budget: StageBudget
    num_images: int


def train_stage(stage: str, mode: str | None = None, *, device: torch.device | str | None = None,
                checkpoint_dir: str | os.PathLike | None = None, data_root: str | os.PathLike | None = None,
                seed: int = 0, progress: bool = True, on_epoch_end=None) -> TrainedStage:
    """Train the reference model of ``stage`` with the budget of ``mode`` (default: ``COURSE_MODE``), on the
    training part of :func:`~course_lib.data.validation_split`, reporting the loss on the held-out part every epoch."""
    stage_budget = budget(stage, mode)
    device = torch.device(device) if device is not None else pick_device()
    data, held_out = validation_split(DeviceImages.from_dataset(load_mnist(train=True, root=data_root), device,
                                                                value_range(stage), stage_budget.subset_size))
    torch.manual_seed(seed)
    model = build_model(stage, stage_budget).to(device)
    schedule = course_schedule(stage_budget.num_steps).to(device)
    losses = train(model, stage_loss(stage, schedule), data, epochs=stage_budget.epochs,
                   batch_size=stage_budget.batch_size, learning_rate=stage_budget.learning_rate,
                   lr_gamma=stage_budget.lr_gamma, seed=seed, checkpoint_dir=checkpoint_dir, progress=progress,
                   on_epoch_end=on_epoch_end, validation=held_out)
    return TrainedStage(stage, model, schedule, losses, stage_budget,
                        stage_budget.epochs * data.num_batches(stage_budget.batch_size) * stage_budget.batch_size)
