"""The checks of stages 3-5 (course_lib.stages.ddpm.checks, .cfg, .flow): correct code passes, known mistakes fail
with the hint that names them, and every probe runs without the answers (as in a grading kernel).

Each "student" function below is a small, deliberately wrong variant of the notebooks' solutions. The catalogue of
mistakes and the messages that name them is ``test_mistake_catalogue.py``, which uses these students too; here are
the checks' other behaviours.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from course_lib.checks import CheckFailed
from course_lib.stages.cfg import checks as cfg
from course_lib.stages.ddpm import checks as ddpm
from course_lib.stages.flow import checks as flow
from course_lib.models import ConvBlock, DownBlock, Flatten, Unflatten, UpBlock
from check_helpers import fails_with, leave_out_answers, round_trip


pytestmark = pytest.mark.usefixtures("single_thread")


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


def test_time_conditional_unet_check():
    ddpm.check_time_conditional_unet(time_unet())
    ddpm.check_time_conditional_unet(time_unet(), num_hiddens=5, batch_size=2, seed=21)


def test_class_conditional_unet_check():
    cfg.check_class_conditional_unet(class_unet())
    cfg.check_class_conditional_unet(class_unet(), num_hiddens=5, batch_size=2, seed=9)


def test_class_conditional_unet_check_passes_the_reference_and_probes_without_answers(monkeypatch):
    from course_lib import stages

    reference = stages.get("cfg").answers.ClassConditionalUNet
    cfg.check_class_conditional_unet(reference)
    cfg.check_class_conditional_unet(reference, num_hiddens=5, batch_size=2, seed=9)
    assert "ClassConditionalUNet(num_hiddens=5)" in judge_cfg_flow_probe_without_answers(
        monkeypatch, cfg.check_class_conditional_unet, (reference,), num_hiddens=5, batch_size=2, seed=9)


# ----------------------------------------------------------------------------- stage 3: loss and sampling


def ddpm_loss(model, x0, schedule, generator=None, eps_first=False, scale_time=True, cpu_t=False):
    T = schedule.num_steps
    draws = [lambda: torch.randint(0, T, (x0.shape[0],), generator=generator, device=None if cpu_t else x0.device),
             lambda: torch.randn(x0.shape, generator=generator, device=x0.device)]
    t, eps = (d() for d in draws) if not eps_first else reversed([d() for d in reversed(draws)])
    alpha_bar = schedule.alpha_bars[t].view(-1, 1, 1, 1)
    x_t = alpha_bar.sqrt() * x0 + (1 - alpha_bar).sqrt() * eps
    return F.mse_loss(model(x_t, t / T if scale_time else t.float()), eps)


def test_ddpm_loss_check():
    ddpm.check_ddpm_loss(ddpm_loss)
    ddpm.check_ddpm_loss(ddpm_loss, batch_size=3, num_steps=17, seed=5)


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


def ddpm_sample(model, schedule, num_samples, generator=None, stochastic=True, evaluate=True, noise_at_zero=False,
                cpu_time=False):
    """The notebook's ddpm_sample, with one mistake if asked (``cpu_time``: the time tensor made on the CPU)."""
    if evaluate:
        model.eval()
    T, device = schedule.num_steps, next(model.parameters()).device
    with torch.no_grad():
        x = torch.randn((num_samples, 1, 28, 28), generator=generator, device=device)
        frames = [x.cpu()]
        for t in reversed(range(T)):
            eps = model(x, torch.full((num_samples,), t / T, device=None if cpu_time else device))
            z = (torch.randn(x.shape, generator=generator, device=device) if stochastic and (t > 0 or noise_at_zero)
                 else None)
            x = ddpm_step(x, eps, t, schedule, z, noise_at_zero=noise_at_zero)
            frames.append(x.cpu())
    return x, torch.stack(frames)


def test_ddpm_sample_check():
    ddpm.check_ddpm_sample(ddpm_sample)
    message = fails_with(ddpm.check_ddpm_sample, lambda *a, **k: ddpm_sample(*a, **k, noise_at_zero=True),
                         "did you add noise at the last step t = 0?")
    assert "frames first differ at x_0" in message
    fails_with(ddpm.check_ddpm_sample, lambda *a, **k: (ddpm_sample(*a, **k)[0].tolist(), ddpm_sample(*a, **k)[1]),
               "samples should be a torch.Tensor, got list")


