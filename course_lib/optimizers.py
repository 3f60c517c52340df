"""Adam, chosen in one place: one fused kernel on CUDA, the grouped ``foreach`` kernels elsewhere, for a new
optimizer (:func:`make_optimizer`) and for one loaded from a checkpoint written on another device
(:func:`use_implementation`)."""

from __future__ import annotations

import torch


def adam_implementation(device: torch.device | str) -> dict:
    """Adam's kernel choice for ``device``, made here only: one fused kernel on CUDA (no host sync, even with
    a GradScaler), the grouped ``foreach`` kernels elsewhere (same arithmetic as the per-tensor loop).

    Returns ``{"fused": True, "foreach": None}`` on CUDA, ``{"fused": None, "foreach": True}`` elsewhere."""
    if torch.device(device).type == "cuda":
        return {"fused": True, "foreach": None}
    return {"fused": None, "foreach": True}


def make_optimizer(parameters, learning_rate: float, device: torch.device | str) -> torch.optim.Adam:
    """``torch.optim.Adam(parameters, lr=learning_rate)`` with :func:`adam_implementation` of ``device``."""
    return torch.optim.Adam(parameters, lr=learning_rate, **adam_implementation(device))


def use_implementation(optimizer: torch.optim.Optimizer, device: torch.device) -> None:
    """Re-apply :func:`adam_implementation` after ``load_state_dict`` (which restores the saved flags, e.g. of a
    checkpoint written on another device) and put each ``step`` counter (a 0-dim tensor) where that choice wants
    it: on the parameter's device as float32 for the fused kernel, on the CPU otherwise."""
    for group in optimizer.param_groups:
        group.update(adam_implementation(device))
        for parameter in group["params"]:
            state = optimizer.state.get(parameter, {})
            if "step" in state:
                fused = bool(group["fused"])
                where = parameter.device if fused or group.get("capturable") else torch.device("cpu")
                state["step"] = state["step"].to(where, torch.float32 if fused else state["step"].dtype)
