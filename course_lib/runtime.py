"""Where the course runs: Colab detection, device, precision, mode and seeding.

Device and precision are decided here once; notebooks and the training code ask this module
instead of deciding in every cell.
"""

from __future__ import annotations

import os
import random
import sys
from pathlib import Path

import torch

MODES = ("full", "quick")


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


def describe() -> str:
    """One line for the top of a notebook: the device, its precision, and the mode."""
    device = pick_device()
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    dtype = autocast_dtype(device)
    precision = "fp32" if dtype is None else f"{str(dtype).removeprefix('torch.')} mixed precision"
    where = "Colab" if in_colab() else "local"
    return f"Running on {name} ({precision}, {where}) in {course_mode()!r} mode."