def ddim_sample(model, schedule, num_samples, num_steps, generator=None, last_alpha_bar=1.0, plain_noise=False,
                cpu_time=False, fresh_noise=False):
    """The notebook's ddim_sample, written with Ho-style coefficients of x_t and eps, with one mistake if asked."""
    model.eval()
    T, device = schedule.num_steps, next(model.parameters()).device
    timesteps = torch.linspace(T - 1, 0, num_steps).round().long().tolist()
    with torch.no_grad():
        x = torch.randn((num_samples, 1, 28, 28), generator=generator, device=device)
        frames = [x.cpu()]
        for i, t in enumerate(timesteps):
            ab = schedule.alpha_bars[t]
            ab_next = schedule.alpha_bars[timesteps[i + 1]] if i + 1 < num_steps else torch.tensor(last_alpha_bar)
            eps = model(x, torch.full((num_samples,), t / T, device=None if cpu_time else device))
            noise_weight = 1 - ab_next if plain_noise else (1 - ab_next).sqrt()
            x = (ab_next / ab).sqrt() * x + (noise_weight - (ab_next * (1 - ab) / ab).sqrt()) * eps
            if fresh_noise:
                x = x + 0.1 * torch.randn(x.shape, generator=generator, device=device)
            frames.append(x.cpu())
    return x, torch.stack(frames)


def test_ddim_sample_check():
    ddpm.check_ddim_sample(ddim_sample)
    ddpm.check_ddim_sample(ddim_sample, num_samples=3, num_steps=300, num_sampling_steps=25, seed=7)
    message = fails_with(ddpm.check_ddim_sample, lambda *a: ddim_sample(*a, last_alpha_bar=0.9999),
                         "after the last timestep alpha_bar = 1")
    assert "trajectory[6," in message
    fails_with(ddpm.check_ddim_sample, lambda *a: ddim_sample(*a, plain_noise=True), "forget the square root")
    fails_with(ddpm.check_ddim_sample, lambda *a: ddim_sample(*a, fresh_noise=True), "with no fresh noise")
    fails_with(ddpm.check_ddim_sample, lambda m, s, n, k, g: ddim_sample(m, s, n, k + 1, g), "called the model 7 times")


def stage3_answers():
    """``{check name: the reference answers as the student's objects}`` for the checks of stage 3."""
    from course_lib import stages

    ref = stages.get("ddpm").answers
    return {"check_fc_block": (ref.FCBlock,), "check_time_conditional_unet": (ref.TimeConditionalUNet,),
            "check_ddpm_loss": (ref.ddpm_loss,), "check_ddpm_step": (ref.ddpm_step,),
            "check_ddpm_sample": (lambda model, schedule, num_samples, generator, stochastic: ref.ddpm_sample(
                model, schedule, num_samples, generator, stochastic, return_trajectory=True),),
            "check_ddim_sample": (lambda model, schedule, num_samples, num_steps, generator: ref.ddim_sample(
                model, schedule, num_samples, num_steps, generator, return_trajectory=True),)}


STAGE3_OTHER_CASES = {"check_fc_block": {"in_features": 10, "out_features": 3, "batch_size": 2, "seed": 4},
                      "check_time_conditional_unet": {"num_hiddens": 5, "batch_size": 2, "seed": 21},
                      "check_ddpm_loss": {"batch_size": 3, "num_steps": 17, "seed": 5},
                      "check_ddpm_step": {"batch_size": 1, "num_steps": 7, "seed": 2},
                      "check_ddpm_sample": {"num_samples": 3, "num_steps": 6, "seed": 4},
                      "check_ddim_sample": {"num_samples": 1, "num_steps": 20, "num_sampling_steps": 20, "seed": 3}}


@pytest.mark.parametrize("name", list(STAGE3_OTHER_CASES))
def test_stage3_reference_answers_pass(name):
    students = stage3_answers()[name]
    getattr(ddpm, name)(*students)
    getattr(ddpm, name)(*students, **STAGE3_OTHER_CASES[name])


