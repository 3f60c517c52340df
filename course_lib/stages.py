"""The four training stages wired together: which model, which value range, which loss.

``train_stage`` is what the command line calls; notebooks wire the same pieces by hand so that the
student sees (and writes) each of them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch import nn

from .data import DeviceImages, load_mnist
from .models import ClassConditionalUNet, TimeConditionalUNet, UnconditionalUNet
from .noise import DDPMSchedule
from .objectives import class_conditional_loss, ddpm_loss, denoising_loss, flow_loss
from .runtime import STAGES, StageBudget, budget, pick_device
from .training import LossFunction, train
from .validation import check_choice


def value_range(stage: str) -> str:
    """``"unit"`` ([0, 1]) for the single-step denoiser, ``"signed"`` ([-1, 1]) for the diffusion stages."""
    check_choice("stage", stage, STAGES)
    return "unit" if stage == "denoiser" else "signed"


def build_model(stage: str, stage_budget: StageBudget) -> nn.Module:
    """A freshly initialised model of ``stage`` with the budget's width."""
    check_choice("stage", stage, STAGES)
    width = stage_budget.num_hiddens
    if stage == "denoiser":
        return UnconditionalUNet(num_hiddens=width)
    if stage == "cfg":
        return ClassConditionalUNet(num_hiddens=width)
    return TimeConditionalUNet(num_hiddens=width)


def stage_loss(stage: str, schedule: DDPMSchedule) -> LossFunction:
    """The loss of ``stage`` as ``loss_fn(model, images, labels, generator)`` for :func:`~course_lib.training.train`."""
    check_choice("stage", stage, STAGES)
    if stage == "denoiser":
        return lambda model, x, labels, g: denoising_loss(model, x, generator=g)
    if stage == "ddpm":
        return lambda model, x, labels, g: ddpm_loss(model, x, schedule, generator=g)
    if stage == "cfg":
        return lambda model, x, labels, g: class_conditional_loss(model, x, labels, schedule, generator=g)
    return lambda model, x, labels, g: flow_loss(model, x, generator=g)


@dataclass
class TrainedStage:
    """What :func:`train_stage` returns: the model, its schedule (unused by the denoiser and flow),
    the per-step losses, the budget used and the number of training images."""

    stage: str
    model: nn.Module
    schedule: DDPMSchedule
    losses: list[float]
    budget: StageBudget
    num_images: int


def train_stage(stage: str, mode: str | None = None, *, device: torch.device | str | None = None,
                checkpoint_dir: str | os.PathLike | None = None, data_root: str | os.PathLike | None = None,
                seed: int = 0, progress: bool = True, on_epoch_end=None) -> TrainedStage:
    """Train the reference model of ``stage`` with the budget of ``mode`` (default: ``COURSE_MODE``)."""
    stage_budget = budget(stage, mode)
    device = torch.device(device) if device is not None else pick_device()
    data = DeviceImages.from_dataset(load_mnist(train=True, root=data_root), device, value_range(stage),
                                     stage_budget.subset_size)
    torch.manual_seed(seed)
    model = build_model(stage, stage_budget).to(device)
    schedule = stage_budget.schedule().to(device)
    losses = train(model, stage_loss(stage, schedule), data, epochs=stage_budget.epochs,
                   batch_size=stage_budget.batch_size, learning_rate=stage_budget.learning_rate,
                   lr_gamma=stage_budget.lr_gamma, seed=seed, checkpoint_dir=checkpoint_dir, progress=progress,
                   on_epoch_end=on_epoch_end)
    return TrainedStage(stage, model, schedule, losses, stage_budget,
                        stage_budget.epochs * data.num_batches(stage_budget.batch_size) * stage_budget.batch_size)
