"""One plain training loop for every stage.

``train`` runs Adam (:func:`course_lib.optimizers.make_optimizer`: fused on CUDA, foreach elsewhere) with an
optional per-epoch exponential learning-rate decay, mixed precision where it is faster (on a GPU, measured on the
first batch by :func:`course_lib.precision.fastest_autocast_dtype` and kept in the checkpoints; fp32 on the CPU),
an optional EMA of the weights (:mod:`course_lib.ema`), a progress bar, and a checkpoint after every epoch from
which it resumes. All randomness of training (batch order, noise, timesteps, label dropout) comes from one
generator whose state is checkpointed too, so training 2 epochs straight and 1 + resume + 1 give the same weights
on the CPU. Given held-out images, it also reports the validation loss after every epoch (:func:`validation_loss`),
checkpointed with the rest; the losses come back as a :class:`LossHistory`, a list of the per-step losses that
carries the per-epoch validation losses too.

A step never waits for the GPU on its own: the losses stay on the device until the end of the epoch
(one copy to the host per epoch, and one more for the validation loss). On CUDA the loss is captured by default
(:class:`course_lib.train_step.TrainStep`): compiled with ``torch.compile(mode="reduce-overhead")``, whose kernels
replay as CUDA graphs, so the GPU is not left waiting for Python to launch a hundred small kernels per step.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn
from tqdm.auto import tqdm

from . import checkpoints
from .data import DeviceImages
from .ema import EMA
from .optimizers import adam_implementation, make_optimizer, use_implementation
from .precision import fastest_autocast_dtype
from .runtime import autocast_dtype
from .train_step import (CAPTURE_TRIAL_STEPS, Compiler, LossFunction, TrainStep, compile_for_capture,
                         optimizer_step, rng_state, set_rng_state)
from .validation import check_in_range, check_positive_int

__all__ = ["CAPTURE_TRIAL_STEPS", "VALIDATION_SEED", "Compiler", "EpochCallback", "LossFunction", "LossHistory",
           "TrainStep", "adam_implementation", "compile_for_capture", "make_optimizer", "optimizer_step", "train",
           "validation_loss"]  # the step's and Adam's names stay importable from here (benchmarks/train_speed.py)

EpochCallback = Callable[[int, nn.Module, list], None]
VALIDATION_SEED = 0  # the validation loss draws its noise (and timesteps) afresh from this seed every epoch


class LossHistory(list):
    """What :func:`train` returns: the loss of every optimizer step (a plain list of floats to any caller that
    wants one), with the per-epoch losses on held-out images in ``validation`` (one float per epoch, ``nan``
    for an epoch trained without them; empty when no epoch had them) and the ``steps_per_epoch``.

    :func:`course_lib.plots.plot_losses` draws both curves from it.
    """

    def __init__(self, losses=(), validation=(), steps_per_epoch: int | None = None):
        super().__init__(losses)
        self.validation: list[float] = list(validation)
        self.steps_per_epoch = steps_per_epoch


def validation_loss(model: nn.Module, loss_fn: LossFunction, data: DeviceImages, batch_size: int,
                    seed: int = VALIDATION_SEED, dtype: torch.dtype | None = None) -> float:
    """The mean of ``loss_fn`` over every image of ``data``: the model in eval mode (BatchNorm on its running
    statistics), no gradients, batches of at most ``batch_size`` in the stored order, each weighted by its size.

    The noise comes from a fresh generator seeded ``seed``, so two calls see the same noisy images and their
    values are comparable across epochs. The model is left in eval mode. One read-back from the device.
    """
    check_positive_int("batch_size", batch_size)
    generator = torch.Generator(device=data.device).manual_seed(seed)
    total = torch.zeros((), device=data.device, dtype=torch.float64)
    model.eval()
    with torch.no_grad(), torch.autocast(data.device.type, dtype=dtype, enabled=dtype is not None):
        for images, labels in data.batches(batch_size, shuffle=False, drop_last=False):
            total += loss_fn(model, images, labels, generator).double() * len(images)
    return total.item() / len(data)


@dataclass(frozen=True)
class _Options:
    """:func:`train`'s keyword arguments as one value (each is described there), checked by :func:`_check`."""

    epochs: int
    batch_size: int
    learning_rate: float
    lr_gamma: float
    seed: int
    checkpoint_dir: str | os.PathLike | None
    progress: bool
    on_epoch_end: EpochCallback | None
    ema_decay: float | None
    capture: bool | None
    compiler: Compiler | None
    validation: DeviceImages | None