@pytest.mark.parametrize("name", list(STAGE3_OTHER_CASES))
def test_stage3_probes_run_without_the_answers(name, monkeypatch):
    import io

    from course_lib import models
    from course_lib.checks.protocol import verdict
    from course_lib.stages import AnswerNotIncluded

    check = getattr(ddpm, name).check
    students = stage3_answers()[name]
    case = check.case(**STAGE3_OTHER_CASES[name])
    inputs, expected = check.reference(**case)

    leave_out_answers(monkeypatch)
    with pytest.raises(AnswerNotIncluded):
        models.TimeConditionalUNet
    outputs = check.probe(*students, inputs=inputs)
    assert "failed" not in outputs

    def saved(value):  # as the grading kernel and the grader exchange them
        buffer = io.BytesIO()
        torch.save(value, buffer)
        buffer.seek(0)
        return torch.load(buffer, weights_only=True)

    assert verdict(check, case, saved(inputs), saved(outputs), saved(expected))


def test_stage3_judges_reject_forged_outputs():
    from course_lib.checks.protocol import verdict

    check = ddpm.check_ddpm_sample.check
    case = check.case()
    inputs, expected = check.reference(**case)
    outputs = check.probe(*stage3_answers()["check_ddpm_sample"], inputs=inputs)
    for run in outputs["runs"]:
        run["calls"] = run["calls"][:-1]
    with pytest.raises(CheckFailed, match="called the model 9 times"):
        verdict(check, case, inputs, outputs, expected)
    for forged in ({"runs": "passed"}, {"runs": [{"samples": 1}]}, {}):
        with pytest.raises(CheckFailed):
            verdict(check, case, inputs, forged, expected)


# ----------------------------------------------------------------------------- stage 4


def drop_labels(c, p_uncond=0.1, generator=None):
    return c * (torch.rand(c.shape[0], generator=generator, device=c.device) >= p_uncond)[:, None].float()


def test_drop_labels_check():
    cfg.check_drop_labels(drop_labels)
    cfg.check_drop_labels(drop_labels, batch_size=300, p_uncond=0.4, seed=3)
    fails_with(cfg.check_drop_labels, lambda c, p, g: c * (torch.rand(c.shape, generator=g) >= p) + 0.0 * c.sum(),
               "one number per row")
    fails_with(cfg.check_drop_labels, lambda c, p, g: drop_labels(c, p, g) if p > 0 else c * 0,
               "should zero none of the rows")


def passes_with_the_answer(monkeypatch, check, name: str, **case) -> str:
    """``check`` passes stage 4's answer ``name`` on its default case and on ``case``, also with the probe run
    without the answers; returns the message of the latter."""
    from course_lib import stages

    answer = stages.get("cfg").answers.__dict__[name]
    check(answer)
    check(answer, **case)
    return judge_cfg_flow_probe_without_answers(monkeypatch, check, (answer,), **case)


def test_drop_labels_check_passes_the_reference_and_probes_without_answers(monkeypatch):
    assert "300 rows" in passes_with_the_answer(monkeypatch, cfg.check_drop_labels, "drop_labels", batch_size=300,
                                                p_uncond=0.4, seed=3)
    judge_cfg_flow_probe_without_answers(monkeypatch, cfg.check_drop_labels, (drop_labels,))
    with pytest.raises(CheckFailed, match="one number per row"):
        judge_cfg_flow_probe_without_answers(monkeypatch, cfg.check_drop_labels,
                                             (lambda c, p, g: c * (torch.rand(c.shape, generator=g) >= p),))


def guided_eps(model, x_t, t, c, guidance, swap=False):
    eps_c, eps_u = model(torch.cat([x_t, x_t]), torch.cat([t, t]), torch.cat([c, torch.zeros_like(c)])).chunk(2)
    if swap:
        eps_c, eps_u = eps_u, eps_c
    return eps_u + guidance * (eps_c - eps_u)


def test_guided_eps_check():
    cfg.check_guided_eps(guided_eps)
    cfg.check_guided_eps(guided_eps, batch_size=1, guidance=10.0, seed=5)
    def from_cond(model, x_t, t, c, guidance):
        eps_c, eps_u = model(torch.cat([x_t, x_t]), torch.cat([t, t]), torch.cat([c, torch.zeros_like(c)])).chunk(2)
        return eps_c + guidance * (eps_c - eps_u)

    fails_with(cfg.check_guided_eps, from_cond, "start from the unconditional prediction")

    def all_conditional(model, x_t, t, c, guidance):
        eps_c, eps_u = model(torch.cat([x_t, x_t]), torch.cat([t, t]), torch.cat([c, c])).chunk(2)
        return eps_u + guidance * (eps_c - eps_u)

    fails_with(cfg.check_guided_eps, all_conditional, "must be unconditional, with c = zeros")


