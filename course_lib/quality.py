"""How good are the generated digits? Numbers from the reference classifier, and the denoiser's PSNR.

- :func:`sample_quality`: the classifier's mean confidence (mean of the top softmax probability, in
  [0.1, 1]) and the Frechet distance between the classifier's penultimate features (128 of them) of the
  samples and of the 10,000 MNIST test digits: the "Frechet LeNet distance" (FLD), MNIST's analogue of
  FID. Lower is better; 0 means the same feature mean and covariance. It is biased upwards for small
  sample counts, so compare FLDs computed from the same number of samples (e.g. 1,000).
- :func:`guidance_accuracy`: the fraction of guided samples classified as the digit asked for.
- :func:`denoiser_psnr`: PSNR in dB of a single-step denoiser on test digits at several noise levels.
- :func:`report`: one figure for a notebook, a row of samples per model with its numbers.
- :func:`plot_denoiser_psnr`: one figure for a notebook, the denoiser's PSNR against sigma beside the noisy input's.

The test-set feature statistics are computed once per classifier and cached (in memory and on disk).

Usage in a notebook::

    from course_lib import quality, sampling
    samples = sampling.ddpm_sample(model, schedule, 1000, generator=generator)   # (N, 1, 28, 28) in [-1, 1]
    quality.sample_quality(samples)            # {'confidence': ..., 'frechet_distance': ...}
    labels = torch.arange(10).repeat(100)
    guided = sampling.cfg_sample(cfg_model, schedule, labels, guidance=5.0, generator=generator)
    quality.guidance_accuracy(guided, labels)  # e.g. 0.99
    quality.denoiser_psnr(denoiser)            # {0.0: ..., 0.2: ..., ..., 1.0: ...} in dB
    quality.plot_denoiser_psnr(denoiser)       # the same against the noisy input's PSNR, as a Figure
    quality.report({"epoch 5": samples_5, "epoch 20": samples_20})                # a matplotlib Figure
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from functools import lru_cache
from typing import Mapping, Sequence

import matplotlib.pyplot as plt
import torch

from .classifier import WEIGHTS_PATH, load_classifier, predict
from .data import DeviceImages, load_mnist, to_unit
from .noise import add_noise
from .plots import DEFAULT_SIGMAS, image_grid
from .runtime import cache_dir, pick_device
from .validation import check_batch_vector, check_choice, check_images, check_positive_int, check_tensor


@dataclass(frozen=True)
class FeatureStatistics:
    """Mean (F,) and covariance (F, F) of N feature vectors, float64 on the CPU."""

    mean: torch.Tensor
    cov: torch.Tensor
    count: int


def feature_statistics(features: torch.Tensor) -> FeatureStatistics:
    """Mean and unbiased covariance of ``features`` (N, F), N >= 2, computed in float64."""
    check_tensor("features", features, ndim=2, floating=True)
    if features.shape[0] < 2:
        raise ValueError(f"`features` must hold at least 2 rows to estimate a covariance, got {features.shape[0]}")
    features = features.detach().double().cpu()
    return FeatureStatistics(features.mean(0), torch.cov(features.T), features.shape[0])


def sqrtm_psd(matrix: torch.Tensor) -> torch.Tensor:
    """The symmetric square root of a symmetric positive semi-definite matrix (F, F).

    Via the eigendecomposition; eigenvalues below 0 (round-off) are treated as 0.
    """
    check_tensor("matrix", matrix, ndim=2, floating=True)
    if matrix.shape[0] != matrix.shape[1]:
        raise ValueError(f"`matrix` must be square, got shape {tuple(matrix.shape)}")
    symmetric = (matrix + matrix.T) / 2
    eigenvalues, eigenvectors = torch.linalg.eigh(symmetric)
    return (eigenvectors * eigenvalues.clamp(min=0).sqrt()) @ eigenvectors.T


def frechet_distance(first: FeatureStatistics, second: FeatureStatistics) -> float:
    """Frechet distance between the Gaussians N(mu1, C1) and N(mu2, C2) fitted to two feature sets:

        ||mu1 - mu2||^2 + tr(C1) + tr(C2) - 2 tr((C1^1/2 C2 C1^1/2)^1/2)

    (the symmetric form of tr((C1 C2)^1/2), which has the same eigenvalues). A float >= 0.
    """
    if first.mean.shape != second.mean.shape:
        raise ValueError(f"`first` and `second` must have the same feature size, "
                         f"got {tuple(first.mean.shape)} and {tuple(second.mean.shape)}")
    root = sqrtm_psd(first.cov)
    cross = sqrtm_psd(root @ second.cov @ root)
    value = (first.mean - second.mean).square().sum() + first.cov.trace() + second.cov.trace() - 2 * cross.trace()
    return max(float(value), 0.0)


def _as_unit(samples: torch.Tensor, value_range: str) -> torch.Tensor:
    """Images in [0, 1] for the classifier: [-1, 1] samples mapped over, both clamped."""
    check_images("samples", samples, channels=1, size=28)
    check_choice("value_range", value_range, ("unit", "signed"))
    samples = samples.detach().float()
    return to_unit(samples) if value_range == "signed" else samples.clamp(0.0, 1.0)


def classify(samples: torch.Tensor, value_range: str = "signed") -> tuple[torch.Tensor, torch.Tensor]:
    """The shipped classifier's softmax probabilities (N, 10) and penultimate features (N, 128), on the CPU.

    ``samples``: (N, 1, 28, 28) in [-1, 1] (``"signed"``, what the samplers return) or [0, 1] (``"unit"``).
    """
    images = _as_unit(samples, value_range)
    return predict(load_classifier(images.device), images)


@lru_cache(maxsize=4)
def _test_statistics(root: str | None, device: str) -> FeatureStatistics:
    """Computed once per classifier and test set, then read back from the course's cache folder."""
    split = load_mnist(train=False, root=root)
    key = hashlib.sha1(WEIGHTS_PATH.read_bytes() + split.data.numpy().tobytes()).hexdigest()[:16]
    path = cache_dir() / f"test-feature-statistics-{key}.pt"
    if path.exists():
        return FeatureStatistics(**torch.load(path))
    images, _ = DeviceImages.from_dataset(split, device, "unit").first(len(split))
    _, features = predict(load_classifier(device), images)
    statistics = feature_statistics(features)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(f".{os.getpid()}.partial")
    torch.save(vars(statistics), partial)
    os.replace(partial, path)
    return statistics


