"""The checks of stages 3-5 (course_lib.checks.ddpm, .cfg, .flow): correct code passes, known mistakes fail
with the hint that names them, and calling the reference is refused.

Each "student" function below is a small, deliberately wrong variant of the notebooks' solutions.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from course_lib import objectives, sampling
from course_lib.checks import CheckFailed, cfg, ddpm, flow
from course_lib.models import ClassConditionalUNet, ConvBlock, DownBlock, FCBlock, Flatten, TimeConditionalUNet, \
    Unflatten, UpBlock

REFUSED = "must be written by you"


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def fails_with(check, student, hint: str, **kwargs) -> str:
    with pytest.raises(CheckFailed) as failure:
        check(student, **kwargs)
    assert hint in str(failure.value), str(failure.value)
    return str(failure.value)


# ----------------------------------------------------------------------------- stage 3: models


class StudentFC(nn.Module):
    def __init__(self, in_features, out_features, activation=nn.GELU):
        super().__init__()
        self.first, self.act, self.second = nn.Linear(in_features, out_features), activation(), \
            nn.Linear(out_features, out_features)

    def forward(self, x):
        return self.second(self.act(self.first(x)))


class StudentUNet(nn.Module):
    """The stage-3/4 UNet written as a student would; ``mistake`` switches on one wiring error."""

    def __init__(self, in_channels=1, num_hiddens=8, num_classes=None, mistake=None):
        super().__init__()
        d = num_hiddens
        self.mistake = mistake
        self.conv_in, self.down1, self.down2 = ConvBlock(in_channels, d), DownBlock(d, d), DownBlock(d, 2 * d)
        self.flatten, self.unflatten = Flatten(), Unflatten(2 * d)
        self.up1, self.up2, self.conv_out = UpBlock(4 * d, d), UpBlock(2 * d, d), ConvBlock(2 * d, d)
        self.head = nn.Conv2d(d, in_channels, 3, padding=1)
        self.t1, self.t2 = StudentFC(1, 2 * d), StudentFC(1, d)
        if num_classes:
            self.c1, self.c2 = StudentFC(num_classes, 2 * d), StudentFC(num_classes, d)

    def forward(self, x, t, c=None):
        tau = t.view(-1, 1)
        t1, t2 = self.t1(tau)[:, :, None, None], self.t2(tau)[:, :, None, None]
        c1 = self.c1(c)[:, :, None, None] if c is not None else 1.0
        c2 = self.c2(c)[:, :, None, None] if c is not None else 1.0
        if self.mistake == "no time":
            t1 = t2 = 0.0
        first = self.conv_in(x)
        skip14 = self.down1(first)
        skip7 = self.down2(skip14)
        h = self.unflatten(self.flatten(skip7))
        h = c1 * (h + t1) if self.mistake == "shift then scale" else c1 * h + t1
        h = self.up1(torch.cat([h, skip7], 1))
        if self.mistake == "shift then scale":
            h = c2 * (h + t2)
        elif self.mistake != "t2 late":
            h = c2 * h + t2
        h = self.up2(torch.cat([h, skip14], 1))
        h = h + t2 if self.mistake == "t2 late" else h
        return self.head(self.conv_out(torch.cat([h, first], 1)))


def time_unet(mistake=None):
    return lambda in_channels, num_hiddens: StudentUNet(in_channels, num_hiddens, mistake=mistake)


def class_unet(mistake=None):
    return lambda in_channels, num_classes, num_hiddens: StudentUNet(in_channels, num_hiddens, num_classes, mistake)


def test_fc_block_check():
    ddpm.check_fc_block(StudentFC)
    ddpm.check_fc_block(StudentFC, in_features=10, out_features=3, batch_size=2, seed=4)
    fails_with(ddpm.check_fc_block, lambda i, o: StudentFC(i, o, nn.ReLU), "GELU")
    fails_with(ddpm.check_fc_block, lambda i, o: nn.Linear(i, o), "parameters, expected")
    fails_with(ddpm.check_fc_block, lambda i, o: nn.Sequential(FCBlock(i, o)), REFUSED)


def test_time_conditional_unet_check():
    ddpm.check_time_conditional_unet(time_unet())
    fails_with(ddpm.check_time_conditional_unet, time_unet("no time"), "does not change with t")
    fails_with(ddpm.check_time_conditional_unet, time_unet("t2 late"), "FIRST UpBlock")
    fails_with(ddpm.check_time_conditional_unet, lambda in_channels, num_hiddens: TimeConditionalUNet(), REFUSED)


def test_class_conditional_unet_check():
    cfg.check_class_conditional_unet(class_unet())
    cfg.check_class_conditional_unet(class_unet(), num_hiddens=5, batch_size=2, seed=9)
    fails_with(cfg.check_class_conditional_unet, class_unet("shift then scale"), "scale first, then shift")
    fails_with(cfg.check_class_conditional_unet,
               lambda in_channels, num_classes, num_hiddens: ClassConditionalUNet(), REFUSED)


# ----------------------------------------------------------------------------- stage 3: loss and sampling


def ddpm_loss(model, x0, schedule, generator=None, eps_first=False, scale_time=True):
    T = schedule.num_steps
    draws = [lambda: torch.randint(0, T, (x0.shape[0],), generator=generator),
             lambda: torch.randn(x0.shape, generator=generator)]
    t, eps = (d() for d in draws) if not eps_first else reversed([d() for d in reversed(draws)])
    alpha_bar = schedule.alpha_bars[t].view(-1, 1, 1, 1)
    x_t = alpha_bar.sqrt() * x0 + (1 - alpha_bar).sqrt() * eps
    return F.mse_loss(model(x_t, t / T if scale_time else t.float()), eps)


def test_ddpm_loss_check():
    ddpm.check_ddpm_loss(ddpm_loss)
    ddpm.check_ddpm_loss(ddpm_loss, batch_size=3, num_steps=17, seed=5)
    fails_with(ddpm.check_ddpm_loss, lambda *a: ddpm_loss(*a, eps_first=True), "draw t first")
    fails_with(ddpm.check_ddpm_loss, lambda *a: ddpm_loss(*a, scale_time=False), "t / T")
    fails_with(ddpm.check_ddpm_loss, lambda *a: ddpm_loss(*a).item(), "do not call .item()")
    fails_with(ddpm.check_ddpm_loss, lambda m, x0, s, g: objectives.ddpm_loss(m, x0, s, g), REFUSED)


def ddpm_step(x_t, eps, t, schedule, z=None, noise_at_zero=False, sigma_is_beta=False, typo=False):
    alpha_bar = schedule.alpha_bars[t]
    alpha_bar_prev = schedule.alpha_bars[t - 1] if t > 0 else torch.tensor(1.0)
    beta, alpha = schedule.betas[t], schedule.alphas[t]
    x0_hat = (x_t - (1 - alpha_bar).sqrt() * eps) / alpha_bar.sqrt()
    x_t_weight = alpha.sqrt() * (1 - (alpha_bar if typo else alpha_bar_prev)) / (1 - alpha_bar)
    mean = alpha_bar_prev.sqrt() * beta / (1 - alpha_bar) * x0_hat + x_t_weight * x_t
    if z is None or (t == 0 and not noise_at_zero):
        return mean
    return mean + (beta if sigma_is_beta else beta.sqrt()) * z


def test_ddpm_step_check_matches_both_written_forms():
    def ho_form(x_t, eps, t, schedule, z=None):
        beta, alpha, alpha_bar = schedule.betas[t], schedule.alphas[t], schedule.alpha_bars[t]
        mean = (x_t - beta / (1 - alpha_bar).sqrt() * eps) / alpha.sqrt()
        return mean if z is None or t == 0 else mean + beta.sqrt() * z

    ddpm.check_ddpm_step(ddpm_step)
    ddpm.check_ddpm_step(ho_form, batch_size=3, num_steps=1000, seed=2)


def test_ddpm_step_check_names_the_wrong_coefficient():
    fails_with(ddpm.check_ddpm_step, lambda *a: ddpm_step(*a, noise_at_zero=True), "noise at the last step t = 0")
    fails_with(ddpm.check_ddpm_step, lambda *a: ddpm_step(*a, sigma_is_beta=True), "sigma_t = sqrt(beta_t)")
    fails_with(ddpm.check_ddpm_step, lambda *a: ddpm_step(*a, typo=True), "check the coefficient of x_t")
    fails_with(ddpm.check_ddpm_step, lambda *a: sampling.ddpm_step(*a), REFUSED)


def ddpm_sample(model, schedule, num_samples, generator=None, stochastic=True, evaluate=True, noise_at_zero=False):
    if evaluate:
        model.eval()
    T = schedule.num_steps
    with torch.no_grad():
        x = torch.randn((num_samples, 1, 28, 28), generator=generator)
        frames = [x]
        for t in reversed(range(T)):
            eps = model(x, torch.full((num_samples,), t / T))
            z = torch.randn(x.shape, generator=generator) if stochastic and (t > 0 or noise_at_zero) else None
            x = ddpm_step(x, eps, t, schedule, z, noise_at_zero=noise_at_zero)
            frames.append(x)
    return x, torch.stack(frames)


def test_ddpm_sample_check():
    ddpm.check_ddpm_sample(ddpm_sample)
    fails_with(ddpm.check_ddpm_sample, lambda *a, **k: ddpm_sample(*a, **k, evaluate=False), "model.eval()")
    message = fails_with(ddpm.check_ddpm_sample, lambda *a, **k: ddpm_sample(*a, **k, noise_at_zero=True),
                         "did you add noise at the last step t = 0?")
    assert "frames first differ at x_0" in message
    fails_with(ddpm.check_ddpm_sample, lambda *a, **k: ddpm_sample(*a, **k)[0], "pair (samples, trajectory)")
    fails_with(ddpm.check_ddpm_sample, lambda m, s, n, g, stochastic: sampling.ddpm_sample(
        m, s, n, generator=g, return_trajectory=True, stochastic=stochastic), REFUSED)


# ----------------------------------------------------------------------------- stage 4


def drop_labels(c, p_uncond=0.1, generator=None):
    return c * (torch.rand(c.shape[0], generator=generator) >= p_uncond)[:, None].float()


def test_drop_labels_check():
    cfg.check_drop_labels(drop_labels)
    cfg.check_drop_labels(drop_labels, batch_size=300, p_uncond=0.4, seed=3)
    fails_with(cfg.check_drop_labels, lambda c, p, g: c * (torch.rand(c.shape[0], generator=g) < p)[:, None],
               "you kept the rows that should be dropped")
    fails_with(cfg.check_drop_labels, lambda c, p, g: c * (torch.rand(c.shape, generator=g) >= p),
               "one number per row")
    fails_with(cfg.check_drop_labels, lambda c, p, g: c * (torch.rand(c.shape, generator=g) >= p) + 0.0 * c.sum(),
               "one number per row")

    def in_place(c, p, g):
        c[torch.rand(c.shape[0], generator=g) < p] = 0
        return c

    fails_with(cfg.check_drop_labels, in_place, "in place")
    fails_with(cfg.check_drop_labels, lambda c, p, g: objectives.drop_labels(c, p, g), REFUSED)


def guided_eps(model, x_t, t, c, guidance, swap=False):
    eps_c, eps_u = model(torch.cat([x_t, x_t]), torch.cat([t, t]), torch.cat([c, torch.zeros_like(c)])).chunk(2)
    if swap:
        eps_c, eps_u = eps_u, eps_c
    return eps_u + guidance * (eps_c - eps_u)


def test_guided_eps_check():
    cfg.check_guided_eps(guided_eps)
    cfg.check_guided_eps(guided_eps, batch_size=1, guidance=10.0, seed=5)
    fails_with(cfg.check_guided_eps, lambda *a: guided_eps(*a, swap=True), "you swapped eps_cond and eps_uncond")

    def two_passes(model, x_t, t, c, guidance):
        eps_u = model(x_t, t, torch.zeros_like(c))
        return eps_u + guidance * (model(x_t, t, c) - eps_u)

    fails_with(cfg.check_guided_eps, two_passes, "ONE forward pass")

    def reference(model, x_t, t, c, guidance):
        return sampling.guided_eps(model, x_t, t, c, guidance)

    fails_with(cfg.check_guided_eps, reference, REFUSED)


# ----------------------------------------------------------------------------- stage 5


def flow_loss(model, x0, generator=None, sign=1):
    t = torch.rand(x0.shape[0], generator=generator)
    eps = torch.randn(x0.shape, generator=generator)
    x_t = (1 - t.view(-1, 1, 1, 1)) * x0 + t.view(-1, 1, 1, 1) * eps
    return F.mse_loss(model(x_t, t), sign * (eps - x0))


def test_flow_loss_check():
    flow.check_flow_loss(flow_loss)
    flow.check_flow_loss(flow_loss, batch_size=2, seed=8)
    fails_with(flow.check_flow_loss, lambda *a: flow_loss(*a, sign=-1), "eps - x0, not x0 - eps")
    fails_with(flow.check_flow_loss, lambda m, x0, g: objectives.flow_loss(m, x0, g), REFUSED)


def flow_sample(model, num_samples, num_steps, generator=None, sign=-1, shift=0):
    model.eval()
    with torch.no_grad():
        x = torch.randn((num_samples, 1, 28, 28), generator=generator)
        for k in range(num_steps):
            x = x + sign * model(x, torch.full((num_samples,), 1 - (k + shift) / num_steps)) / num_steps
    return x


def test_flow_sample_check():
    flow.check_flow_sample(flow_sample)
    flow.check_flow_sample(flow_sample, num_samples=3, num_steps=1, seed=6)
    fails_with(flow.check_flow_sample, lambda *a: flow_sample(*a, sign=+1), "x <- x - dt * v")
    fails_with(flow.check_flow_sample, lambda *a: flow_sample(*a, shift=1), "t_k = 1 - k / num_steps")
    fails_with(flow.check_flow_sample, lambda m, n, k, g: sampling.flow_sample(m, n, k, generator=g), REFUSED)