def test_guided_eps_check_passes_the_reference_and_probes_without_answers(monkeypatch):
    assert "10" in passes_with_the_answer(monkeypatch, cfg.check_guided_eps, "guided_eps", batch_size=1,
                                          guidance=10.0, seed=5)
    with pytest.raises(CheckFailed, match="you swapped eps_cond and eps_uncond"):
        judge_cfg_flow_probe_without_answers(monkeypatch, cfg.check_guided_eps,
                                             (lambda *a: guided_eps(*a, swap=True),))


# ----------------------------------------------------------------------------- stage 5


def flow_loss(model, x0, generator=None, sign=1, cpu_t=False):
    t = torch.rand(x0.shape[0], generator=generator, device=None if cpu_t else x0.device)
    eps = torch.randn(x0.shape, generator=generator, device=x0.device)
    x_t = (1 - t.view(-1, 1, 1, 1)) * x0 + t.view(-1, 1, 1, 1) * eps
    return F.mse_loss(model(x_t, t), sign * (eps - x0))


def test_flow_loss_check():
    flow.check_flow_loss(flow_loss)
    flow.check_flow_loss(flow_loss, batch_size=2, seed=8)


def test_flow_loss_check_passes_the_reference_and_probes_without_answers(monkeypatch):
    from course_lib import stages

    reference = stages.get("flow").answers.flow_loss
    flow.check_flow_loss(reference)
    flow.check_flow_loss(reference, batch_size=2, seed=8)
    assert "batch 2" in judge_cfg_flow_probe_without_answers(monkeypatch, flow.check_flow_loss, (reference,),
                                                             batch_size=2, seed=8)
    with pytest.raises(CheckFailed, match="eps - x0, not x0 - eps"):
        judge_cfg_flow_probe_without_answers(monkeypatch, flow.check_flow_loss, (lambda *a: flow_loss(*a, sign=-1),))


def flow_sample(model, num_samples, num_steps, generator=None, sign=-1, shift=0, start=None, cpu_time=False):
    """The notebook's flow_sample, with one mistake if asked (``start``: the noise it starts from instead of the
    generator's; ``cpu_time``: the time tensor made on the CPU)."""
    model.eval()
    device = next(model.parameters()).device
    with torch.no_grad():
        x = torch.randn((num_samples, 1, 28, 28), generator=generator, device=device) if start is None else start
        for k in range(num_steps):
            time = torch.full((num_samples,), 1 - (k + shift) / num_steps, device=None if cpu_time else device)
            x = x + sign * model(x, time) / num_steps
    return x


def test_flow_sample_check():
    flow.check_flow_sample(flow_sample)
    flow.check_flow_sample(flow_sample, num_samples=3, num_steps=1, seed=6)

    def in_train_mode(model, num_samples, num_steps, generator=None):
        model.train()
        with torch.no_grad():
            return _euler_steps(model, num_samples, num_steps, generator)

    fails_with(flow.check_flow_sample, in_train_mode, "model.eval()")
    fails_with(flow.check_flow_sample, lambda m, n, k, g: _euler_steps(m.eval(), n, k, g), "torch.no_grad()")


def _euler_steps(model, num_samples, num_steps, generator):
    x = torch.randn((num_samples, 1, 28, 28), generator=generator)
    for k in range(num_steps):
        x = x - model(x, torch.full((num_samples,), 1 - k / num_steps)) / num_steps
    return x


