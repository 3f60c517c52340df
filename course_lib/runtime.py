"""Where the course runs: Colab detection, device, precision, mode, seeding and per-stage budgets.

Device and precision are decided here once; notebooks and the training code ask this module
instead of deciding in every cell.
"""

from __future__ import annotations

import os
import random
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from .validation import check_choice

MODES = ("full", "quick")
STAGES = ("denoiser", "ddpm", "cfg", "flow")
COURSE_NUM_STEPS = 300  # T of the course (COURSE.md); 1000 in Ho et al.


def in_colab() -> bool:
    """True when running inside Google Colab."""
    return "google.colab" in sys.modules or "COLAB_RELEASE_TAG" in os.environ


def cache_dir() -> Path:
    """The course's own cache folder: ``$XDG_CACHE_HOME/course_lib``, else ``~/.cache/course_lib``."""
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "course_lib"


def pick_device() -> torch.device:
    """The GPU when there is one, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def course_mode() -> str:
    """``"full"`` (the assignment's real budgets) or ``"quick"`` (seconds, for CI and grading).

    Read from the environment variable ``COURSE_MODE`` (default ``"full"``). ``quick`` is forced
    whenever ``NBGRADER_EXECUTION`` is set, which nbgrader does while it grades a notebook.
    """
    if os.environ.get("NBGRADER_EXECUTION"):
        return "quick"
    mode = os.environ.get("COURSE_MODE", "full").strip().lower() or "full"
    if mode not in MODES:
        raise ValueError(f"environment variable COURSE_MODE must be one of {list(MODES)}, got {mode!r}")
    return mode


def autocast_dtype(device: torch.device | str) -> torch.dtype | None:
    """The mixed-precision dtype for ``device``.

    fp16 on GPUs of compute capability below 8 (a T4 is 7.5; it needs a gradient scaler),
    bf16 from 8 up (A100, H100), and ``None`` (plain fp32) on the CPU.
    """
    device = torch.device(device)
    if device.type != "cuda":
        return None
    major, _ = torch.cuda.get_device_capability(device)
    return torch.float16 if major < 8 else torch.bfloat16


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy (when installed) and torch; return a CPU generator seeded with ``seed``."""
    random.seed(seed)
    torch.manual_seed(seed)
    try:
        import numpy as np

        np.random.seed(seed % 2**32)
    except ImportError:  # numpy is optional for course_lib itself
        pass
    return torch.Generator().manual_seed(seed)


@dataclass(frozen=True)
class StageBudget:
    """How much one stage trains in one mode.

    Attributes:
        epochs: passes over the training images.
        batch_size: images per optimizer step.
        num_hiddens: D, the UNet width.
        subset_size: number of training images used (``None``: the whole split).
        learning_rate: Adam's learning rate.
        num_steps: T, the number of diffusion steps (ignored by the single-step denoiser).
        decay_lr: multiply the learning rate by ``0.1 ** (1 / epochs)`` after each epoch.
        eval_samples: how many samples a notebook draws to measure quality (course_lib.quality).
    """

    epochs: int
    batch_size: int
    num_hiddens: int
    subset_size: int | None
    learning_rate: float
    num_steps: int = COURSE_NUM_STEPS
    decay_lr: bool = False
    eval_samples: int = 1000

    def schedule(self):
        """The linear DDPM schedule of this budget's T, on the CPU (``.to(device)`` it).

        At T = 300 it is the course's schedule (beta from 1e-4 to 0.02). A shorter quick-mode T scales both
        betas by 300 / T, so the sum of the betas, and with it alpha_bar at the last step (about 0.05),
        stays the same: x_T is still close to pure noise, which sampling starts from.
        """
        from .noise import DDPMSchedule

        scale = COURSE_NUM_STEPS / self.num_steps
        return DDPMSchedule(self.num_steps, beta_start=1e-4 * scale, beta_end=0.02 * scale)

    @property
    def lr_gamma(self) -> float:
        """The ExponentialLR factor: the rate ends 10x lower after the last epoch (1.0 when not decaying)."""
        return 0.1 ** (1 / self.epochs) if self.decay_lr else 1.0


# One table for the whole course: full = the assignment (COURSE.md), quick = a few seconds on a CPU.
BUDGETS: dict[str, dict[str, StageBudget]] = {
    "full": {
        "denoiser": StageBudget(epochs=5, batch_size=256, num_hiddens=128, subset_size=None, learning_rate=1e-4),
        "ddpm": StageBudget(epochs=20, batch_size=128, num_hiddens=64, subset_size=None, learning_rate=1e-3,
                            decay_lr=True),
        "cfg": StageBudget(epochs=20, batch_size=128, num_hiddens=64, subset_size=None, learning_rate=1e-3,
                           decay_lr=True),
        "flow": StageBudget(epochs=20, batch_size=128, num_hiddens=64, subset_size=None, learning_rate=1e-3,
                            decay_lr=True),
    },
    "quick": {
        "denoiser": StageBudget(epochs=2, batch_size=64, num_hiddens=16, subset_size=512, learning_rate=1e-3,
                                eval_samples=100),
        "ddpm": StageBudget(epochs=2, batch_size=64, num_hiddens=16, subset_size=512, learning_rate=1e-3,
                            num_steps=50, decay_lr=True, eval_samples=100),
        "cfg": StageBudget(epochs=2, batch_size=64, num_hiddens=16, subset_size=512, learning_rate=1e-3,
                           num_steps=50, decay_lr=True, eval_samples=100),
        "flow": StageBudget(epochs=2, batch_size=64, num_hiddens=16, subset_size=512, learning_rate=1e-3,
                            decay_lr=True, eval_samples=100),
    },
}


def budget(stage: str, mode: str | None = None) -> StageBudget:
    """The budget of ``stage`` (one of ``STAGES``) in ``mode`` (default: :func:`course_mode`)."""
    check_choice("stage", stage, STAGES)
    mode = course_mode() if mode is None else mode
    check_choice("mode", mode, MODES)
    return BUDGETS[mode][stage]


def describe() -> str:
    """One line for the top of a notebook: the device, its precision, and the mode."""
    device = pick_device()
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    dtype = autocast_dtype(device)
    precision = "fp32" if dtype is None else f"{str(dtype).removeprefix('torch.')} mixed precision"
    where = "Colab" if in_colab() else "local"
    return f"Running on {name} ({precision}, {where}) in {course_mode()!r} mode."
