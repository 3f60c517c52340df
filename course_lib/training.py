"""One plain training loop for every stage.

``train`` runs Adam with an optional per-epoch exponential learning-rate decay, mixed precision where
the device supports it (see :func:`course_lib.runtime.autocast_dtype`), a progress bar, and a
checkpoint after every epoch from which it resumes. All randomness of training (batch order, noise,
timesteps, label dropout) comes from one generator whose state is checkpointed too, so training
2 epochs straight and 1 + resume + 1 give the same weights on the CPU.
"""

from __future__ import annotations

import os
from typing import Callable

import torch
from torch import nn
from tqdm.auto import tqdm

from . import checkpoints
from .data import DeviceImages
from .runtime import autocast_dtype
from .validation import check_in_range, check_positive_int

LossFunction = Callable[[nn.Module, torch.Tensor, torch.Tensor, torch.Generator], torch.Tensor]
EpochCallback = Callable[[int, nn.Module, list], None]


def optimizer_step(model: nn.Module, loss_fn: LossFunction, images: torch.Tensor, labels: torch.Tensor,
                   generator: torch.Generator, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
                   dtype: torch.dtype | None) -> torch.Tensor:
    """One gradient step on a batch under autocast ``dtype`` (``None``: fp32); returns the detached loss.

    ``scaler`` scales the loss for fp16 (it is a no-op when disabled). The loss stays on the device, so
    the step does not wait for the GPU.
    """
    with torch.autocast(images.device.type, dtype=dtype, enabled=dtype is not None):
        loss = loss_fn(model, images, labels, generator)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    return loss.detach()


def train(model: nn.Module, loss_fn: LossFunction, data: DeviceImages, *, epochs: int, batch_size: int,
          learning_rate: float, lr_gamma: float = 1.0, seed: int = 0,
          checkpoint_dir: str | os.PathLike | None = None, progress: bool = True,
          on_epoch_end: EpochCallback | None = None) -> list[float]:
    """Train ``model`` in place and return the loss of every optimizer step, over all epochs.

    Args:
        model: an ``nn.Module`` already on ``data.device``.
        loss_fn: ``loss_fn(model, images, labels, generator) -> scalar loss``; images come in the
            data's value range, (B, 1, 28, 28); it must draw its noise with ``generator``.
        data: the training images on the training device.
        epochs, batch_size, learning_rate: the budget (see :func:`course_lib.runtime.budget`).
        lr_gamma: ExponentialLR factor applied after each epoch (1.0: constant rate).
        seed: seeds the training generator (batch order and noise).
        checkpoint_dir: a folder to checkpoint to after every epoch and to resume from (``None``: no checkpoints).
        progress: show a progress bar.
        on_epoch_end: ``callback(epoch, model, losses)`` after each epoch (epochs count from 1),
            e.g. to draw samples after epochs 1 and 5; the model is back in train mode afterwards.
    """
    check_positive_int("epochs", epochs)
    check_positive_int("batch_size", batch_size)
    check_in_range("learning_rate", learning_rate, 0.0, 1.0)
    check_in_range("lr_gamma", lr_gamma, 0.0, 1.0)
    device = data.device
    if any(p.device != device for p in model.parameters()):
        raise ValueError(f"`model` must be on the data's device ({device}); call model.to({str(device)!r}) first")

    generator = torch.Generator(device=device).manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=learning_rate)
    scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=lr_gamma)
    dtype = autocast_dtype(device)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True

    losses: list[float] = []
    start_epoch = 0
    if checkpoint_dir is not None and (state := checkpoints.load_latest(checkpoint_dir, map_location=device)):
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        generator.set_state(state["rng"]["generator"].cpu())
        torch.set_rng_state(state["rng"]["torch"])
        if device.type == "cuda" and state["rng"]["cuda"] is not None:
            torch.cuda.set_rng_state(state["rng"]["cuda"], device)
        start_epoch, losses = state["epoch"], list(state["losses"])

    steps_per_epoch = data.num_batches(batch_size)
    model.train()
    for epoch in range(start_epoch + 1, epochs + 1):
        epoch_losses = []
        bar = tqdm(data.batches(batch_size, generator), total=steps_per_epoch, disable=not progress,
                   desc=f"epoch {epoch}/{epochs}", leave=False)
        for images, labels in bar:
            epoch_losses.append(optimizer_step(model, loss_fn, images, labels, generator, optimizer, scaler, dtype))
        scheduler.step()
        losses.extend(torch.stack(epoch_losses).float().tolist())
        if progress:
            tqdm.write(f"epoch {epoch}/{epochs}: mean loss {sum(losses[-steps_per_epoch:]) / steps_per_epoch:.4f}")
        if checkpoint_dir is not None:
            checkpoints.save_checkpoint(checkpoint_dir, epoch, {
                "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
                "epoch": epoch, "losses": losses,
                "rng": {"generator": generator.get_state(), "torch": torch.get_rng_state(),
                        "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None},
            })
        if on_epoch_end is not None:
            on_epoch_end(epoch, model, losses)
            model.train()
    return losses
