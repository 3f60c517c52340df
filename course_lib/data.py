"""MNIST: the torchvision dataset, and a fast path that keeps a whole split on the training device.

Pixel ranges are converted in one place, :func:`to_range`: ``"unit"`` is [0, 1] (stage 2, the
single-step denoiser) and ``"signed"`` is [-1, 1] (the diffusion stages). :func:`validation_split` holds out
one digit in twelve of the training images for validation: 55,000/5,000 of MNIST's 60,000.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import torch
import torch.nn.functional as F

from .runtime import cache_dir, in_colab
from .validation import check_choice, check_positive_int, check_tensor

VALUE_RANGES = ("unit", "signed")
IMAGE_SHAPE = (1, 28, 28)
NUM_CLASSES = 10
SUBSET_SEED = 0  # fixes which images a subset holds
VALIDATION_FRACTION = 5_000 / 60_000  # the share of the training images held out: MNIST's 55,000/5,000 split
SPLIT_SEED = 1  # fixes which images are held out


def default_root() -> Path:
    """Where MNIST lives: ``$COURSE_DATA_DIR``, else ``/content/data`` on Colab, else a user cache folder."""
    if os.environ.get("COURSE_DATA_DIR"):
        return Path(os.environ["COURSE_DATA_DIR"]).expanduser()
    if in_colab():
        return Path("/content/data")
    return cache_dir() / "data"


def load_mnist(train: bool, root: str | os.PathLike | None = None):
    """The torchvision MNIST split (``train=True``: training digits, else the 10,000 test digits).

    Downloads into ``root`` (default :func:`default_root`) when the files are not already there.
    Items are ``(PIL image, label)``; use :class:`DeviceImages` to train on it quickly.
    """
    from torchvision.datasets import MNIST

    root = Path(root) if root is not None else default_root()
    return MNIST(str(root), train=train, download=True)


def to_range(images: torch.Tensor, value_range: str) -> torch.Tensor:
    """Convert uint8 pixels (0..255) to floats in [0, 1] (``"unit"``) or [-1, 1] (``"signed"``)."""
    check_tensor("images", images)
    check_choice("value_range", value_range, VALUE_RANGES)
    if images.dtype != torch.uint8:
        raise TypeError(f"`images` must be uint8 pixels (0..255), got {images.dtype}")
    unit = images.float() / 255.0
    return unit if value_range == "unit" else unit * 2.0 - 1.0


def to_unit(images: torch.Tensor) -> torch.Tensor:
    """Map images in [-1, 1] back to [0, 1] for display, clamping what lies outside."""
    return ((images + 1.0) / 2.0).clamp(0.0, 1.0)


class DeviceImages:
    """A whole MNIST split held on one device as uint8, with shuffled batches drawn there.

    Args:
        images: uint8 tensor of shape (N, 1, 28, 28).
        labels: int64 tensor of shape (N,), digits 0..9.
        value_range: ``"unit"`` or ``"signed"``: the range of the float batches handed out.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, value_range: str = "signed"):
        check_tensor("images", images, ndim=4)
        check_tensor("labels", labels, ndim=1)
        check_choice("value_range", value_range, VALUE_RANGES)
        if len(images) != len(labels):
            raise ValueError(f"`images` and `labels` must have the same length, got {len(images)} and {len(labels)}")
        self.images = images
        self.labels = labels
        self.value_range = value_range

    @classmethod
    def from_dataset(cls, dataset, device: torch.device | str = "cpu", value_range: str = "signed",
                     subset_size: int | None = None) -> "DeviceImages":
        """Copy a torchvision MNIST split to ``device``: all of it, or ``subset_size`` images.

        The subset is a fixed pseudo-random choice (the same every time), so it holds every digit
        even when a split is stored sorted by class.
        """
        images, labels = dataset.data, dataset.targets
        if subset_size is not None and check_positive_int("subset_size", subset_size) < len(images):
            chosen = torch.randperm(len(images), generator=torch.Generator().manual_seed(SUBSET_SEED))
            chosen = chosen[:subset_size].sort().values
            images, labels = images[chosen], labels[chosen]
        return cls(images.unsqueeze(1).to(device), labels.to(device), value_range)

    @property
    def device(self) -> torch.device:
        return self.images.device

    def __len__(self) -> int:
        return len(self.images)

    def num_batches(self, batch_size: int) -> int:
        """Number of full batches per epoch (the last, partial one is dropped)."""
        return len(self) // check_positive_int("batch_size", batch_size)

    def batches(self, batch_size: int, generator: torch.Generator | None = None, shuffle: bool = True,
                drop_last: bool = True) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield ``(images, labels)`` batches: floats (B, 1, 28, 28) in ``value_range`` and int64 (B,).

        The order is a permutation drawn with ``generator`` (which must live on this device), or the stored
        order when ``shuffle`` is False. With ``drop_last`` (training) every batch is full and the
        ``len(self) % batch_size`` images left over are skipped; without it (evaluation) every image comes once,
        the last batch holding the rest.
        """
        check_positive_int("batch_size", batch_size)
        count = self.num_batches(batch_size)
        if drop_last and count == 0:
            raise ValueError(f"`batch_size` ({batch_size}) is larger than the {len(self)} images held")
        order = (torch.randperm(len(self), device=self.device, generator=generator) if shuffle
                 else torch.arange(len(self), device=self.device))
        if drop_last:
            order = order[: count * batch_size]
        for index in order.split(batch_size):
            yield to_range(self.images[index], self.value_range), self.labels[index]

    def subset(self, indices: torch.Tensor) -> "DeviceImages":
        """The images at ``indices`` (int64, any order) with their labels, in the same value range."""
        indices = indices.to(self.device)
        return DeviceImages(self.images[indices], self.labels[indices], self.value_range)

    def first(self, count: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The first ``count`` images (floats in ``value_range``) and their labels, in a fixed order."""
        check_positive_int("count", count)
        return to_range(self.images[:count], self.value_range), self.labels[:count]


def validation_split(data: DeviceImages, fraction: float = VALIDATION_FRACTION,
                     seed: int = SPLIT_SEED) -> tuple[DeviceImages, DeviceImages]:
    """Split ``data`` into ``(training, validation)``: disjoint, together every image once.

    The validation part holds ``round(fraction * len(data))`` images (5,000 of MNIST's 60,000 training digits by
    default, 417 of an offline copy's 5,000), a pseudo-random choice fixed by ``seed``, so it is the same in every
    run and holds every digit even when the split is stored sorted by class. Each part keeps the stored order.
    """
    if not isinstance(fraction, float) or not 0.0 < fraction < 1.0:
        raise ValueError(f"`fraction` must be a float in (0, 1), got {fraction!r}")
    held_out = round(fraction * len(data))
    if not 0 < held_out < len(data):
        raise ValueError(f"`fraction` ({fraction:g}) of {len(data)} images leaves one part empty")
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))
    return data.subset(order[held_out:].sort().values), data.subset(order[:held_out].sort().values)


def one_hot(labels: torch.Tensor, num_classes: int = NUM_CLASSES) -> torch.Tensor:
    """Integer labels (N,) in 0..num_classes-1 to float one-hot rows (N, num_classes)."""
    check_tensor("labels", labels, ndim=1, floating=False)
    check_positive_int("num_classes", num_classes)
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ValueError(f"`labels` must hold integers in 0..{num_classes - 1}, "
                         f"got values from {int(labels.min())} to {int(labels.max())}")
    return F.one_hot(labels, num_classes).float()