def test_flow_sample_check_passes_the_reference_and_probes_without_answers(monkeypatch):
    from course_lib import stages

    def reference(model, num_samples, num_steps, generator):
        return stages.get("flow").answers.flow_sample(model, num_samples, num_steps, generator)

    flow.check_flow_sample(reference)
    flow.check_flow_sample(reference, num_samples=3, num_steps=1, seed=6)
    answer = stages.get("flow").answers.flow_sample
    assert "(1 steps)" in judge_cfg_flow_probe_without_answers(monkeypatch, flow.check_flow_sample, (answer,),
                                                               num_samples=3, num_steps=1, seed=6)
    with pytest.raises(CheckFailed, match="x <- x - dt \\* v"):
        judge_cfg_flow_probe_without_answers(monkeypatch, flow.check_flow_sample,
                                             (lambda *a: flow_sample(*a, sign=+1),))


def judge_cfg_flow_probe_without_answers(monkeypatch, check_function, students: tuple, **given) -> str:
    """Stages 4-5: the expected values first (with the answers), then the probe with every answer unavailable
    (the stages' answers, and so ``course_lib.models``, raise AnswerNotIncluded), its outputs through the save/load of
    grading, then the verdict."""
    import io

    import course_lib.models
    from course_lib.checks.protocol import verdict
    from course_lib.stages import AnswerNotIncluded

    entry = check_function.check
    case = entry.case(**given)

    def round_trip(value):  # through torch.save and torch.load(weights_only=True), as between grader and kernel
        buffer = io.BytesIO()
        torch.save(value, buffer)
        buffer.seek(0)
        return torch.load(buffer, weights_only=True)

    inputs, expected = entry.reference(**case)
    inputs = round_trip(inputs)
    with monkeypatch.context() as patched:
        leave_out_answers(patched)
        with pytest.raises(AnswerNotIncluded):
            course_lib.models.ClassConditionalUNet  # noqa: B018 - the patch is in place
        outputs = round_trip(entry.run_probe(students, inputs))
    with pytest.raises(CheckFailed):  # a record that is not what the probe writes never passes
        verdict(entry, case, inputs, {}, expected)
    return verdict(entry, case, inputs, outputs, expected)


# ----------------------------------------------------------------------------- stage 4: cfg_loss, cfg_sample


def cfg_loss(model, x0, labels, schedule, p_uncond=0.1, generator=None, order=("drop", "t", "eps"), mistake=None):
    """The notebook's cfg_loss, with the draws in ``order`` and one mistake if asked."""
    from course_lib.noise import q_sample

    T = schedule.num_steps
    c = torch.eye(10)[labels] if mistake == "eye" else F.one_hot(labels, 10).float()
    draws = {}
    for what in order:
        if what == "drop":
            draws["c"] = c if mistake == "no_dropout" else drop_labels(c, 0.1 if mistake == "fixed_p" else p_uncond,
                                                                        generator)
        elif what == "t":
            draws["t"] = torch.randint(0, T, (x0.shape[0],), generator=generator,
                                       device=None if mistake == "cpu_t" else x0.device)
        else:
            draws["eps"] = torch.randn(x0.shape, generator=generator, device=x0.device)
    t, eps = draws["t"], draws["eps"]
    time = t.float() if mistake == "integer_time" else t / T
    output = model(q_sample(x0, t, eps, schedule), time, draws["c"])
    target = x0 if mistake == "target_x0" else eps
    return F.mse_loss(output, target, reduction="sum" if mistake == "sum" else "mean")


def test_cfg_loss_check_passes_a_student_and_the_reference():
    from course_lib import stages

    reference = stages.get("cfg").answers.class_conditional_loss
    for case in ({}, {"batch_size": 64, "num_steps": 300, "p_uncond": 0.1, "seed": 7},
                 {"batch_size": 9, "num_steps": 17, "p_uncond": 0.5, "seed": 21}):
        cfg.check_cfg_loss(cfg_loss, **case)
        cfg.check_cfg_loss(reference, **case)


def test_cfg_loss_check_passes_the_reference_and_probes_without_answers(monkeypatch):
    from course_lib import stages

    reference = stages.get("cfg").answers.class_conditional_loss
    assert "batch 9" in judge_cfg_flow_probe_without_answers(monkeypatch, cfg.check_cfg_loss, (reference,),
                                                             batch_size=9, num_steps=17, p_uncond=0.5, seed=21)
    assert "batch 16" in judge_without_stage4_answers(monkeypatch, cfg.check_cfg_loss, (cfg_loss,))
    with pytest.raises(CheckFailed, match="draw in this order"):
        judge_without_stage4_answers(monkeypatch, cfg.check_cfg_loss,
                                     (lambda *a, **k: cfg_loss(*a, **k, order=("eps", "t", "drop")),))


