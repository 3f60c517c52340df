"""Train a stage's reference model end to end: what the command line, the benchmarks and stage 5's DDPM
comparison call. Notebooks wire the same pieces by hand, so that the student sees (and writes) each of them.

:func:`trained_model` gives a later stage an earlier stage's model: the student's own, from the checkpoints of
that stage's notebook, else the reference trained now (stage 7 edits with stage 4's model)."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch import nn

from . import checkpoints
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


def load_notebook_weights(model: nn.Module, weights: dict[str, torch.Tensor]) -> None:
    """Load the state dict of a network a student wrote in a notebook into the reference ``model`` of its stage.

    The student's layers sit on the network itself (``conv_in``), the reference's on its body (``body.conv_in``):
    they are matched by name without that prefix, else in registration order when every shape agrees. Raises
    ValueError when neither fits (another width, other layers).
    """
    own = model.state_dict()
    by_name = {key.removeprefix("body."): key for key in own}
    if set(weights) == set(by_name) and all(weights[key].shape == own[by_name[key]].shape for key in weights):
        model.load_state_dict({by_name[key]: value for key, value in weights.items()})
    elif [value.shape for value in weights.values()] == [value.shape for value in own.values()]:
        model.load_state_dict(dict(zip(own, weights.values())))
    else:
        raise ValueError(f"the checkpoint's {len(weights)} tensors do not fit {type(model).__name__} "
                         f"({len(own)} tensors): another width or other layers")


def trained_model(stage: str, checkpoint_dir: str | os.PathLike, fallback_dir: str | os.PathLike | None = None,
                  mode: str | None = None, *, device: torch.device | str | None = None,
                  progress: bool = True) -> tuple[nn.Module, DDPMSchedule, str]:
    """The model of ``stage`` as its notebook trained it, in eval mode on ``device``, its schedule, and one line
    that says where the model came from.

    The newest checkpoint in ``checkpoint_dir`` (the folder the stage's training cell writes, for ``mode``), loaded
    into the reference network with :func:`load_notebook_weights`; when there is none, or it does not fit, the
    reference model trained now with :func:`train_stage` (checkpointed in ``fallback_dir``, so a second run
    resumes or loads it).
    """
    stage_budget = budget(stage, mode)
    device = torch.device(device) if device is not None else pick_device()
    state = checkpoints.load_latest(checkpoint_dir, map_location=device)
    problem = f"no checkpoint in {checkpoint_dir}"
    if state is not None:
        model = build_model(stage, stage_budget).to(device)
        try:
            load_notebook_weights(model, state["model"])
        except ValueError as error:
            problem = f"the checkpoint in {checkpoint_dir} does not fit ({error})"
        else:
            return (model.eval(), course_schedule(stage_budget.num_steps).to(device),
                    f"your model, after epoch {state['epoch']} of {stage_budget.epochs}, from {checkpoint_dir}")
    trained = train_stage(stage, mode, device=device, checkpoint_dir=fallback_dir, progress=progress)
    return (trained.model.eval(), trained.schedule,
            f"{problem}: the reference model, trained for {stage_budget.epochs} epochs (checkpoints: {fallback_dir})")