def test_statistics(data_root: str | os.PathLike | None = None, device: torch.device | str | None = None
                    ) -> FeatureStatistics:
    """Classifier-feature statistics of the 10,000 MNIST test digits, computed once and cached (in memory and on disk)."""
    device = torch.device(device) if device is not None else pick_device()
    return _test_statistics(None if data_root is None else str(data_root), str(device))


def sample_quality(samples: torch.Tensor, value_range: str = "signed",
                   data_root: str | os.PathLike | None = None) -> dict[str, float]:
    """``{"confidence": ..., "frechet_distance": ...}`` of generated digits (N, 1, 28, 28), N >= 2.

    ``confidence``: mean over samples of the classifier's top probability (in [0.1, 1], higher is better).
    ``frechet_distance``: the Frechet LeNet distance to the test digits (>= 0, lower is better;
    depends on N, so compare equal N).
    """
    probabilities, features = classify(samples, value_range)
    reference = test_statistics(data_root, samples.device)
    return {"confidence": float(probabilities.max(1).values.mean()),
            "frechet_distance": frechet_distance(feature_statistics(features), reference)}


def guidance_accuracy(samples: torch.Tensor, labels: torch.Tensor, value_range: str = "signed") -> float:
    """Fraction in [0, 1] of ``samples`` (N, 1, 28, 28) that the classifier reads as the digit ``labels`` (N,) asked for."""
    probabilities, _ = classify(samples, value_range)
    check_tensor("labels", labels, floating=False)
    check_batch_vector("labels", labels, len(probabilities))
    return float((probabilities.argmax(1) == labels.cpu()).float().mean())