def cfg_sample(model, schedule, labels, guidance=5.0, generator=None, evaluate=True, no_grad=True, scale=None,
               stochastic=True, last_noise=False, batched=True, classes=None, cpu_time=False, cpu_classes=False):
    """The notebook's cfg_sample, with one mistake if asked (``classes``: the one-hot classes it uses instead of
    F.one_hot(labels, 10); ``cpu_time``, ``cpu_classes``: the time tensor made on, the classes left on the CPU)."""
    from course_lib.sampling import ddpm_step

    if evaluate:
        model.eval()
    T, n, device = schedule.num_steps, len(labels), next(model.parameters()).device
    c = F.one_hot(labels, 10).float() if classes is None else classes
    c = c if cpu_classes else c.to(device)
    gamma = guidance if scale is None else scale
    with torch.set_grad_enabled(not no_grad):
        x = torch.randn((n, 1, 28, 28), generator=generator, device=device)
        for t in reversed(range(T)):
            time = torch.full((n,), t / T, device=None if cpu_time else device)
            if batched:
                eps = guided_eps(model, x, time, c, gamma)
            else:
                eps_u = model(x, time, torch.zeros_like(c))
                eps = eps_u + gamma * (model(x, time, c) - eps_u)
            noisy = stochastic and (t > 0 or last_noise)
            z = torch.randn(x.shape, generator=generator, device=device) if noisy else None
            x = ddpm_step(x, eps, t, schedule, z)
            if t == 0 and z is not None:
                x = x + schedule.betas[0].sqrt() * z
    return x


def test_cfg_sample_check_passes_a_student_and_the_reference():
    from course_lib import stages

    reference = stages.get("cfg").answers.cfg_sample
    for case in ({}, {"num_samples": 2, "num_steps": 12, "guidance": 7.5, "seed": 4},
                 {"num_samples": 4, "num_steps": 5, "guidance": 0.0, "seed": 21}):
        cfg.check_cfg_sample(cfg_sample, **case)
    cfg.check_cfg_sample(reference)


def test_cfg_sample_check_finds_a_late_x_T_and_missing_classes():
    def late_start(model, schedule, labels, guidance=5.0, generator=None):
        torch.randn(3, generator=generator)
        return cfg_sample(model, schedule, labels, guidance, generator)

    fails_with(cfg.check_cfg_sample, late_start, "draw x_T")

    def classless(model, schedule, labels, guidance=5.0, generator=None):
        return cfg_sample(model, schedule, labels * 0, guidance, generator)

    fails_with(cfg.check_cfg_sample, classless, "c = F.one_hot(labels, 10).float()")
    fails_with(cfg.check_cfg_sample, lambda *a, **k: cfg_sample(*a, **k).tolist(), "samples should be a torch.Tensor")


def test_cfg_sample_check_probes_without_answers(monkeypatch):
    assert "guidance 7.5" in judge_without_stage4_answers(monkeypatch, cfg.check_cfg_sample, (cfg_sample,),
                                                          num_samples=2, num_steps=12, guidance=7.5, seed=4)
    with pytest.raises(CheckFailed, match="noise at the last step"):
        judge_without_stage4_answers(monkeypatch, cfg.check_cfg_sample,
                                     (lambda *a, **k: cfg_sample(*a, **k, last_noise=True),))


def judge_without_stage4_answers(monkeypatch, check_function, students: tuple, **given) -> str:
    """As in a stage-4 grading kernel: the expected values with every answer, then the probe with the answers of
    stages 4 and 5 left out (the student's loss and sampler use stage 1's q_sample and stage 3's ddpm_step, which
    that kernel has), its outputs through torch.save/torch.load(weights_only=True), then the verdict."""

    from course_lib.checks.protocol import verdict

    entry = check_function.check
    case = entry.case(**given)
    inputs, expected = (round_trip(part) for part in entry.reference(**case))
    with monkeypatch.context() as patched:
        leave_out_answers(patched, ("cfg", "flow"))
        outputs = round_trip(entry.run_probe(students, inputs))
    return verdict(entry, case, inputs, outputs, expected)
