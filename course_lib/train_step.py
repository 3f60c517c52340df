"""One optimizer step, eager or captured: what :func:`course_lib.training.train` runs for every batch and
:func:`course_lib.precision.step_seconds` times.

:func:`optimizer_step` is the eager step. :class:`TrainStep` runs it, with the loss compiled for CUDA graphs when
asked (:func:`compile_for_capture`) and the eager step as the fallback when capturing fails in the first steps.
Nothing here reads a value back from the device.
"""

from __future__ import annotations

import copy
from typing import Callable

import torch
from torch import nn

from .ema import EMA

LossFunction = Callable[[nn.Module, torch.Tensor, torch.Tensor, torch.Generator], torch.Tensor]
Compiler = Callable[[LossFunction], LossFunction]
CAPTURE_TRIAL_STEPS = 3  # compiling and CUDA-graph recording happen in the first steps; a failure there falls back


def optimizer_step(model: nn.Module, loss_fn: LossFunction, images: torch.Tensor, labels: torch.Tensor,
                   generator: torch.Generator, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
                   dtype: torch.dtype | None, ema: EMA | None = None) -> torch.Tensor:
    """One gradient step on a batch under autocast ``dtype`` (``None``: fp32); returns the detached loss (a 0-dim
    tensor on the device).

    ``scaler`` scales the loss for fp16 (it is a no-op when disabled); ``ema`` (optional) is updated after the
    step. Nothing here reads a value back from the device, so the step does not wait for the GPU.
    """
    with torch.autocast(images.device.type, dtype=dtype, enabled=dtype is not None):
        loss = loss_fn(model, images, labels, generator)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    if ema is not None:
        ema.update(model)
    return loss.detach()


def compile_for_capture(loss_fn: LossFunction) -> LossFunction:
    """``torch.compile(loss_fn, mode="reduce-overhead", dynamic=False)``: inductor kernels for the forward and
    backward passes, replayed as CUDA graphs, for one fixed batch shape.

    Draws with a ``torch.Generator`` (and a student's ``.item()``) are graph breaks: they run eagerly between
    the captured pieces, so the random stream is the eager one.
    """
    return torch.compile(loss_fn, mode="reduce-overhead", dynamic=False)


def _mark_step_begin() -> None:
    """Tell CUDA-graph trees that a new training step begins (absent before torch 2.2: then a no-op)."""
    getattr(torch.compiler, "cudagraph_mark_step_begin", lambda: None)()


def rng_state(generator: torch.Generator) -> dict:
    """Every random state training draws from: ``{"generator": generator's state, "torch": the global CPU
    state, "cuda": the global state of the generator's CUDA device (``None`` off CUDA)}``, as uint8 tensors."""
    device = generator.device
    return {"generator": generator.get_state(), "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None}


def set_rng_state(generator: torch.Generator, state: dict) -> None:
    """Put back a :func:`rng_state` (possibly loaded onto another device): ``generator``'s and the global ones."""
    generator.set_state(state["generator"].cpu())
    torch.set_rng_state(state["torch"])
    if generator.device.type == "cuda" and state["cuda"] is not None:
        torch.cuda.set_rng_state(state["cuda"], generator.device)


class TrainStep:
    """``step(images, labels, generator) -> loss``: :func:`optimizer_step`, with the loss captured when asked.

    Args:
        model, loss_fn, optimizer, scaler, dtype, ema: as in :func:`optimizer_step`.
        capture: compile ``loss_fn`` with ``compiler`` (default :func:`compile_for_capture`).
        compiler: ``compiler(loss_fn) -> compiled loss_fn``.

    If compiling, or running the compiled loss, raises during the first ``CAPTURE_TRIAL_STEPS`` steps, the
    state the step changes (weights, buffers, optimizer, scaler, EMA, random generators) is restored, one
    line is printed, and that step and all later ones run eagerly: the loss trajectory is the eager one.
    The loss returned is a fresh 0-dim tensor on the device (captured outputs are overwritten by the next replay).
    """

    def __init__(self, model: nn.Module, loss_fn: LossFunction, optimizer: torch.optim.Optimizer,
                 scaler: torch.amp.GradScaler, dtype: torch.dtype | None, *, ema: EMA | None = None,
                 capture: bool = False, compiler: Compiler | None = None):
        self.model, self.loss_fn, self.optimizer, self.scaler, self.dtype, self.ema = \
            model, loss_fn, optimizer, scaler, dtype, ema
        self.captured_loss: LossFunction | None = None
        self.trials_left = CAPTURE_TRIAL_STEPS
        if capture:
            try:
                self.captured_loss = (compiler or compile_for_capture)(loss_fn)
            except Exception as error:  # e.g. torch.compile unsupported on this Python or platform
                self._give_up(error)

    @property
    def captured(self) -> bool:
        """Whether the steps run the compiled loss (``False`` from the start, or after a fallback)."""
        return self.captured_loss is not None

    def _run(self, loss_fn, images, labels, generator) -> torch.Tensor:
        """:func:`optimizer_step` with ``loss_fn`` (the eager or the compiled one); the loss, 0-dim."""
        return optimizer_step(self.model, loss_fn, images, labels, generator, self.optimizer, self.scaler,
                              self.dtype, self.ema)

    def __call__(self, images: torch.Tensor, labels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """One step on images (B, 1, 28, 28) and labels (B,) int64; the loss, a fresh 0-dim tensor on the device.
        While trials are left, a captured step that raises is undone and rerun eagerly."""
        if self.captured_loss is None:
            return self._run(self.loss_fn, images, labels, generator)
        if self.trials_left == 0:
            _mark_step_begin()
            return self._run(self.captured_loss, images, labels, generator).clone()
        saved = self._snapshot(generator)
        try:
            _mark_step_begin()
            loss = self._run(self.captured_loss, images, labels, generator).clone()
        except Exception as error:
            self._restore(saved, generator)
            self._give_up(error)
            return self._run(self.loss_fn, images, labels, generator)
        self.trials_left -= 1
        return loss

    def _give_up(self, error: Exception) -> None:
        """Run eagerly from now on, and say why in one line (the error's first line, at most 160 characters)."""
        self.captured_loss = None
        reason = (str(error).strip().splitlines() or [""])[0][:160]
        print(f"Note: could not capture the training step ({type(error).__name__}: {reason}); training eagerly.")

    def _snapshot(self, generator: torch.Generator) -> dict:
        """Copies of all a step changes: weights and buffers, optimizer, scaler, EMA (or ``None``), random states."""
        return {"model": {name: value.clone() for name, value in self.model.state_dict().items()},
                "optimizer": copy.deepcopy(self.optimizer.state_dict()),
                "scaler": copy.deepcopy(self.scaler.state_dict()),
                "ema": copy.deepcopy(self.ema.state_dict()) if self.ema is not None else None,
                "rng": rng_state(generator)}

    def _restore(self, saved: dict, generator: torch.Generator) -> None:
        """Put back a :meth:`_snapshot`, as if the failed step had not run."""
        self.model.load_state_dict(saved["model"])
        self.optimizer.load_state_dict(saved["optimizer"])
        self.scaler.load_state_dict(saved["scaler"])
        if self.ema is not None:
            self.ema.load_state_dict(saved["ema"])
        set_rng_state(generator, saved["rng"])
