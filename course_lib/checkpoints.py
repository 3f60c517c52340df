"""Checkpoints: one file per epoch in a folder, written atomically, newest found by its epoch number.

On Colab the folder can live on a mounted Google Drive (:func:`default_checkpoint_dir`), so a
disconnected runtime resumes where it stopped.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch

from .runtime import in_colab

DRIVE_ROOT = Path("/content/drive/MyDrive")
_NAME = re.compile(r"^epoch-(\d+)\.pt$")


def default_checkpoint_dir(stage: str) -> Path:
    """``MyDrive/diffusion-course/checkpoints/<stage>`` when Google Drive is mounted in Colab,
    else ``checkpoints/<stage>`` under the working directory."""
    base = DRIVE_ROOT / "diffusion-course" if in_colab() and DRIVE_ROOT.is_dir() else Path.cwd()
    return base / "checkpoints" / stage


def checkpoint_path(folder: str | os.PathLike, epoch: int) -> Path:
    return Path(folder) / f"epoch-{epoch:03d}.pt"


def list_checkpoints(folder: str | os.PathLike) -> list[tuple[int, Path]]:
    """``(epoch, path)`` of every checkpoint in ``folder``, oldest first (empty if the folder is missing)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _NAME.match(p.name))]
    return sorted(found)


def save_checkpoint(folder: str | os.PathLike, epoch: int, state: dict, keep: int = 2) -> Path:
    """Write ``state`` as the checkpoint of ``epoch`` and delete all but the newest ``keep`` files."""
    path = checkpoint_path(folder, epoch)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    torch.save(state, partial)
    os.replace(partial, path)
    for _, old in list_checkpoints(folder)[:-keep]:
        old.unlink(missing_ok=True)
    return path


def load_latest(folder: str | os.PathLike, map_location=None) -> dict | None:
    """The newest checkpoint's state in ``folder``, or ``None`` when there is none."""
    found = list_checkpoints(folder)
    if not found:
        return None
    return torch.load(found[-1][1], map_location=map_location, weights_only=False)
