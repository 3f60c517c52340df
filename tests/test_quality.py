"""course_lib.quality: the Frechet distance against independent computations, PSNR, and the classifier-based
numbers on real MNIST test digits."""

from __future__ import annotations

import math

import matplotlib
import pytest
import torch
from torch import nn

matplotlib.use("Agg")

from course_lib import quality  # noqa: E402
from course_lib.data import DeviceImages, load_mnist  # noqa: E402

pytestmark = pytest.mark.usefixtures("single_thread")


def random_psd(size: int, generator: torch.Generator) -> torch.Tensor:
    a = torch.randn(size, size, generator=generator, dtype=torch.float64)
    return a @ a.T / size + 0.1 * torch.eye(size, dtype=torch.float64)


def stats(mean: torch.Tensor, cov: torch.Tensor) -> quality.FeatureStatistics:
    return quality.FeatureStatistics(mean, cov, count=1000)


@pytest.fixture(scope="module")
def test_digits(mnist_root):
    """The first 1,000 MNIST test digits in [-1, 1] and their labels."""
    data = DeviceImages.from_dataset(load_mnist(train=False, root=mnist_root), "cpu", "signed", subset_size=1000)
    return data.first(len(data))


def test_sqrtm_psd_squares_back():
    matrix = random_psd(12, torch.Generator().manual_seed(0))
    root = quality.sqrtm_psd(matrix)
    torch.testing.assert_close(root @ root, matrix, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(root, root.T)
    assert torch.linalg.eigvalsh(root).min() > 0


def test_frechet_distance_diagonal_gaussians_closed_form():
    # For commuting (here diagonal) covariances: ||mu1 - mu2||^2 + sum_i (sqrt(a_i) - sqrt(b_i))^2.
    mean1, mean2 = torch.tensor([0.0, 1.0, 2.0], dtype=torch.float64), torch.tensor([1.0, 1.0, 0.0], dtype=torch.float64)
    var1, var2 = torch.tensor([1.0, 4.0, 9.0], dtype=torch.float64), torch.tensor([4.0, 1.0, 1.0], dtype=torch.float64)
    expected = 1.0 + 0.0 + 4.0 + (1.0 + 1.0 + 4.0)
    got = quality.frechet_distance(stats(mean1, torch.diag(var1)), stats(mean2, torch.diag(var2)))
    assert got == pytest.approx(expected, rel=1e-9)


def test_frechet_distance_matches_eigenvalues_of_the_product():
    # Independent route: tr((C1 C2)^1/2) is the sum of the square roots of the (real, >= 0) eigenvalues of C1 C2.
    generator = torch.Generator().manual_seed(1)
    c1, c2 = random_psd(8, generator), random_psd(8, generator)
    m1, m2 = torch.randn(8, generator=generator, dtype=torch.float64), torch.randn(8, generator=generator,
                                                                                   dtype=torch.float64)
    trace_root = torch.linalg.eigvals(c1 @ c2).real.clamp(min=0).sqrt().sum()
    expected = float((m1 - m2).square().sum() + c1.trace() + c2.trace() - 2 * trace_root)
    assert quality.frechet_distance(stats(m1, c1), stats(m2, c2)) == pytest.approx(expected, rel=1e-8)
    assert quality.frechet_distance(stats(m2, c2), stats(m1, c1)) == pytest.approx(expected, rel=1e-8)


def test_frechet_distance_of_identical_sets_is_zero_and_of_shifted_sets_the_shift():
    features = torch.randn(500, 16, generator=torch.Generator().manual_seed(2))
    same = quality.feature_statistics(features)
    assert quality.frechet_distance(same, same) == pytest.approx(0.0, abs=1e-8)
    shifted = quality.feature_statistics(features + 0.5)
    assert quality.frechet_distance(same, shifted) == pytest.approx(16 * 0.25, rel=1e-6)


def test_feature_statistics_needs_two_rows():
    with pytest.raises(ValueError, match="`features`"):
        quality.feature_statistics(torch.zeros(1, 4))


def test_psnr_known_cases():
    target = torch.zeros(2, 1, 4, 4)
    prediction = torch.full_like(target, 0.1)                    # MSE 0.01 -> 20 dB
    torch.testing.assert_close(quality.psnr(prediction, target), torch.full((2,), 20.0, dtype=torch.float64))
    assert quality.psnr(2 * prediction, 2 * target, data_range=2.0)[0] == pytest.approx(20.0)
    assert math.isinf(float(quality.psnr(target, target)[0]))
    with pytest.raises(ValueError, match="`prediction`"):
        quality.psnr(target[:1], target)


def test_denoiser_psnr_of_the_noisy_input(mnist_root):
    # nn.Identity() "denoises" nothing: at sigma 0 the PSNR is infinite, at sigma 0.1 it is the clamped noisy input's.
    result = quality.denoiser_psnr(nn.Identity(), sigmas=[0.0, 0.1], num_images=50, seed=3, data_root=mnist_root,
                                   device="cpu")
    assert math.isinf(result[0.0])
    clean = DeviceImages.from_dataset(load_mnist(train=False, root=mnist_root), "cpu", "unit", 50).first(50)[0]
    noise = torch.randn(clean.shape, generator=torch.Generator().manual_seed(3))
    mse = ((clean + 0.1 * noise).clamp(0, 1) - clean).square().mean(dim=(1, 2, 3))
    assert result[0.1] == pytest.approx(float((-10 * torch.log10(mse)).mean()), rel=1e-5)
    assert result[0.1] > 20.0                                    # clamping only removes error


def test_guidance_accuracy_on_real_digits(test_digits):
    images, labels = test_digits
    assert quality.guidance_accuracy(images, labels) >= 0.97
    shuffled = labels[torch.randperm(len(labels), generator=torch.Generator().manual_seed(4))]
    assert 0.05 <= quality.guidance_accuracy(images, shuffled) <= 0.16
    with pytest.raises(ValueError, match="`labels`"):
        quality.guidance_accuracy(images, labels[:-1])


def test_sample_quality_tells_digits_from_noise(test_digits, mnist_root):
    images, _ = test_digits
    real = quality.sample_quality(images, data_root=mnist_root)
    noise = quality.sample_quality(torch.rand(1000, 1, 28, 28, generator=torch.Generator().manual_seed(5)) * 2 - 1,
                                   data_root=mnist_root)
    assert real["confidence"] > 0.9
    assert real["frechet_distance"] < noise["frechet_distance"] / 20
    with pytest.raises(ValueError, match="`samples`"):
        quality.sample_quality(images[:, :, :14], data_root=mnist_root)


def test_report_draws_one_row_per_sample_set(test_digits, mnist_root):
    images, labels = test_digits
    noisy = images[:500] + 0.3 * torch.randn(images[:500].shape, generator=torch.Generator().manual_seed(6))
    figure = quality.report({"test digits": images[:500], "noisy test digits": noisy}, labels=labels[:500],
                            data_root=mnist_root)
    titles = [ax.get_title() for ax in figure.axes]
    assert len(titles) == 2 and all("FLD" in t and "requested digit" in t for t in titles)
    with pytest.raises(ValueError, match="`samples`"):
        quality.report({})


def test_plot_denoiser_psnr_draws_the_model_beside_the_noisy_input(mnist_root):
    halve = nn.Conv2d(1, 1, 1, bias=False)
    nn.init.constant_(halve.weight, 0.5)  # a "denoiser" that halves every pixel
    figure = quality.plot_denoiser_psnr(halve, sigmas=[0.0, 0.5], num_images=40, data_root=mnist_root)
    (ax,) = figure.axes
    assert ax.get_title() and ax.get_xlabel() and ax.get_ylabel()
    model_line, noisy_line = ax.get_lines()[:2]
    expected = quality.denoiser_psnr(halve, sigmas=[0.0, 0.5], num_images=40, data_root=mnist_root)
    assert list(model_line.get_ydata()) == pytest.approx(list(expected.values()))
    assert math.isinf(noisy_line.get_ydata()[0])  # the clean input is perfect at sigma 0


def test_test_statistics_are_cached_on_disk_and_read_back_equal(mnist_root):
    from course_lib.runtime import cache_dir

    first = quality.test_statistics(mnist_root, "cpu")
    files = list(cache_dir().glob("test-feature-statistics-*.pt"))
    assert files, "the statistics were not written to the cache folder"
    quality._test_statistics.cache_clear()  # forget the in-memory copy: the next call reads the file
    again = quality.test_statistics(mnist_root, "cpu")
    assert again.count == first.count == 10_000
    assert torch.equal(again.mean, first.mean) and torch.equal(again.cov, first.cov)
