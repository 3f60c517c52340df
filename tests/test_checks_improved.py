"""The optional stage 6 (``06_improved_unet``): its two answers against independent derivations, the checks
(correct code passes, the probes run without the answers; the mistakes and their messages are in
``test_mistake_catalogue.py``), and the given improved UNet built from the student's pieces."""

from __future__ import annotations

import io
import math

import pytest
import torch
from torch import nn

from course_lib.stages.improved.answers import SelfAttention, sinusoidal_embedding
from course_lib.stages.improved.checks import check_self_attention, check_sinusoidal_embedding
from course_lib.improved_unet import ImprovedUNet, ResidualBlock
from check_helpers import fails_with, leave_out_answers


pytestmark = pytest.mark.usefixtures("single_thread")


# ----------------------------------------------------------------------------- the answers, derived independently


def test_sinusoidal_embedding_is_the_transformer_formula_written_out():
    t = torch.tensor([0.0, 1.0, 17.5, 299.0, 999.0])
    dim = 10
    got = sinusoidal_embedding(t, dim)
    assert got.shape == (5, dim) and got.dtype == torch.float32
    for n, time in enumerate(t.tolist()):
        for i in range(dim // 2):
            angle = time / 10000 ** (2 * i / dim)  # Vaswani et al.: PE(pos, 2i) = sin(pos / 10000^(2i / d))
            assert got[n, i].item() == pytest.approx(math.sin(angle), abs=2e-4)
            assert got[n, dim // 2 + i].item() == pytest.approx(math.cos(angle), abs=2e-4)


def test_sinusoidal_embedding_inner_products_depend_only_on_the_time_difference():
    """sin a sin b + cos a cos b = cos(a - b): <e(t), e(s)> = sum_i cos((t - s) w_i), and |e(t)|^2 = dim / 2."""
    dim = 32
    t = torch.tensor([3.0, 250.0, 700.0], dtype=torch.float64)
    s = t + 40.0
    e_t, e_s = sinusoidal_embedding(t, dim).double(), sinusoidal_embedding(s, dim).double()
    w = 10000.0 ** (-torch.arange(dim // 2, dtype=torch.float64) / (dim // 2))
    torch.testing.assert_close((e_t * e_s).sum(1), torch.cos(40.0 * w).sum().expand(3), atol=1e-3, rtol=0)
    torch.testing.assert_close(e_t.square().sum(1), torch.full((3,), dim / 2, dtype=torch.float64), atol=1e-4, rtol=0)


def test_self_attention_equals_torchs_multihead_attention_with_the_same_weights():
    torch.manual_seed(0)
    channels = 12
    block = SelfAttention(channels).eval()
    with torch.no_grad():
        block.norm.weight.uniform_(0.5, 1.5)
        block.norm.bias.normal_(0, 0.2)
    mha = nn.MultiheadAttention(channels, num_heads=1, batch_first=True)
    with torch.no_grad():
        mha.in_proj_weight.copy_(torch.cat([block.query.weight, block.key.weight, block.value.weight]))
        mha.in_proj_bias.copy_(torch.cat([block.query.bias, block.key.bias, block.value.bias]))
        mha.out_proj.weight.copy_(block.out.weight)
        mha.out_proj.bias.copy_(block.out.bias)
    x = torch.randn(3, channels, 7, 5)
    tokens = block.norm(x).flatten(2).transpose(1, 2)
    expected = x + mha(tokens, tokens, tokens, need_weights=False)[0].transpose(1, 2).reshape(x.shape)
    torch.testing.assert_close(block(x), expected, atol=1e-5, rtol=1e-4)


def test_self_attention_is_equivariant_to_permuting_positions():
    torch.manual_seed(1)
    block = SelfAttention(8).eval()
    x = torch.randn(2, 8, 7, 7)
    permutation = torch.randperm(49)
    shuffle = lambda y: y.flatten(2)[:, :, permutation].reshape(y.shape)  # noqa: E731
    torch.testing.assert_close(block(shuffle(x)), shuffle(block(x)), atol=1e-5, rtol=1e-4)


# ----------------------------------------------------------------------------- the checks


def test_checks_pass_the_answers_on_the_visible_and_hidden_cases(capsys):
    check_sinusoidal_embedding(sinusoidal_embedding)
    check_sinusoidal_embedding(sinusoidal_embedding, num_times=3, dim=32, seed=5)
    check_sinusoidal_embedding(sinusoidal_embedding, num_times=10, dim=6, seed=11)
    check_self_attention(SelfAttention)
    check_self_attention(SelfAttention, channels=16, height=7, width=5, batch_size=2, seed=3)
    check_self_attention(SelfAttention, channels=4, height=3, width=3, batch_size=1, seed=21)
    assert capsys.readouterr().out.count("✓") == 6


def test_attention_check_reports_a_stub_and_renamed_layers():
    class Stub(SelfAttention):
        def forward(self, x):
            raise NotImplementedError()

    class Renamed(nn.Module):
        def __init__(self, channels):
            super().__init__()
            self.norm, self.qkv = nn.GroupNorm(1, channels), nn.Linear(channels, 3 * channels)

    fails_with(check_self_attention, Stub, "not implemented yet")
    fails_with(check_self_attention, Renamed, "keep the given __init__")


@pytest.mark.parametrize("check_function, students, case", [
    (check_sinusoidal_embedding, (sinusoidal_embedding,), {"num_times": 4, "dim": 8, "seed": 2}),
    (check_self_attention, (SelfAttention,), {"channels": 6, "height": 7, "width": 7, "seed": 4}),
])
def test_probes_run_without_the_answers(monkeypatch, check_function, students, case):
    from course_lib.checks.protocol import verdict

    entry = check_function.check
    full_case = entry.case(**case)
    inputs, expected = entry.reference(**full_case)
    students = tuple(student.__wrapped__ if hasattr(student, "__wrapped__") else student for student in students)

    leave_out_answers(monkeypatch)

    def saved(value):  # as the grading kernel and the grader exchange them
        buffer = io.BytesIO()
        torch.save(value, buffer)
        buffer.seek(0)
        return torch.load(buffer, weights_only=True)

    outputs = entry.probe(*students, inputs=saved(inputs))
    assert "failed" not in outputs
    assert verdict(entry, full_case, saved(inputs), saved(outputs), saved(expected))


# ----------------------------------------------------------------------------- the given improved UNet


def test_improved_unet_uses_the_students_pieces_and_conditions_every_level():
    torch.manual_seed(0)
    seen = []

    def embed(t, dim):
        seen.append(("embedding", tuple(t.shape), dim))
        return sinusoidal_embedding(t, dim)

    def attention(channels):
        block = SelfAttention(channels)
        block.register_forward_hook(lambda module, inputs, output: seen.append(("attention", tuple(inputs[0].shape))))
        return block

    model = ImprovedUNet(embed, attention, num_hiddens=8).eval()
    x, t = torch.randn(3, 1, 28, 28), torch.tensor([0.0, 0.5, 1.0])
    out = model(x, t)
    assert out.shape == x.shape
    assert ("embedding", (3,), 8) in seen and ("attention", (3, 16, 7, 7)) in seen
    blocks = [m for m in model.modules() if isinstance(m, ResidualBlock)]
    assert len(blocks) == 8, "every level's residual blocks receive the embedding"
    assert not torch.allclose(model(x, t.flip(0)), out), "the output depends on t"
    out.square().mean().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_improved_unet_with_classes_uses_the_label_and_a_zero_row_means_none():
    torch.manual_seed(0)
    model = ImprovedUNet(sinusoidal_embedding, SelfAttention, num_hiddens=8, num_classes=10).eval()
    x, t = torch.randn(2, 1, 28, 28), torch.tensor([0.3, 0.3])
    three, seven = torch.eye(10)[[3, 3]], torch.eye(10)[[7, 7]]
    assert not torch.allclose(model(x, t, three), model(x, t, seven))
    plain = ImprovedUNet(sinusoidal_embedding, SelfAttention, num_hiddens=8)
    plain.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("label.")})
    torch.testing.assert_close(model(x, t, torch.zeros(2, 10)), plain.eval()(x, t))
    with pytest.raises(ValueError, match="num_classes"):
        model(x, t)


# ----------------------------------------------------------------------------- the derivation of L_simple (section 5)


def test_posterior_mean_in_terms_of_eps_and_the_weight_of_the_bound():
    """The notebook's derivation: with x0 = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t), the posterior mean is
    (x_t - beta_t / sqrt(1 - abar_t) eps) / sqrt(alpha_t); the KL between N(mu~, s^2 I) and N(mu_theta, s^2 I) is
    lambda_t ||eps - eps_theta||^2 with lambda_t = beta_t^2 / (2 s^2 alpha_t (1 - abar_t)); with s^2 = beta_t and
    the course's schedule (T = 300), lambda is about 0.5 at the first step and 0.011 at the last (the model answer)."""
    from torch.distributions import Normal, kl_divergence

    from course_lib.noise import DDPMSchedule

    schedule = DDPMSchedule(300)
    betas = schedule.betas.double()  # the tables again in float64, so that the identities hold to round-off
    alphas = 1 - betas
    bars = torch.cumprod(alphas, 0)
    g = torch.Generator().manual_seed(0)
    x0, eps, eps_theta = (torch.randn(50, generator=g, dtype=torch.float64) for _ in range(3))
    for t in (1, 10, 150, 299):  # 0-based code steps; t - 1 exists
        x_t = bars[t].sqrt() * x0 + (1 - bars[t]).sqrt() * eps
        posterior = (bars[t - 1].sqrt() * betas[t] / (1 - bars[t])) * x0 \
            + (alphas[t].sqrt() * (1 - bars[t - 1]) / (1 - bars[t])) * x_t
        torch.testing.assert_close(posterior, (x_t - betas[t] / (1 - bars[t]).sqrt() * eps) / alphas[t].sqrt())
        mu_theta = (x_t - betas[t] / (1 - bars[t]).sqrt() * eps_theta) / alphas[t].sqrt()
        sigma = betas[t].sqrt()
        kl = kl_divergence(Normal(posterior, sigma), Normal(mu_theta, sigma)).sum()
        weight = betas[t] ** 2 / (2 * sigma**2 * alphas[t] * (1 - bars[t]))
        torch.testing.assert_close(kl, weight * (eps - eps_theta).square().sum())
    first = betas[0] / (2 * alphas[0] * (1 - bars[0]))
    last = betas[-1] / (2 * alphas[-1] * (1 - bars[-1]))
    assert first.item() == pytest.approx(0.5, abs=1e-4) and last.item() == pytest.approx(0.011, abs=5e-4)
    assert bars[-1].item() == pytest.approx(0.048, abs=1e-3)
