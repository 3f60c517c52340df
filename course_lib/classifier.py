"""The reference MNIST classifier, used only to *evaluate* generated digits (never to guide sampling).

A small CNN whose penultimate layer (128 features) gives the features of the Frechet distance in
:mod:`course_lib.quality`; its softmax gives the confidence and the predicted digit of a sample. The
package ships trained weights (``course_lib/weights/mnist_classifier.pt``, stored in fp16, about
0.5 MB); :func:`load_classifier` loads them once per device.

    MNISTClassifier: images (N, 1, 28, 28) in [0, 1]
        Conv(1->32) [28] -> MaxPool [14] -> Conv(32->64) [14] -> MaxPool [7] -> Conv(64->128) [7]
        -> MaxPool [3] -> Flatten (1152) -> Linear(1152->128) + BatchNorm + ReLU -> features (N, 128)
        -> Dropout -> Linear(128->10) -> logits (N, 10)
    (Conv = 3x3 convolution, pad 1, + BatchNorm + ReLU.)

Retrain it (e.g. on the full 60,000 training digits when they are available) with::

    python -m course_lib.classifier --train                 # all training digits of the MNIST root
    python -m course_lib.classifier --train --epochs 8 --out my_classifier.pt
    python -m course_lib.classifier --evaluate               # accuracy of the shipped weights on the test split

The weights were trained on the 5,000 training digits available offline; their file records how
(``meta``: training images, epochs, seed, test accuracy).
"""

from __future__ import annotations

import argparse
import math
import os
import time
from functools import lru_cache
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .data import NUM_CLASSES, DeviceImages, load_mnist
from .runtime import pick_device
from .validation import check_batch_vector, check_images, check_in_range, check_positive_int, check_tensor

WEIGHTS_PATH = Path(__file__).resolve().parent / "weights" / "mnist_classifier.pt"
FEATURE_DIM = 128


def _conv(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
                         nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True))


class MNISTClassifier(nn.Module):
    """Small CNN for 28x28 digits. ``forward(x)`` gives logits (N, 10); ``features(x)`` the penultimate
    features (N, 128). ``x``: floats (N, 1, 28, 28) in [0, 1] (the "unit" range of :mod:`course_lib.data`)."""

    def __init__(self, width: int = 32, dropout: float = 0.2):
        super().__init__()
        w = check_positive_int("width", width)
        self.body = nn.Sequential(
            _conv(1, w), nn.MaxPool2d(2),
            _conv(w, 2 * w), nn.MaxPool2d(2),
            _conv(2 * w, 4 * w), nn.MaxPool2d(2), nn.Flatten(),
            nn.Linear(4 * w * 3 * 3, 4 * w), nn.BatchNorm1d(4 * w), nn.ReLU(inplace=True),
        )
        self.head = nn.Sequential(nn.Dropout(check_in_range("dropout", dropout, 0.0, 1.0)),
                                  nn.Linear(4 * w, NUM_CLASSES))
        self.feature_dim = 4 * w

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features (N, 4 * width) of images (N, 1, 28, 28) in [0, 1]."""
        check_images("x", x, channels=1, size=28)
        return self.body(x * 2.0 - 1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (N, 10) of images (N, 1, 28, 28) in [0, 1]."""
        return self.head(self.features(x))


def augment(images: torch.Tensor, generator: torch.Generator | None = None, max_degrees: float = 12.0,
            max_shift: float = 2.5, scale_range: tuple[float, float] = (0.9, 1.1)) -> torch.Tensor:
    """Random small rotation, scaling and shift of each image (N, 1, 28, 28); shift in pixels.

    One affine transform per image, drawn with ``generator``; bilinear resampling, zeros outside.
    """
    check_images("images", images, channels=1)
    n, device = images.shape[0], images.device
    uniform = torch.rand((n, 4), generator=generator, device=device) * 2 - 1      # in [-1, 1)
    angle = uniform[:, 0] * math.radians(max_degrees)
    low, high = scale_range
    scale = (low + high) / 2 + uniform[:, 1] * (high - low) / 2
    shift = uniform[:, 2:] * (2 * max_shift / images.shape[-1])                   # pixels -> [-1, 1] grid units
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def train_classifier(data: DeviceImages, *, epochs: int = 25, batch_size: int = 128, learning_rate: float = 3e-3,
                     seed: int = 0, progress: bool = True) -> MNISTClassifier:
    """Train a fresh :class:`MNISTClassifier` on ``data`` (value range ``"unit"``) and return it in eval mode.

    AdamW with a one-cycle learning-rate schedule, cross-entropy with label smoothing 0.05, and
    :func:`augment` on every batch. All randomness comes from ``seed``.
    """
    check_positive_int("epochs", epochs)
    check_positive_int("batch_size", batch_size)
    if data.value_range != "unit":
        raise ValueError(f"`data` must hand out images in the 'unit' range, got {data.value_range!r}")
    device = data.device
    torch.manual_seed(seed)
    generator = torch.Generator(device=device).manual_seed(seed)
    model = MNISTClassifier().to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=5e-4)
    steps = epochs * data.num_batches(batch_size)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=learning_rate, total_steps=steps)
    model.train()
    for epoch in range(1, epochs + 1):
        total, correct, started = 0.0, 0, time.perf_counter()
        for images, labels in data.batches(batch_size, generator):
            logits = model(augment(images, generator))
            loss = F.cross_entropy(logits, labels, label_smoothing=0.05)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            total += float(loss.detach()) * len(labels)
            correct += int((logits.argmax(1) == labels).sum())
        if progress:
            seen = data.num_batches(batch_size) * batch_size
            print(f"epoch {epoch}/{epochs}: loss {total / seen:.4f}, train accuracy {correct / seen:.4f} "
                  f"({time.perf_counter() - started:.1f} s)", flush=True)
    return model.eval()


