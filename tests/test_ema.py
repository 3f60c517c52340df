"""course_lib.ema: the EMA is the closed-form exponential average, swaps in and out exactly, and round-trips."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from course_lib.ema import EMA, warmup_decay


class Toy(nn.Module):
    """One weight (3,), a float buffer (BatchNorm-like running mean) and an int buffer (num_batches_tracked)."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(3, dtype=torch.float64))
        self.register_buffer("running_mean", torch.zeros(3, dtype=torch.float64))
        self.register_buffer("count", torch.zeros((), dtype=torch.long))

    def set(self, value: torch.Tensor, count: int) -> None:
        with torch.no_grad():
            self.weight.copy_(value)
            self.running_mean.copy_(2 * value)
            self.count.fill_(count)


def test_warmup_starts_at_a_tenth_and_rises_to_the_decay():
    decays = [warmup_decay(0.999, n) for n in range(20_000)]
    assert decays[0] == pytest.approx(0.1) and decays[10] == pytest.approx(11 / 20)
    assert all(a <= b for a, b in zip(decays, decays[1:])) and decays[-1] == 0.999
    assert warmup_decay(0.5, 100) == 0.5


def test_the_ema_is_the_closed_form_exponential_average():
    """ema_n = (prod_k d_k) w_0 + sum_k (1 - d_k) (prod_{j > k} d_j) w_k, buffers averaged too, ints copied."""
    generator = torch.Generator().manual_seed(0)
    weights = [torch.randn(3, generator=generator, dtype=torch.float64) for _ in range(31)]
    model = Toy()
    model.set(weights[0], 0)
    ema = EMA(model, decay=0.8)
    for n, w in enumerate(weights[1:]):
        model.set(w, n + 1)
        ema.update(model)

    decays = [warmup_decay(0.8, n) for n in range(len(weights) - 1)]
    expected = torch.prod(torch.tensor(decays, dtype=torch.float64)) * weights[0]
    for k, w in enumerate(weights[1:]):
        expected = expected + (1 - decays[k]) * torch.prod(torch.tensor(decays[k + 1:], dtype=torch.float64)) * w
    torch.testing.assert_close(ema.shadow["weight"], expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ema.shadow["running_mean"], 2 * expected, rtol=1e-12, atol=1e-12)
    assert int(ema.shadow["count"]) == 30 and ema.num_updates == 30


def test_swapping_in_restores_the_trained_weights_exactly():
    model = Toy()
    model.set(torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64), 5)
    ema = EMA(model, 0.9)
    model.set(torch.tensor([4.0, 5.0, 6.0], dtype=torch.float64), 6)
    ema.update(model)  # d_0 = 0.1: 0.1 * old + 0.9 * new
    trained = {name: value.clone() for name, value in model.state_dict().items()}
    with ema.swapped_in(model) as swapped:
        assert swapped is model
        torch.testing.assert_close(model.weight.detach(), torch.tensor([3.7, 4.7, 5.7], dtype=torch.float64))
    assert all(torch.equal(trained[name], value) for name, value in model.state_dict().items())
    ema.copy_to(model)
    assert torch.equal(model.weight.detach(), ema.shadow["weight"])


def test_the_state_round_trips_and_must_match_the_model():
    model = Toy()
    ema = EMA(model, 0.9)
    model.set(torch.ones(3, dtype=torch.float64), 1)
    ema.update(model)
    again = EMA(Toy(), 0.99)
    again.load_state_dict(ema.state_dict())
    assert again.num_updates == 1 and again.decay == 0.99  # the decay stays the constructor's
    assert all(torch.equal(again.shadow[name], ema.shadow[name]) for name in ema.shadow)
    with pytest.raises(ValueError, match="does not match"):
        EMA(nn.Linear(2, 2), 0.9).load_state_dict(ema.state_dict())


@pytest.mark.parametrize("decay", [0.0, 1.0, 1, "0.9"])
def test_bad_decays_are_refused(decay):
    with pytest.raises(ValueError, match="`decay`"):
        EMA(Toy(), decay)