@dataclass(frozen=True)
class _Run:
    """What every epoch of one run works with, built (and resumed from a checkpoint) by :func:`_start`: the
    model and loss, the training images, the one generator of all training draws, Adam, its per-epoch decay, the
    fp16 loss scaler (disabled otherwise), the autocast dtype (``None``: fp32), the EMA (or ``None``) and the step."""

    model: nn.Module
    loss_fn: LossFunction
    data: DeviceImages
    generator: torch.Generator
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.ExponentialLR
    scaler: torch.amp.GradScaler
    dtype: torch.dtype | None
    ema: EMA | None
    step: TrainStep

    def ema_weights(self) -> contextlib.AbstractContextManager:
        """A context in which the model holds the EMA weights (swapped back after); nothing to swap without one."""
        return self.ema.swapped_in(self.model) if self.ema is not None else contextlib.nullcontext()


def _check(options: _Options, model: nn.Module, data: DeviceImages) -> None:
    """Raise ``ValueError`` for an option out of range, or a model or validation set off the data's device."""
    check_positive_int("epochs", options.epochs)
    check_positive_int("batch_size", options.batch_size)
    check_in_range("learning_rate", options.learning_rate, 0.0, 1.0)
    check_in_range("lr_gamma", options.lr_gamma, 0.0, 1.0)
    ema_decay, validation, device = options.ema_decay, options.validation, data.device
    if ema_decay is not None and not (isinstance(ema_decay, float) and 0.0 < ema_decay < 1.0):
        raise ValueError(f"`ema_decay` must be None or a float in (0, 1), got {ema_decay!r}")
    if any(p.device != device for p in model.parameters()):
        raise ValueError(f"`model` must be on the data's device ({device}); call model.to({str(device)!r}) first")
    if validation is not None and (not isinstance(validation, DeviceImages) or validation.device != device):
        raise ValueError(f"`validation` must be DeviceImages on the data's device ({device}), got "
                         f"{getattr(validation, 'device', type(validation).__name__)}")


def _dtype_name(dtype: torch.dtype | None) -> str:
    """How a checkpoint names the autocast dtype: ``"fp32"`` for ``None``, else e.g. ``"bfloat16"``."""
    return "fp32" if dtype is None else str(dtype).removeprefix("torch.")


def _training_dtype(model: nn.Module, loss_fn: LossFunction, data: DeviceImages, batch_size: int,
                    state: dict | None) -> torch.dtype | None:
    """The autocast dtype to train with (``None``: fp32). A resumed run keeps its checkpoint's; on a GPU a new run
    times a few steps of the first batch in each precision (:func:`course_lib.precision.fastest_autocast_dtype`);
    on the CPU it is fp32."""
    if state is not None and state.get("precision"):
        return None if state["precision"] == "fp32" else getattr(torch, state["precision"])
    if data.device.type != "cuda":
        return autocast_dtype(data.device)
    images, labels = data.first(batch_size)
    return fastest_autocast_dtype(model, loss_fn, images, labels)


def _start(model: nn.Module, loss_fn: LossFunction, data: DeviceImages, options: _Options,
           state: dict | None) -> _Run:
    """Build the run's pieces on the data's device, and resume them from the checkpoint ``state`` when there is
    one (``None`` or empty: a new run, its generator seeded ``options.seed``). The step captures the loss if
    ``options.capture`` says so (``None``: on CUDA only)."""
    device = data.device
    generator = torch.Generator(device=device).manual_seed(options.seed)
    optimizer = make_optimizer(model.parameters(), options.learning_rate, device)
    scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=options.lr_gamma)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    dtype = _training_dtype(model, loss_fn, data, options.batch_size, state)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    if state:
        _restore(state, model, optimizer, scheduler, scaler, generator)
    ema = EMA(model, options.ema_decay) if options.ema_decay is not None else None
    if ema is not None and state and state.get("ema") is not None:
        ema.load_state_dict(state["ema"])
    capture = device.type == "cuda" if options.capture is None else options.capture
    step = TrainStep(model, loss_fn, optimizer, scaler, dtype, ema=ema, capture=capture, compiler=options.compiler)
    return _Run(model, loss_fn, data, generator, optimizer, scheduler, scaler, dtype, ema, step)


