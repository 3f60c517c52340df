"""course_lib.objectives: each loss against an MSE computed here, in float64, from the same generator draws.

The order of the draws from ``generator`` is part of each loss's contract (a check compares a student's loss
with the reference on one seed): label dropout first (class-conditional loss), then the timesteps, then eps.
The models are stand-ins that record their inputs and return a known function of them.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from course_lib.noise import DDPMSchedule
from course_lib.objectives import (class_conditional_loss, ddpm_loss, denoising_loss, drop_labels, flow_interpolate,
                                   flow_loss, one_hot, random_timesteps)

pytestmark = pytest.mark.usefixtures("single_thread")

SEED = 11


class Recorder(nn.Module):
    """Returns 0.5 x + t (+ the class index, -1 for no class) per example, and keeps what it was given."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.tensor(0.5))
        self.calls = []

    def forward(self, x, t=None, c=None):
        self.calls.append((x.detach().clone(), None if t is None else t.clone(), None if c is None else c.clone()))
        out = self.weight * x
        if t is not None:
            out = out + t.view(-1, 1, 1, 1)
        if c is not None:
            index = torch.where(c.sum(1) > 0, c.argmax(1).to(x.dtype), torch.full_like(c[:, 0], -1.0))
            out = out + index.view(-1, 1, 1, 1)
        return out


def images(batch_size: int = 6, low: float = -1.0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(99)
    return low + (1 - low) * torch.rand(batch_size, 1, 28, 28, generator=generator)


def mse(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()) ** 2).mean().item()


def test_denoising_loss():
    x = images(low=0.0)
    model = Recorder()
    loss = denoising_loss(model, x, generator=torch.Generator().manual_seed(SEED))
    eps = torch.randn(x.shape, generator=torch.Generator().manual_seed(SEED))
    z = x.double() + 0.5 * eps.double()
    torch.testing.assert_close(model.calls[0][0].double(), z, rtol=1e-6, atol=1e-6)
    assert loss.item() == pytest.approx(mse(0.5 * z, x), rel=1e-5)
    loss.backward()
    assert model.weight.grad is not None


def test_denoising_loss_sigma_argument():
    x = images(low=0.0)
    loss = denoising_loss(Recorder(), x, sigma=0.0, generator=torch.Generator().manual_seed(SEED))
    assert loss.item() == pytest.approx(mse(0.5 * x, x), rel=1e-5)