@torch.no_grad()
def predict(model: MNISTClassifier, images: torch.Tensor, batch_size: int = 1000) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax probabilities (N, 10) and penultimate features (N, F) of images (N, 1, 28, 28) in [0, 1].

    Runs in eval mode on the model's device in batches; returns float32 CPU tensors.
    """
    check_images("images", images, channels=1, size=28)
    check_positive_int("batch_size", batch_size)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    probabilities, features = [], []
    for chunk in images.split(batch_size):
        h = model.features(chunk.to(device, torch.float32))
        probabilities.append(model.head(h).softmax(dim=1).cpu())
        features.append(h.float().cpu())
    model.train(was_training)
    return torch.cat(probabilities), torch.cat(features)


def accuracy(model: MNISTClassifier, images: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction in [0, 1] of ``images`` (N, 1, 28, 28) in [0, 1] whose predicted digit equals ``labels`` (N,)."""
    check_images("images", images, channels=1, size=28)
    check_tensor("labels", labels, floating=False)
    check_batch_vector("labels", labels, images.shape[0])
    probabilities, _ = predict(model, images)
    return float((probabilities.argmax(1) == labels.cpu()).float().mean())


def save_weights(model: MNISTClassifier, path: str | os.PathLike, meta: dict) -> Path:
    """Save the weights in fp16 (floating tensors; BatchNorm's counters stay integers) with ``meta``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.half() if v.is_floating_point() else v for k, v in model.state_dict().items()}
    torch.save({"state_dict": state, "meta": meta}, path)
    return path


def load_weights(path: str | os.PathLike = WEIGHTS_PATH, device: torch.device | str = "cpu") -> MNISTClassifier:
    """A :class:`MNISTClassifier` with the weights of ``path`` (fp16 on disk, fp32 in memory), in eval mode."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"`path`: no classifier weights at {path}; train them with "
                                f"`python -m course_lib.classifier --train`")
    saved = torch.load(path, map_location="cpu", weights_only=True)
    model = MNISTClassifier()
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in saved["state_dict"].items()})
    return model.to(device).eval().requires_grad_(False)


@lru_cache(maxsize=4)
def _shipped(device: str) -> MNISTClassifier:
    return load_weights(WEIGHTS_PATH, device)


def load_classifier(device: torch.device | str | None = None) -> MNISTClassifier:
    """The shipped classifier on ``device`` (default: :func:`course_lib.runtime.pick_device`), loaded once.

    The same frozen instance is returned on every call; do not train it.
    """
    device = torch.device(device) if device is not None else pick_device()
    return _shipped(str(device))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m course_lib.classifier",
                                     description="Train or evaluate the reference MNIST classifier.")
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--train", action="store_true", help="train on the training split and save the weights")
    action.add_argument("--evaluate", action="store_true", help="test accuracy of the weights at --out")
    parser.add_argument("--epochs", type=int, default=25, help="training epochs (default 25)")
    parser.add_argument("--subset", type=int, help="train on the first N training digits only (default: all)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(WEIGHTS_PATH), help=f"weights file (default: {WEIGHTS_PATH})")
    parser.add_argument("--data-root", help="MNIST root (default: $COURSE_DATA_DIR or a cache folder)")
    args = parser.parse_args(argv)

    device = pick_device()
    test = DeviceImages.from_dataset(load_mnist(train=False, root=args.data_root), device, "unit")
    test_images, test_labels = test.first(len(test))
    if args.evaluate:
        model = load_weights(args.out, device)
        print(f"test accuracy of {args.out}: {accuracy(model, test_images, test_labels):.4f} "
              f"on {len(test)} test digits")
        return 0
    train = DeviceImages.from_dataset(load_mnist(train=True, root=args.data_root), device, "unit", args.subset)
    print(f"training the classifier on {len(train)} digits for {args.epochs} epochs on {device}")
    started = time.perf_counter()
    model = train_classifier(train, epochs=args.epochs, seed=args.seed)
    seconds = time.perf_counter() - started
    test_accuracy = accuracy(model, test_images, test_labels)
    meta = {"train_images": len(train), "epochs": args.epochs, "seed": args.seed, "device": str(device),
            "train_seconds": round(seconds, 1), "test_images": len(test), "test_accuracy": round(test_accuracy, 4),
            "torch": str(torch.__version__)}
    path = save_weights(model, args.out, meta)
    print(f"test accuracy {test_accuracy:.4f} on {len(test)} test digits; {seconds:.0f} s; saved to {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