def _restore(state: dict, model: nn.Module, optimizer: torch.optim.Optimizer,
             scheduler: torch.optim.lr_scheduler.LRScheduler, scaler: torch.amp.GradScaler,
             generator: torch.Generator) -> None:
    """Load a checkpoint's weights, Adam's moments and step counts (with this device's Adam kernel, on the
    generator's device), the decay's epoch count, the loss scale and every random state."""
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    use_implementation(optimizer, generator.device)
    scheduler.load_state_dict(state["scheduler"])
    scaler.load_state_dict(state["scaler"])
    set_rng_state(generator, state["rng"])


def _resumed_history(state: dict | None, steps_per_epoch: int) -> tuple[int, LossHistory]:
    """``(epochs already trained, the losses so far)``: ``(0, empty history)`` for a new run, else the
    checkpoint's epoch and its per-step and validation losses."""
    if not state:
        return 0, LossHistory(steps_per_epoch=steps_per_epoch)
    return state["epoch"], LossHistory(state["losses"], state.get("validation_losses", ()), steps_per_epoch)


def _train_epoch(run: _Run, options: _Options, epoch: int) -> list[float]:
    """One epoch: a step on each full batch of a fresh shuffle (drawn from the run's generator), then the
    learning-rate decay. Returns the ``len(data) // batch_size`` losses, copied to the host once, at the end."""
    steps_per_epoch = run.data.num_batches(options.batch_size)
    epoch_losses = torch.empty(steps_per_epoch, device=run.data.device)
    bar = tqdm(run.data.batches(options.batch_size, run.generator), total=steps_per_epoch,
               disable=not options.progress, desc=f"epoch {epoch}/{options.epochs}", leave=False)
    for index, (images, labels) in enumerate(bar):
        epoch_losses[index] = run.step(images, labels, run.generator)
    run.scheduler.step()
    return epoch_losses.tolist()


def _validate(run: _Run, options: _Options, epoch: int, losses: LossHistory) -> float:
    """:func:`validation_loss` on ``options.validation`` (with the EMA weights if any), appended to
    ``losses.validation`` as epoch ``epoch``'s (``nan`` for earlier epochs without one); the model back in train
    mode. Returns the value."""
    with run.ema_weights():
        value = validation_loss(run.model, run.loss_fn, options.validation, options.batch_size, dtype=run.dtype)
    run.model.train()
    losses.validation.extend([float("nan")] * (epoch - 1 - len(losses.validation)) + [value])
    return value


def _checkpoint_state(run: _Run, epoch: int, losses: LossHistory) -> dict:
    """What a checkpoint holds after ``epoch``: every state :func:`_restore` loads, the EMA's (or ``None``), the
    precision's name (:func:`_dtype_name`), and the losses so far, per step and per epoch."""
    return {"model": run.model.state_dict(), "optimizer": run.optimizer.state_dict(),
            "scheduler": run.scheduler.state_dict(), "scaler": run.scaler.state_dict(),
            "ema": run.ema.state_dict() if run.ema is not None else None, "precision": _dtype_name(run.dtype),
            "epoch": epoch, "losses": list(losses), "validation_losses": list(losses.validation),
            "rng": rng_state(run.generator)}