def test_ddpm_loss_is_algorithm_1():
    schedule = DDPMSchedule(50)
    x0 = images()
    model = Recorder()
    loss = ddpm_loss(model, x0, schedule, generator=torch.Generator().manual_seed(SEED))
    generator = torch.Generator().manual_seed(SEED)
    t = torch.randint(0, 50, (len(x0),), generator=generator)
    eps = torch.randn(x0.shape, generator=generator).double()
    alpha_bars = torch.cumprod(1 - torch.linspace(1e-4, 0.02, 50, dtype=torch.float64), 0)[t].view(-1, 1, 1, 1)
    x_t = alpha_bars.sqrt() * x0.double() + (1 - alpha_bars).sqrt() * eps
    seen_x, seen_t, _ = model.calls[0]
    torch.testing.assert_close(seen_x.double(), x_t, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(seen_t.double(), t.double() / 50)
    assert loss.item() == pytest.approx(mse(0.5 * x_t + (t.double() / 50).view(-1, 1, 1, 1), eps), rel=1e-5)


def test_class_conditional_loss_drops_labels_then_follows_algorithm_1():
    schedule = DDPMSchedule(50)
    x0 = images(batch_size=40)
    labels = torch.arange(40) % 10
    model = Recorder()
    loss = class_conditional_loss(model, x0, labels, schedule, p_uncond=0.3,
                                  generator=torch.Generator().manual_seed(SEED))
    generator = torch.Generator().manual_seed(SEED)
    dropped = torch.rand(40, generator=generator) < 0.3
    t = torch.randint(0, 50, (40,), generator=generator)
    eps = torch.randn(x0.shape, generator=generator).double()
    assert 0 < int(dropped.sum()) < 40, "the seed should drop some labels and keep others"
    expected_c = torch.zeros(40, 10)
    expected_c[torch.arange(40), labels] = 1.0
    expected_c[dropped] = 0.0
    alpha_bars = torch.cumprod(1 - torch.linspace(1e-4, 0.02, 50, dtype=torch.float64), 0)[t].view(-1, 1, 1, 1)
    x_t = alpha_bars.sqrt() * x0.double() + (1 - alpha_bars).sqrt() * eps
    seen_x, seen_t, seen_c = model.calls[0]
    assert torch.equal(seen_c, expected_c)
    torch.testing.assert_close(seen_t.double(), t.double() / 50)
    torch.testing.assert_close(seen_x.double(), x_t, rtol=1e-5, atol=1e-5)
    class_term = torch.where(dropped, -1.0, labels.double()).view(-1, 1, 1, 1)
    assert loss.item() == pytest.approx(mse(0.5 * x_t + (t.double() / 50).view(-1, 1, 1, 1) + class_term, eps),
                                        rel=1e-5)


def test_flow_loss_targets_the_velocity_of_the_straight_path():
    x0 = images()
    model = Recorder()
    loss = flow_loss(model, x0, generator=torch.Generator().manual_seed(SEED))
    generator = torch.Generator().manual_seed(SEED)
    t = torch.rand(len(x0), generator=generator).double()
    eps = torch.randn(x0.shape, generator=generator).double()
    x_t = (1 - t.view(-1, 1, 1, 1)) * x0.double() + t.view(-1, 1, 1, 1) * eps
    seen_x, seen_t, _ = model.calls[0]
    torch.testing.assert_close(seen_x.double(), x_t, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(seen_t.double(), t)
    assert loss.item() == pytest.approx(mse(0.5 * x_t + t.view(-1, 1, 1, 1), eps - x0.double()), rel=1e-5)


def test_flow_interpolate_endpoints_and_midpoint():
    x0, eps = images(3), torch.ones(3, 1, 28, 28)
    torch.testing.assert_close(flow_interpolate(x0, eps, torch.tensor([0.0, 1.0, 0.5])),
                               torch.stack([x0[0], eps[1], (x0[2] + eps[2]) / 2]))


def test_losses_reject_non_image_batches():
    schedule = DDPMSchedule(10)
    flat = torch.zeros(4, 784)
    for call in (lambda: denoising_loss(Recorder(), flat), lambda: ddpm_loss(Recorder(), flat, schedule),
                 lambda: flow_loss(Recorder(), flat)):
        with pytest.raises(ValueError, match="`x0`|`x`"):
            call()
    with pytest.raises(ValueError, match="`labels`"):
        class_conditional_loss(Recorder(), torch.zeros(4, 1, 28, 28), torch.zeros(3, dtype=torch.long), schedule)


# ----------------------------------------------------------------------------- timesteps and labels

def test_random_timesteps_are_uniform_over_0_to_T_minus_1():
    """20,000 draws over 10 values: each count is 2,000 +- 5 standard errors (sqrt(20000 * 0.1 * 0.9) = 42)."""
    t = random_timesteps(20_000, DDPMSchedule(10), "cpu", torch.Generator().manual_seed(SEED))
    assert t.dtype == torch.long and int(t.min()) == 0 and int(t.max()) == 9
    assert (torch.bincount(t, minlength=10) - 2000).abs().max().item() < 5 * 42


def test_one_hot():
    c = one_hot(torch.tensor([3, 0, 9]))
    assert c.dtype == torch.float32 and c.shape == (3, 10)
    assert torch.equal(c.argmax(1), torch.tensor([3, 0, 9])) and torch.equal(c.sum(1), torch.ones(3))
    assert one_hot(torch.tensor([2]), num_classes=3).tolist() == [[0.0, 0.0, 1.0]]


@pytest.mark.parametrize("labels, error", [
    (torch.tensor([1.0, 2.0]), TypeError),
    (torch.tensor([0, 10]), ValueError),
    (torch.tensor([-1, 2]), ValueError),
    (torch.tensor([[1, 2]]), ValueError),
    ([1, 2], TypeError),
])
def test_one_hot_rejects_bad_labels(labels, error):
    with pytest.raises(error, match="`labels`"):
        one_hot(labels)


def test_one_hot_rejects_bad_num_classes():
    with pytest.raises(ValueError, match="`num_classes`"):
        one_hot(torch.tensor([0]), num_classes=0)


@pytest.mark.parametrize("p_uncond", [0.1, 0.5])
def test_label_dropout_rate(p_uncond):
    """20,000 rows: the fraction of zeroed rows is p +- 5 standard errors (sqrt(p (1 - p) / 20000) <= 0.0035)."""
    c = one_hot(torch.arange(20_000) % 10)
    dropped = drop_labels(c, p_uncond, torch.Generator().manual_seed(SEED))
    zero_rows = dropped.sum(1) == 0
    assert abs(zero_rows.double().mean().item() - p_uncond) < 5 * math.sqrt(p_uncond * (1 - p_uncond) / 20_000)
    assert torch.equal(dropped[~zero_rows], c[~zero_rows]), "kept rows must be unchanged"


def test_label_dropout_extremes_and_errors():
    c = one_hot(torch.arange(10))
    assert torch.equal(drop_labels(c, 0.0), c)
    assert torch.equal(drop_labels(c, 1.0), torch.zeros_like(c))
    with pytest.raises(ValueError, match="`p_uncond`"):
        drop_labels(c, 1.5)
    with pytest.raises(TypeError, match="`c`"):
        drop_labels(torch.zeros(3, 10, dtype=torch.long))