def psnr(prediction: torch.Tensor, target: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Per-image peak signal-to-noise ratio in dB, ``10 log10(data_range^2 / MSE)``, shape (N,).

    ``prediction`` and ``target``: (N, C, H, W) of the same shape; MSE over each image's pixels.
    A perfect prediction gives ``inf``.
    """
    check_tensor("prediction", prediction, ndim=4, floating=True)
    check_tensor("target", target, ndim=4, floating=True)
    if prediction.shape != target.shape:
        raise ValueError(f"`prediction` must have the same shape as `target` {tuple(target.shape)}, "
                         f"got {tuple(prediction.shape)}")
    mse = (prediction.double() - target.double()).square().flatten(1).mean(1)
    return 10 * torch.log10(data_range ** 2 / mse)


@torch.no_grad()
def denoiser_psnr(model, sigmas: Sequence[float] = DEFAULT_SIGMAS, num_images: int = 1000, seed: int = 0,
                  data_root: str | os.PathLike | None = None, device: torch.device | str | None = None
                  ) -> dict[float, float]:
    """Mean PSNR (dB) of ``model(x + sigma eps)`` against x on ``num_images`` test digits (a fixed subset), per sigma.

    ``model`` maps noisy images (N, 1, 28, 28) to clean ones in [0, 1] (the stage-2 denoiser; outputs
    are clamped to [0, 1]). ``nn.Identity()`` gives the PSNR of the noisy input itself, a baseline.
    The noise eps is drawn with a generator seeded with ``seed`` at every sigma: all sigmas scale the
    same eps, and two models see the same noisy digits.
    Runs in eval mode (restored afterwards) on ``device`` (default: the model's, else :func:`pick_device`).
    """
    check_positive_int("num_images", num_images)
    parameters = list(model.parameters()) if isinstance(model, torch.nn.Module) else []
    device = torch.device(device) if device is not None else (parameters[0].device if parameters else pick_device())
    test = DeviceImages.from_dataset(load_mnist(train=False, root=data_root), device, "unit", num_images)
    clean, _ = test.first(len(test))
    was_training = getattr(model, "training", False)
    if isinstance(model, torch.nn.Module):
        model.eval()
    try:
        results = {}
        for sigma in sigmas:
            noisy = add_noise(clean, float(sigma), torch.Generator(device=device).manual_seed(seed))
            denoised = torch.cat([model(chunk).float() for chunk in noisy.split(500)])
            results[float(sigma)] = float(psnr(denoised.clamp(0.0, 1.0), clean).mean())
    finally:
        if was_training:
            model.train()
    return results


def plot_denoiser_psnr(model, trained_sigma: float = 0.5, sigmas: Sequence[float] = DEFAULT_SIGMAS,
                       num_images: int = 1000, data_root: str | os.PathLike | None = None) -> plt.Figure:
    """The denoiser's mean PSNR (dB) on ``num_images`` test digits against sigma, beside the noisy input's.

    The gap between the two lines is what the denoiser gains; ``trained_sigma`` is marked.
    """
    denoised = denoiser_psnr(model, sigmas, num_images, data_root=data_root)
    noisy = denoiser_psnr(torch.nn.Identity(), sigmas, num_images, data_root=data_root)
    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    ax.plot(list(denoised), list(denoised.values()), marker="o", label="denoiser output")
    ax.plot(list(noisy), list(noisy.values()), marker="o", ls="--", label="noisy input")
    ax.axvline(trained_sigma, color="gray", lw=0.8, ls=":", label=f"trained at sigma = {trained_sigma:g}")
    ax.set_xlabel("noise level sigma")
    ax.set_ylabel("PSNR in dB (higher is better)")
    ax.set_title(f"Denoiser PSNR on {num_images} test digits")
    ax.legend()
    fig.tight_layout()
    return fig


def report(samples: Mapping[str, torch.Tensor], labels: torch.Tensor | None = None, value_range: str = "signed",
           num_shown: int = 10, data_root: str | os.PathLike | None = None) -> plt.Figure:
    """One figure: for each named sample set (N, 1, 28, 28), its first ``num_shown`` images and its numbers.

    With ``labels`` (N,), the digits every set was asked for (guided samples), the guidance accuracy is
    shown too. Example: ``report({"epoch 5": s5, "epoch 20": s20})``.
    """
    check_positive_int("num_shown", num_shown)
    if not samples:
        raise ValueError("`samples` must name at least one sample set, got an empty mapping")
    fig, axes = plt.subplots(len(samples), 1, figsize=(0.9 * num_shown, 1.35 * len(samples) + 0.3), squeeze=False)
    for ax, (name, images) in zip(axes[:, 0], samples.items()):
        numbers = sample_quality(images, value_range, data_root)
        text = f"confidence {numbers['confidence']:.3f}   FLD {numbers['frechet_distance']:.2f}"
        if labels is not None:
            text += f"   requested digit {guidance_accuracy(images, labels, value_range):.1%}"
        ax.imshow(image_grid(images[:num_shown], num_shown, value_range).numpy(), cmap="gray", vmin=0, vmax=1)
        ax.set_title(f"{name} ({len(images)} samples): {text}", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    return fig


def plot_against_steps(steps: Sequence[int], values: Mapping[str, Sequence[float]],
                       ylabel: str = "Frechet LeNet distance (lower is better)") -> plt.Figure:
    """A quality number against the number of sampling steps, one line per sampler (e.g. DDIM, flow)."""
    fig, ax = plt.subplots(figsize=(5, 3.2))
    for name, series in values.items():
        if len(series) != len(steps):
            raise ValueError(f"`values[{name!r}]` must have one value per step count ({len(steps)}), got {len(series)}")
        ax.plot(list(steps), list(series), marker="o", label=name)
    ax.set_xscale("log")
    ax.set_xlabel("sampling steps")
    ax.set_ylabel(ylabel)
    ax.legend()
    fig.tight_layout()
    return fig