def _end_epoch(run: _Run, options: _Options, epoch: int, losses: LossHistory) -> None:
    """After epoch ``epoch``'s losses are in ``losses``: the validation loss, the one-line report (with a
    progress bar), the checkpoint, then the callback (on the EMA weights); the model is left in train mode."""
    steps = losses.steps_per_epoch
    report = f"epoch {epoch}/{options.epochs}: mean loss {sum(losses[-steps:]) / steps:.4f}"
    if options.validation is not None:
        report += f", validation loss {_validate(run, options, epoch, losses):.4f}"
    if options.progress:
        tqdm.write(report)
    if options.checkpoint_dir is not None:
        checkpoints.save_checkpoint(options.checkpoint_dir, epoch, _checkpoint_state(run, epoch, losses))
    if options.on_epoch_end is not None:
        with run.ema_weights():
            options.on_epoch_end(epoch, run.model, losses)
        run.model.train()


def train(model: nn.Module, loss_fn: LossFunction, data: DeviceImages, *, epochs: int, batch_size: int,
          learning_rate: float, lr_gamma: float = 1.0, seed: int = 0,
          checkpoint_dir: str | os.PathLike | None = None, progress: bool = True,
          on_epoch_end: EpochCallback | None = None, ema_decay: float | None = None,
          capture: bool | None = None, compiler: Compiler | None = None,
          validation: DeviceImages | None = None) -> LossHistory:
    """Train ``model`` in place and return the loss of every optimizer step, over all epochs (a
    :class:`LossHistory`: a list of floats, with the validation losses in ``.validation``).

    Every step sees a full batch: each epoch is ``len(data) // batch_size`` steps over a fresh shuffle, and
    the ``len(data) % batch_size`` images left over (different ones each epoch) are skipped. So the loss
    history has that many entries per epoch, and the captured step keeps one shape (no recompiles).

    Args:
        model: an ``nn.Module`` already on ``data.device``.
        loss_fn: ``loss_fn(model, images, labels, generator) -> scalar loss``; images come in the
            data's value range, (B, 1, 28, 28); it must draw its noise with ``generator``.
        data: the training images on the training device.
        epochs, batch_size, learning_rate: the budget (see :func:`course_lib.stages.budget`).
        lr_gamma: ExponentialLR factor applied after each epoch (1.0: constant rate).
        seed: seeds the training generator (batch order and noise).
        checkpoint_dir: a folder to checkpoint to after every epoch and to resume from (``None``: no checkpoints).
        progress: show a progress bar.
        on_epoch_end: ``callback(epoch, model, losses)`` after each epoch (epochs count from 1),
            e.g. to draw samples after epochs 1 and 5; the model is back in train mode afterwards. ``losses`` is
            the :class:`LossHistory` so far, validation losses included.
        ema_decay: keep an EMA of the weights with this decay in (0, 1), e.g. 0.999 (``None``: no EMA). It is
            checkpointed and resumed with the rest; callbacks see the EMA weights (swapped in, then back), and the
            model ends with the EMA weights (the last trained ones stay in the checkpoint's ``"model"``).
        capture: compile the loss for CUDA graphs (:class:`TrainStep`); default: on CUDA only.
        compiler: how to compile it (default :func:`compile_for_capture`).
        validation: held-out images on the data's device (:func:`course_lib.data.validation_split`): after every
            epoch, :func:`validation_loss` on them (the same loss, eval mode, no gradients, the same noise every
            epoch; the EMA weights when there is an EMA), stored in the history's ``validation``, printed with the
            progress and checkpointed.
    """
    options = _Options(epochs=epochs, batch_size=batch_size, learning_rate=learning_rate, lr_gamma=lr_gamma, seed=seed,
                       checkpoint_dir=checkpoint_dir, progress=progress, on_epoch_end=on_epoch_end,
                       ema_decay=ema_decay, capture=capture, compiler=compiler, validation=validation)
    _check(options, model, data)
    state = checkpoints.load_latest(checkpoint_dir, map_location=data.device) if checkpoint_dir is not None else None
    run = _start(model, loss_fn, data, options, state)
    start_epoch, losses = _resumed_history(state, data.num_batches(batch_size))
    model.train()
    for epoch in range(start_epoch + 1, epochs + 1):
        losses.extend(_train_epoch(run, options, epoch))
        _end_epoch(run, options, epoch, losses)
    if run.ema is not None:
        run.ema.copy_to(model)
    return losses
