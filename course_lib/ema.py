"""An exponential moving average (EMA) of a model's weights, for sampling.

After update n (counting from 0) the average is ``ema <- d_n * ema + (1 - d_n) * weights`` with
``d_n = min(decay, (1 + n) / (10 + n))``: the warm-up keeps the first updates from being dominated by
the random initial weights (d_0 = 0.1, d_10 = 0.55, ...; d_n reaches 0.999 near n = 9,000).

What is averaged: every floating-point entry of ``model.state_dict()``, i.e. the parameters *and*
BatchNorm's running mean and variance (the statistics then describe the averaged weights better than
the last step's statistics do, as in timm's ModelEmaV2); integer buffers (BatchNorm's
``num_batches_tracked``) are copied. The average has the model's dtypes and device and is updated
with ``torch._foreach_lerp_`` (a few kernel launches, no host sync).
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import nn


def warmup_decay(decay: float, num_updates: int) -> float:
    """``min(decay, (1 + n) / (10 + n))`` for update number n >= 0: a number in [0.1, decay]."""
    return min(decay, (1 + num_updates) / (10 + num_updates))


class EMA:
    """The EMA of ``model``'s weights, starting from a copy of them.

    Args:
        model: the model being trained (its state dict's names and shapes are fixed from here on).
        decay: the long-run decay d in (0, 1), e.g. 0.999 (an average over about 1 / (1 - d) steps).
    """

    def __init__(self, model: nn.Module, decay: float = 0.999):
        if not isinstance(decay, float) or not 0.0 < decay < 1.0:
            raise ValueError(f"`decay` must be a float in (0, 1), got {decay!r}")
        self.decay = decay
        self.num_updates = 0
        self.shadow = {name: value.detach().clone() for name, value in model.state_dict().items()}

    def _pairs(self, model: nn.Module) -> tuple[list, list, list, list]:
        """(averaged shadows, their model tensors, copied shadows, their model tensors)."""
        averaged, averaged_src, copied, copied_src = [], [], [], []
        for name, value in model.state_dict().items():
            if value.is_floating_point():
                averaged.append(self.shadow[name])
                averaged_src.append(value.detach())
            else:
                copied.append(self.shadow[name])
                copied_src.append(value)
        return averaged, averaged_src, copied, copied_src

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Fold the model's current weights into the average (call after every optimizer step)."""
        averaged, averaged_src, copied, copied_src = self._pairs(model)
        weight = 1.0 - warmup_decay(self.decay, self.num_updates)
        if averaged:
            torch._foreach_lerp_(averaged, averaged_src, weight)
        if copied:
            torch._foreach_copy_(copied, copied_src)
        self.num_updates += 1

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        """Overwrite the model's weights and buffers with the average (in place)."""
        for name, value in model.state_dict().items():
            value.copy_(self.shadow[name])

    @contextlib.contextmanager
    def swapped_in(self, model: nn.Module) -> Iterator[nn.Module]:
        """``with ema.swapped_in(model): sample(model)``: the EMA weights inside, the trained ones restored after."""
        saved = {name: value.detach().clone() for name, value in model.state_dict().items()}
        self.copy_to(model)
        try:
            yield model
        finally:
            with torch.no_grad():
                for name, value in model.state_dict().items():
                    value.copy_(saved[name])

    def state_dict(self) -> dict:
        """``{"decay", "num_updates", "shadow"}``; the tensors are the live ones (``torch.save`` copies them)."""
        return {"decay": self.decay, "num_updates": self.num_updates, "shadow": self.shadow}

    def load_state_dict(self, state: dict) -> None:
        """Restore ``num_updates`` and the average (copied in place); the decay stays the constructor's."""
        missing = set(self.shadow) ^ set(state["shadow"])
        if missing:
            raise ValueError(f"EMA state does not match the model: differing entries {sorted(missing)}")
        self.num_updates = int(state["num_updates"])
        for name, value in state["shadow"].items():
            self.shadow[name].copy_(value)
