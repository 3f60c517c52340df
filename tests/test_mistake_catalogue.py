"""The catalogue of plausible mistakes: for every graded TODO of every stage (``Stage.todos``), the wrong answers a
student may write, each with the part of the message its visible check must fail with (the one that names that
mistake), and correct answers written differently from the reference, which must pass.

Each entry of :data:`CATALOGUE` is one TODO: its check, its ``correct`` answers and its ``mistakes``, by name. A
"student" is what the notebook's check cell passes (one object, or a tuple of them for a check of several). The
student code that other test modules use too is imported from them; the rest is written here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from course_lib import stages
from course_lib.noise import q_sample as given_q_sample
from course_lib.sampling import ddpm_step as given_ddpm_step
from course_lib.sampling import guided_eps as given_guided_eps
from course_lib.stages.cfg import answers as cfg_answers
from course_lib.stages.cfg import checks as cfg
from course_lib.stages.ddpm import checks as ddpm
from course_lib.stages.denoiser import answers as answer
from course_lib.stages.denoiser import checks as denoiser
from course_lib.stages.editing import checks as editing
from course_lib.stages.flow import checks as flow
from course_lib.stages.improved import checks as improved
from course_lib.stages.improved.answers import SelfAttention, sinusoidal_embedding
from course_lib.stages.noising import checks as noising
from check_helpers import fails_with
from test_checks import cosine_schedule_float32, em_step
from test_checks_denoiser import (blocks, conv_layer, loss_summed, noisy, operations, own_batches_loop,
                                  student_loop, unet)
from test_checks_diffusion import (StudentFC, cfg_loss, cfg_sample, class_unet, ddim_sample, ddpm_loss, ddpm_sample,
                                   ddpm_step, drop_labels, flow_loss, flow_sample, guided_eps, time_unet)


pytestmark = pytest.mark.usefixtures("single_thread")


@dataclass(frozen=True)
class Todo:
    """One TODO: its visible ``check``; ``correct``: name -> a correct answer written differently from the
    reference; ``mistakes``: name -> (a wrong answer, the fragment of the message that must name it); ``case``:
    the check's case parameters for all of them (small sizes; the visible case when empty)."""

    check: Callable
    correct: dict[str, object]
    mistakes: dict[str, tuple[object, str]]
    case: dict = field(default_factory=dict)


def students(student) -> tuple:
    return student if isinstance(student, tuple) else (student,)


# ----------------------------------------------------------------------------------------------- stage 4: sample_digits


def sample_digits_by_digit(model, schedule, digits, per_digit, guidance, generator=None):
    """Labels grouped by digit (3, 3, 3, 7, 7, 7), sampled in one call."""
    labels = torch.tensor(list(digits)).repeat_interleave(per_digit)
    return cfg_answers.cfg_sample(model, schedule, labels, guidance, generator), labels


def sample_digits_listed(model, schedule, digits, per_digit, guidance, generator=None):
    device = next(model.parameters()).device
    labels = torch.tensor([d for _ in range(per_digit) for d in digits], device=device)
    return cfg_answers.cfg_sample(model, schedule, labels, guidance, generator), labels


def sample_digits_mistaken(mistake):
    """sample_digits with one mistake."""
    def sample_digits(model, schedule, digits, per_digit, guidance, generator=None):
        labels = torch.tensor(list(digits) * (1 if mistake == "once" else per_digit))
        if mistake == "per_call":
            samples = torch.cat([cfg_answers.cfg_sample(model, schedule, labels[labels == d], guidance, generator)
                                 for d in digits])
            return samples, labels.sort(stable=True).values
        if mistake == "cpu_mask":  # a mask made on the CPU, applied to samples on the model's device
            samples = cfg_answers.cfg_sample(model, schedule, labels, guidance, generator)
            return samples * torch.ones(samples.shape), labels
        samples = cfg_answers.cfg_sample(model, schedule, labels, 5.0 if mistake == "guidance" else guidance,
                                         torch.Generator().manual_seed(0) if mistake == "own_generator" else generator)
        if mistake == "sorted":
            labels = labels.sort().values
        if mistake == "float":
            labels = labels.float()
        return samples if mistake == "samples_only" else (samples, labels)
    return sample_digits


# ----------------------------------------------------------------------------------------------- stage 1


def add_noise(x, sigma, generator=None):
    return torch.randn(x.size(), generator=generator, device=x.device).mul(sigma).add(x)


def linear_schedule(num_steps, beta_start=1e-4, beta_end=0.02, mistake=None):
    """ddpm_schedule written without linspace or cumprod; ``mistake`` switches on one error."""
    steps = num_steps + 1 if mistake == "one_more" else num_steps
    betas = beta_start + (beta_end - beta_start) * torch.arange(steps, dtype=torch.float64) / (steps - 1)
    betas = betas[1:] if mistake == "one_more" else betas
    alphas = 1 - betas
    alpha_bars = torch.exp(torch.cumsum(torch.log(alphas), 0))
    alpha_bars = {"cumsum": torch.cumsum(alphas, 0), "sqrt": alpha_bars.sqrt()}.get(mistake, alpha_bars)
    return (betas, alphas) if mistake == "two_tables" else (betas, alphas, alpha_bars)


def cosine_fixed_cap(cap):
    """A cosine schedule clipped at ``cap`` whatever max_beta it is given."""
    return lambda num_steps, offset=0.008, max_beta=0.02: cosine_schedule_float32(num_steps, offset, cap)


def cosine_clip(num_steps, offset=0.008, max_beta=0.02):
    """The cosine schedule with torch.minimum for the clip."""
    betas = cosine_schedule_float32(num_steps, offset, max_beta=1.0)[0]
    betas = torch.minimum(betas, torch.tensor(max_beta))
    return betas, 1 - betas, torch.cumprod(1 - betas, 0)


def q_sample(x0, t, eps, schedule, mistake=None):
    bars = schedule.alphas if mistake == "alphas" else schedule.alpha_bars
    a = bars[t - 1 if mistake == "off_by_one" else t]
    a = a if mistake == "no_reshape" else a[:, None, None, None]
    if mistake == "no_roots":
        return a * x0 + (1 - a) * eps
    if mistake == "swapped":
        return torch.sqrt(1 - a) * x0 + torch.sqrt(a) * eps
    return torch.sqrt(a) * x0 + torch.sqrt(1 - a) * eps


def em(mistake):
    """em_step with one mistake."""
    return lambda x, t, dt, f, b, z: {
        "no_sqrt": lambda: x + f(x, t) * dt + b(x, t) * z,
        "dt_noise": lambda: x + f(x, t) * dt + b(x, t) * dt * z,
        "no_drift": lambda: x + b(x, t) * dt ** 0.5 * z,
        "drift_without_dt": lambda: x + f(x, t) + b(x, t) * dt ** 0.5 * z,
        "unscaled_noise": lambda: x + f(x, t) * dt + dt ** 0.5 * z,
        "sqrt_of_b": lambda: x + f(x, t) * dt + (b(x, t) * dt) ** 0.5 * z,
        "swapped": lambda: x + b(x, t) * dt + f(x, t) * dt ** 0.5 * z,
        "without_x": lambda: f(x, t) * dt + b(x, t) * dt ** 0.5 * z,
        "late": lambda: em_step(x, t + dt, dt, f, b, z),
        "own_noise": lambda: em_step(x, t, dt, f, b, torch.randn_like(x)),
        "in_place": lambda: x.add_(f(x, t) * dt + b(x, t) * dt ** 0.5 * z),
        "torch_sqrt": lambda: x + f(x, t) * dt + b(x, t) * torch.sqrt(dt) * z,
        "tensor_method": lambda: x + f(x, t) * dt + b(x, t).mul(dt ** 0.5) * z,
        "cpu_diffusion": lambda: x + f(x, t) * dt + torch.as_tensor(b(x, t)).expand(x.shape) * dt ** 0.5 * z,
    }[mistake]()


NOISING = {
    "add_noise": Todo(noising.check_add_noise, {"randn then mul and add": add_noise}, {
        "no noise": (lambda x, sigma, generator=None: x.clone(), "z equals x"),
        "noise alone": (lambda x, sigma, generator=None: sigma * torch.randn(x.shape, generator=generator),
                        "z is the noise alone"),
        "variance": (lambda x, sigma, generator=None: add_noise(x, sigma ** 2, generator), "by sigma**2"),
        "uniform": (lambda x, sigma, generator=None: x + sigma * torch.rand(x.shape, generator=generator),
                    "use torch.randn"),
        "randn_like": (lambda x, sigma, generator=None: x + sigma * torch.randn_like(x), "not torch.randn_like"),
        "in place": (lambda x, sigma, generator=None: x.add_(sigma * torch.randn(x.shape, generator=generator)),
                     "changed its input x in place"),
        "eps drawn on the CPU": (lambda x, sigma, generator=None: x + sigma * torch.randn(x.shape, generator=generator),
                                 "your add_noise mixes devices: `torch.randn` drew on cpu with the generator you were "
                                 "given, which lives on x's device (meta): pass `device=x.device`"),
    }),
    "ddpm_schedule": Todo(noising.check_schedule, {"arange and exp of cumsum of logs": linear_schedule}, {
        "one step too many": (lambda *a: linear_schedule(*a, mistake="one_more"), "one step too many"),
        "cumulative sum": (lambda *a: linear_schedule(*a, mistake="cumsum"), "that is a cumulative sum"),
        "square root": (lambda *a: linear_schedule(*a, mistake="sqrt"), "no square root here"),
        "two tables": (lambda *a: linear_schedule(*a, mistake="two_tables"), "should return three tensors"),
    }),
    "cosine_schedule": Todo(noising.check_cosine_schedule, {
        "float32": cosine_schedule_float32, "torch.minimum": cosine_clip}, {
        "fixed cap 0.02": (cosine_fixed_cap(0.02), "clip at the max_beta you are given"),
        "fixed cap 0.999": (cosine_fixed_cap(0.999), "your betas are clipped at 0.999, a fixed number"),
        **{mistake: (lambda *a, mistake=mistake, **k: cosine_schedule_float32(*a, **k, mistake=mistake), hint)
           for mistake, hint in (("unclipped", "betas go above max_beta"), ("floor", "you clipped from below"),
                                 ("shift", "off by one"), ("no_offset", "the offset is missing"),
                                 ("not_squared", "the square of the cosine"),
                                 ("alpha_bars_from_f", "cumulative product of the clipped alphas"))},
    }),
    "q_sample": Todo(noising.check_q_sample, {"indexing with None and torch.sqrt": q_sample}, {
        mistake: (lambda *a, mistake=mistake: q_sample(*a, mistake=mistake), hint)
        for mistake, hint in (("alphas", "you used alphas"), ("off_by_one", "off by one"),
                              ("no_roots", "the square roots are missing"), ("swapped", "x0 and eps are swapped"),
                              ("no_reshape", "reshape it to (N, 1, 1, 1)"))}),
    "em_step": Todo(noising.check_em_step, {
        "dt ** 0.5": em_step,
        "math.sqrt": lambda x, t, dt, f, b, z: x + dt * f(x, t) + math.sqrt(dt) * b(x, t) * z}, {
        mistake: (em(mistake), hint)
        for mistake, hint in (("no_sqrt", "needs sqrt(dt)"), ("dt_noise", "you scaled the noise by dt"),
                              ("no_drift", "the drift is missing"), ("drift_without_dt", "the drift needs dt"),
                              ("unscaled_noise", "not scaled by the diffusion"),
                              ("sqrt_of_b", "no square root of b"),
                              ("swapped", "drift and diffusion are swapped"), ("without_x", "starts from x_k"),
                              ("late", "at the start of the step"), ("own_noise", "use the z you are given"),
                              ("in_place", "in place"), ("torch_sqrt", "use math.sqrt(dt) or dt ** 0.5"),
                              ("tensor_method", "may return a number"),
                              ("cpu_diffusion", "your em_step mixes devices: a tensor made by `torch.as_tensor` is "
                                                "on cpu, x on meta: make it there, `torch.as_tensor(..., "
                                                "device=x.device)`"))}),
}


# ----------------------------------------------------------------------------------------------- stage 2


class NamedConv(nn.Module):
    """Conv written as a module with named layers and F.gelu: right, though not an nn.Sequential."""

    def __init__(self, in_channels, out_channels):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm = nn.BatchNorm2d(out_channels)

    def forward(self, x):
        return F.gelu(self.norm(self.conv(x)))


class NormFirstConv(nn.Module):
    """Right layers, right forward, but the BatchNorm is created before the convolution."""

    def __init__(self, in_channels, out_channels):
        super().__init__()
        self.norm = nn.BatchNorm2d(out_channels)
        self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=1)

    def forward(self, x):
        return F.gelu(self.norm(self.conv(x)))


def block(first, second):
    class Block(nn.Sequential):
        def __init__(self, in_channels, out_channels):
            super().__init__(first(in_channels, out_channels), second(out_channels, out_channels))
    return Block


class TwoConvs(nn.Module):
    """ConvBlock as a module with two named Convs."""

    def __init__(self, in_channels, out_channels):
        super().__init__()
        self.first, self.second = answer.Conv(in_channels, out_channels), answer.Conv(out_channels, out_channels)

    def forward(self, x):
        return self.second(self.first(x))


BIG_KERNEL_CONV = conv_layer(lambda i, o: nn.Conv2d(i, o, 5, padding=2))


class WeightedFlatten(nn.Module):
    """Flatten as a sum weighted by 1/49 with weights made on the CPU: right values, wrong on a GPU."""

    def forward(self, x):
        return F.gelu((x * torch.full(x.shape, 1 / 49)).sum((2, 3), keepdim=True))


class ZerosConvBlock(TwoConvs):
    """ConvBlock that adds its output to zeros made on the CPU: right values, wrong on a GPU."""

    def forward(self, x):
        out = super().forward(x)
        return torch.zeros(out.shape) + out


def loss_predicting_noise(model, x, sigma=0.5, generator=None):
    eps = torch.randn(x.shape, generator=generator)
    return F.mse_loss(model(x + sigma * eps), eps)


def loss_cpu_noise(model, x, sigma=0.5, generator=None):
    eps = torch.randn(x.shape, generator=generator)
    return F.mse_loss(model(x + sigma * eps), x)


def loss_on_clean(model, x, sigma=0.5, generator=None):
    return F.mse_loss(model(x), x)


def loss_unscaled(model, x, sigma=0.5, generator=None):
    return F.mse_loss(model(noisy(x, 1.0, generator)), x)


def loss_item(model, x, sigma=0.5, generator=None):
    return answer.denoising_loss(model, x, sigma, generator).item()


def loss_without_grad(model, x, sigma=0.5, generator=None):
    with torch.no_grad():
        return answer.denoising_loss(model, x, sigma, generator)


def loss_randn_like(model, x, sigma=0.5, generator=None):
    return F.mse_loss(model(x + sigma * torch.randn_like(x)), x)


def loss_squared_mean(model, x, sigma=0.5, generator=None):
    return (model(noisy(x, sigma, generator)) - x).square().mean()


def step(zero_grad=True, backward=True, returns="item"):
    def train_step(model, optimizer, x, generator=None):
        if zero_grad:
            optimizer.zero_grad()
        loss = answer.denoising_loss(model, x, generator=generator)
        if backward:
            loss.backward()
            optimizer.step()
        if returns == "after":
            return answer.denoising_loss(model, x, generator=torch.Generator().manual_seed(0)).item()
        return loss if returns == "tensor" else loss.item()
    return train_step


DENOISER = {
    "operations": Todo(denoiser.check_operations, {"Conv with named layers": operations(Conv=NamedConv)}, {
        "no padding": (operations(Conv=conv_layer(lambda i, o: nn.Conv2d(i, o, 3))), "padding=1 keeps H and W"),
        "stride 2": (operations(Conv=conv_layer(lambda i, o: nn.Conv2d(i, o, 3, stride=2, padding=1))),
                     "Conv keeps H and W: stride=1"),
        "no GELU": (operations(Conv=conv_layer(lambda i, o: nn.Conv2d(i, o, 3, padding=1), activation=None)),
                    "the GELU at the end is missing"),
        "ReLU": (operations(Conv=conv_layer(lambda i, o: nn.Conv2d(i, o, 3, padding=1), activation=nn.ReLU)),
                 "that is a ReLU: the course uses nn.GELU()"),
        "kernel 5": (operations(Conv=BIG_KERNEL_CONV), "the convolution's kernel or channels differ"),
        "norm created first": (operations(Conv=NormFirstConv), "created in a different order"),
        "no BatchNorm": (operations(Conv=conv_layer(lambda i, o: nn.Conv2d(i, o, 3, padding=1), norm=False)),
                         "has the layers [Conv2d.weight"),
        "DownConv stride 1": (operations(DownConv=conv_layer(lambda i, o: nn.Conv2d(i, o, 3, padding=1))),
                              "DownConv halves H and W: stride=2"),
        "DownConv no padding": (operations(DownConv=conv_layer(lambda i, o: nn.Conv2d(i, o, 3, stride=2))),
                                "padding=1 is missing"),
        "UpConv kernel 3": (operations(UpConv=conv_layer(lambda i, o: nn.ConvTranspose2d(i, o, 3, stride=2,
                                                                                         padding=1))),
                            "kernel_size=4, not 3"),
        "UpConv no padding": (operations(UpConv=conv_layer(lambda i, o: nn.ConvTranspose2d(i, o, 4, stride=2))),
                              "padding=1 is missing: "),
        "UpConv as Conv2d": (operations(UpConv=conv_layer(lambda i, o: nn.Conv2d(i, o, 3))),
                             "nn.ConvTranspose2d, not nn.Conv2d"),
        "nn.Flatten": (operations(Flatten=lambda: nn.Flatten()), "this Flatten is not nn.Flatten"),
        "Unflatten identity": (operations(Unflatten=lambda c: nn.Sequential(nn.Identity())),
                               "Unflatten goes from 1x1 to 7x7"),
        "weights made on the CPU": (operations(Flatten=WeightedFlatten),
                                    "your Flatten() mixes devices: a tensor made by `torch.full` is on cpu, the module "
                                    "on meta: make it there, `torch.full(..., device=x.device)`"),
    }),
    "blocks": Todo(denoiser.check_blocks, {"ConvBlock with named Convs": blocks(ConvBlock=TwoConvs)}, {
        "second Conv kernel 5": (blocks(ConvBlock=block(answer.Conv, BIG_KERNEL_CONV)),
                                 "the second Conv maps out_channels to out_channels"),
        "ReLU": (blocks(ConvBlock=block(answer.Conv, conv_layer(lambda i, o: nn.Conv2d(i, o, 3, padding=1),
                                                                activation=nn.ReLU))),
                 "compare your layers with the description"),
        "DownBlock without DownConv": (blocks(DownBlock=block(answer.Conv, answer.ConvBlock)),
                                       "a DownBlock starts with a DownConv"),
        "DownBlock's ConvBlock": (blocks(DownBlock=block(answer.DownConv, block(answer.Conv, BIG_KERNEL_CONV))),
                                  "after the DownConv(in, out) comes a ConvBlock(out, out)"),
        "UpBlock without UpConv": (blocks(UpBlock=block(answer.Conv, answer.ConvBlock)),
                                   "an UpBlock starts with an UpConv"),
        "UpBlock's ConvBlock": (blocks(UpBlock=block(answer.UpConv, block(answer.Conv, BIG_KERNEL_CONV))),
                                "after the UpConv(in, out) comes a ConvBlock(out, out)"),
        "zeros made on the CPU": (blocks(ConvBlock=ZerosConvBlock),
                                  "your ConvBlock(3, 5) mixes devices: a tensor made by `torch.zeros` is on cpu, the "
                                  "module on meta: make it there, `torch.zeros(..., device=x.device)`"),
    }),
    "unet": Todo(denoiser.check_unet, {"a student's UNet": unet()}, {
        "unused layer": (unet("unused"), "these layers are never used in forward: extra.weight, extra.bias"),
        "detached output": (unet("detached"), "these layers are never used in forward: conv_in.0.0.weight"),
        "skip first": (unet("skip order"), "same layers, different result: follow the diagram in forward"),
        "up1 channels": (unet("up1 channels"), "Hint: a block received the wrong number of channels"),
        "head kernel": (unet("head kernel"), "head = nn.Conv2d(D, in_channels, 3, padding=1)"),
        "zeros made on the CPU": (unet("cpu zeros"), "your UnconditionalUNet(in_channels=1, num_hiddens=4) mixes "
                                                     "devices: a tensor made by `torch.zeros` is on cpu"),
    }, {"num_hiddens": 4, "batch_size": 2}),
    "loss_and_step": Todo(denoiser.check_training_step, {
        "square().mean()": (loss_squared_mean, answer.train_step)}, {
        "predicts the noise": ((loss_predicting_noise, answer.train_step),
                               "the denoiser predicts the clean image x, not the noise"),
        "clean input": ((loss_on_clean, answer.train_step), "feed the noisy z = x + sigma * eps to the model"),
        "sum": ((loss_summed, answer.train_step), "use the mean of the squared errors (F.mse_loss), not the sum"),
        "unscaled noise": ((loss_unscaled, answer.train_step), "the noise is not scaled: z = x + sigma * eps"),
        ".item()": ((loss_item, answer.train_step), "should be a torch.Tensor, got float"),
        "noise drawn on the CPU": ((loss_cpu_noise, answer.train_step),
                                   "your denoising_loss mixes devices: `torch.randn` drew on cpu with the generator"),
        "no gradient": ((loss_without_grad, answer.train_step), "the loss does not depend on the model's weights"),
        "randn_like": ((loss_randn_like, answer.train_step), "different values for the same generator seed"),
        "no zero_grad": ((answer.denoising_loss, step(zero_grad=False)),
                         "call optimizer.zero_grad() before loss.backward()"),
        "no backward": ((answer.denoising_loss, step(backward=False)), "train_step did not change the weights"),
        "returns the tensor": ((answer.denoising_loss, step(returns="tensor")),
                               "should return the loss as a Python float (loss.item()), got Tensor"),
        "loss after the step": ((answer.denoising_loss, step(returns="after")),
                                "expected the batch's loss before the step"),
    }),
    "train_denoiser": Todo(denoiser.check_train_denoiser, {
        "a student's loop": student_loop(),
        "global shuffle, partial batches, validation noise from the training generator": student_loop(
            global_shuffle=True, train_drop_last=False, val_batch=4, val_noise="training"),
        "its own permutation, one validation batch, global noise": own_batches_loop}, {
        mistake: (student_loop(**{flag: value}), hint) for mistake, flag, value, hint in (
            ("no zero_grad", "zero_grad", False, "call optimizer.zero_grad() before every loss.backward()"),
            ("no shuffle", "no_shuffle", True, "the training batches come in the same order every epoch"),
            ("new optimizer every epoch", "new_optimizer", True, "take every step with it, in every epoch"),
            ("no eval", "eval_mode", False, "the validation ran in train mode: call model.eval()"),
            ("gradients in validation", "no_grad", False, "the validation tracked gradients"),
            ("train once", "train_mode", False, "in epoch 2 the model trained in eval mode: call model.train()"),
            ("validation drop_last", "val_drop_last", True, "the last, smaller batch is missing"),
            ("unweighted validation", "average", "unweighted", "weight each batch's loss by its number of digits"),
            ("last validation batch", "average", "last_batch", "that is the last batch's loss"),
            ("summed validation", "average", "summed", "divide the weighted sum by the number of held-out digits"),
            ("gradient ascent", "ascend", True, "a correct loop lowers it clearly"),
            ("per-epoch losses", "per_epoch", True, "train_losses has 2 entries, expected 6"),
            ("tensors", "returns", "tensors", "should be a list of Python floats, got list of Tensor"),
            ("no callback", "callback", False, "on_epoch_end was called 0 times, expected once per epoch"),
            ("validation generator made on the CPU", "val_noise", "cpu",
             "your train_denoiser mixes devices: `torch.randn` drew on meta with a generator made on the CPU: make "
             "the generator on the device, `torch.Generator(val_data.device)`"))}),
}


# ----------------------------------------------------------------------------------------------- stage 3


class FCSequential(nn.Sequential):
    """FCBlock as a plain nn.Sequential."""

    def __init__(self, in_features, out_features):
        super().__init__(nn.Linear(in_features, out_features), nn.GELU(), nn.Linear(out_features, out_features))


def ddpm_loss_one_t(model, x0, schedule, generator=None):
    """One t for the whole batch (one noise level), expanded to every image."""
    T = schedule.num_steps
    t = torch.randint(0, T, (1,), generator=generator).expand(x0.shape[0])
    eps = torch.randn(x0.shape, generator=generator)
    return F.mse_loss(model(given_q_sample(x0, t, eps, schedule), t / T), eps)


def ddpm_loss_given(model, x0, schedule, generator=None):
    """With course_lib's q_sample and an explicit mean of squares."""
    T = schedule.num_steps
    t = torch.randint(0, T, (len(x0),), generator=generator, device=x0.device)
    eps = torch.randn(x0.shape, generator=generator, device=x0.device)
    return (model(given_q_sample(x0, t, eps, schedule), t.float() / T) - eps).pow(2).mean()


CPU_FULL = ("mixes devices: a tensor made by `torch.full` is on cpu, the model on meta: make it there, "
            "`torch.full(..., device=device)`")  # a sampler's time tensor made without device=


def ddpm_sample_global_start(model, schedule, num_samples, generator=None, stochastic=True):
    torch.randn(1, generator=generator)  # x_T drawn from anything but the generator's first numbers
    return ddpm_sample(model, schedule, num_samples, generator, stochastic)


def ddim_x0_hat(clip=False, evaluate=True, posterior_mean=False):
    """ddim_sample through x0_hat, with the given ddim_timesteps and alpha_bar = 1 appended; ``clip`` clips x0_hat
    to [-1, 1], ``evaluate=False`` leaves the model in training mode, ``posterior_mean`` takes DDPM's mean step
    between the kept timesteps instead of DDIM's update."""
    from course_lib.sampling import ddim_timesteps

    @torch.no_grad()
    def sample(model, schedule, num_samples, num_steps, generator=None):
        if evaluate:
            model.eval()
        T, device = schedule.num_steps, next(model.parameters()).device
        timesteps = ddim_timesteps(T, num_steps).tolist()
        alpha_bars = torch.cat([schedule.alpha_bars[timesteps], torch.ones(1, device=device)])
        x = torch.randn((num_samples, 1, 28, 28), generator=generator, device=device)
        frames = [x.cpu()]
        for i, t in enumerate(timesteps):
            eps = model(x, torch.full((num_samples,), t / T, device=device))
            x0_hat = (x - (1 - alpha_bars[i]).sqrt() * eps) / alpha_bars[i].sqrt()
            x0_hat = x0_hat.clamp(-1, 1) if clip else x0_hat
            ab, ab_next = alpha_bars[i], alpha_bars[i + 1]
            if posterior_mean:
                beta = 1 - ab / ab_next
                x = ab_next.sqrt() * beta / (1 - ab) * x0_hat + (1 - beta).sqrt() * (1 - ab_next) / (1 - ab) * x
            else:
                x = ab_next.sqrt() * x0_hat + (1 - ab_next).sqrt() * eps
            frames.append(x.cpu())
        return x, torch.stack(frames)

    return sample


DDPM = {
    "fc_block": Todo(ddpm.check_fc_block, {"named layers": StudentFC, "nn.Sequential": FCSequential}, {
        "ReLU": (lambda i, o: StudentFC(i, o, nn.ReLU), "use GELU between the two Linear layers, not ReLU"),
        "one Linear": (lambda i, o: nn.Linear(i, o), "parameters, expected"),
    }),
    "time_conditional_unet": Todo(ddpm.check_time_conditional_unet, {"a student's UNet": time_unet()}, {
        "no time": (time_unet("no time"), "your output does not change with t"),
        "t2 after the second UpBlock": (time_unet("t2 late"), "add t2 to the output of the FIRST UpBlock"),
    }),
    "ddpm_loss": Todo(ddpm.check_ddpm_loss, {"a student's loss": ddpm_loss, "q_sample and pow(2)": ddpm_loss_given}, {
        "eps first": (lambda *a: ddpm_loss(*a, eps_first=True), "draw t first"),
        "integer time": (lambda *a: ddpm_loss(*a, scale_time=False), "pass the time to the model as t / T"),
        "one t for the batch": (ddpm_loss_one_t, "your model got the same t (the same noise level) for all 8"),
        ".item()": (lambda *a: ddpm_loss(*a).item(), "do not call .item()"),
        "detached": (lambda *a: ddpm_loss(*a).detach(), "your loss has no gradient"),
        "no model": (lambda m, x0, s, g: F.mse_loss(x0, x0 * 0), "never calls the model"),
        "t drawn on the CPU": (lambda *a: ddpm_loss(*a, cpu_t=True),
                               "`torch.randint` drew on cpu with the generator you were given, which lives on the "
                               "model's device (meta): pass `device=x0.device`"),
    }),
    "ddpm_step": Todo(ddpm.check_ddpm_step, {"a student's step": ddpm_step}, {
        "noise at t = 0": (lambda *a: ddpm_step(*a, noise_at_zero=True), "did you add noise at the last step t = 0"),
        "sigma = beta": (lambda *a: ddpm_step(*a, sigma_is_beta=True), "sigma_t = sqrt(beta_t)"),
        "alpha_bar for alpha_bar_prev": (lambda *a: ddpm_step(*a, typo=True), "check the coefficient of x_t"),
        "noise without z": (lambda x_t, eps, t, s, z=None: ddpm_step(x_t, eps, t, s, torch.ones_like(x_t)
                                                                     if z is None else z),
                            "with z=None return the mean only"),
    }),
    "ddpm_sample": Todo(ddpm.check_ddpm_sample, {"a student's sampler": ddpm_sample}, {
        "train mode": (lambda *a, **k: ddpm_sample(*a, **k, evaluate=False), "call model.eval() before sampling"),
        "noise at t = 0": (lambda *a, **k: ddpm_sample(*a, **k, noise_at_zero=True),
                           "did you add noise at the last step t = 0?"),
        "samples only": (lambda *a, **k: ddpm_sample(*a, **k)[0], "pair (samples, trajectory)"),
        "ignores stochastic": (lambda m, s, n, g, stochastic: ddpm_sample(m, s, n, g),
                               "with stochastic=False pass z=None"),
        "x_T not the generator's first draw": (ddpm_sample_global_start, "draw x_T = torch.randn((N, 1, 28, 28), "
                                                                         "generator=generator) before anything"),
        "time on the CPU": (lambda *a, **k: ddpm_sample(*a, **k, cpu_time=True), CPU_FULL),
    }),
    "ddim_sample": Todo(ddpm.check_ddim_sample, {"Ho-style coefficients, own timesteps": ddim_sample,
                                                 "through x0_hat with ddim_timesteps": ddim_x0_hat()}, {
        "alpha_bars[0] after the last step": (lambda *a: ddim_sample(*a, last_alpha_bar=0.9999),
                                              "after the last timestep alpha_bar = 1"),
        "no square root on the noise weight": (lambda *a: ddim_sample(*a, plain_noise=True), "forget the square root"),
        "fresh noise in every step": (lambda *a: ddim_sample(*a, fresh_noise=True), "with no fresh noise"),
        "x0_hat clipped": (ddim_x0_hat(clip=True), "do not clip x0_hat"),
        "DDPM's mean step between the kept timesteps": (ddim_x0_hat(posterior_mean=True),
                                                         "DDIM is not DDPM's posterior mean"),
        "one step too many": (lambda m, s, n, k, g: ddim_sample(m, s, n, k + 1, g), "called the model 7 times"),
        "train mode": (ddim_x0_hat(evaluate=False), "call model.eval() before sampling"),
        "samples only": (lambda *a: ddim_sample(*a)[0], "pair (samples, trajectory)"),
        "time on the CPU": (lambda *a: ddim_sample(*a, cpu_time=True), CPU_FULL),
    }),
}


# ----------------------------------------------------------------------------------------------- stage 4


def drop_labels_where(c, p_uncond=0.1, generator=None):
    """drop_labels with torch.where."""
    u = torch.rand(len(c), generator=generator, device=c.device)
    return torch.where((u < p_uncond)[:, None], torch.zeros_like(c), c)


def drop_labels_in_place(c, p_uncond=0.1, generator=None):
    c[torch.rand(c.shape[0], generator=generator) < p_uncond] = 0
    return c


def guided_eps_two_passes(model, x_t, t, c, guidance):
    eps_u = model(x_t, t, torch.zeros_like(c))
    return eps_u + guidance * (model(x_t, t, c) - eps_u)


def guided_eps_lerp(model, x_t, t, c, guidance):
    """The guided estimate as torch.lerp of the unconditional and conditional halves."""
    eps = model(torch.cat([x_t, x_t]), torch.cat([t, t]), torch.cat([c, c * 0]))
    return torch.lerp(eps[len(x_t):], eps[:len(x_t)], guidance)


def cfg_loss_one_hot(width):
    """cfg_loss with the classes one-hot as ``F.one_hot(labels, width)`` (``width`` None: without num_classes)."""
    def student(model, x0, labels, schedule, p_uncond=0.1, generator=None):
        T = schedule.num_steps
        one_hot = F.one_hot(labels) if width is None else F.one_hot(labels, width)
        c = drop_labels(one_hot.float(), p_uncond, generator)
        t = torch.randint(0, T, (x0.shape[0],), generator=generator)
        eps = torch.randn(x0.shape, generator=generator)
        return F.mse_loss(model(given_q_sample(x0, t, eps, schedule), t / T, c), eps)
    return student


def cfg_loss_one_t(model, x0, labels, schedule, p_uncond=0.1, generator=None):
    """One t for the whole batch, drawn in its place after the dropout."""
    T = schedule.num_steps
    c = drop_labels(F.one_hot(labels, 10).float(), p_uncond, generator)
    t = torch.randint(0, T, (1,), generator=generator).repeat(len(x0))
    eps = torch.randn(x0.shape, generator=generator)
    return F.mse_loss(model(given_q_sample(x0, t, eps, schedule), t / T, c), eps)


def cfg_sample_one_hot(width):
    """cfg_sample with ``F.one_hot(labels, width)`` (``width`` None: without num_classes), which the model cannot
    take."""
    def student(model, schedule, labels, guidance=5.0, generator=None):
        one_hot = F.one_hot(labels) if width is None else F.one_hot(labels, width)
        return cfg_sample(model, schedule, labels, guidance, generator, classes=one_hot.float())
    return student


CFG = {
    "class_conditional_unet": Todo(cfg.check_class_conditional_unet, {"a student's UNet": class_unet()}, {
        "shift then scale": (class_unet("shift then scale"), "scale first, then shift"),
        "no layers": (lambda in_channels, num_classes, num_hiddens: nn.Linear(1, 1), "parameters, expected"),
    }),
    "drop_labels": Todo(cfg.check_drop_labels, {"a student's": drop_labels, "torch.where": drop_labels_where}, {
        "kept the dropped rows": (lambda c, p, g: c * (torch.rand(c.shape[0], generator=g) < p)[:, None],
                                  "you kept the rows that should be dropped"),
        "one number per entry": (lambda c, p, g: c * (torch.rand(c.shape, generator=g) >= p), "one number per row"),
        "in place": (drop_labels_in_place, "changed c in place"),
        "a list": (lambda c, p, g: c.tolist(), "should be a torch.Tensor, got list"),
        "u drawn on the CPU": (lambda c, p, g: c * (torch.rand(len(c), generator=g) >= p)[:, None],
                               "`torch.rand` drew on cpu with the generator you were given, which lives on c's device "
                               "(meta): pass `device=c.device`"),
    }),
    "cfg_loss": Todo(cfg.check_cfg_loss, {"a student's loss": cfg_loss}, {
        "no dropout": (lambda *a, **k: cfg_loss(*a, **k, mistake="no_dropout"), "no row of c was dropped"),
        "t before the dropout": (lambda *a, **k: cfg_loss(*a, **k, order=("t", "drop", "eps")),
                                 "draw in this order"),
        "eps before t": (lambda *a, **k: cfg_loss(*a, **k, order=("drop", "eps", "t")), "draw in this order"),
        "fixed p_uncond": (lambda *a, **k: cfg_loss(*a, **k, mistake="fixed_p"), "use the p_uncond argument"),
        "integer time": (lambda *a, **k: cfg_loss(*a, **k, mistake="integer_time"), "as t / T"),
        "target x0": (lambda *a, **k: cfg_loss(*a, **k, mistake="target_x0"), "the target is eps"),
        "sum": (lambda *a, **k: cfg_loss(*a, **k, mistake="sum"), "not the sum"),
        ".item()": (lambda *a, **k: cfg_loss(*a, **k).item(), "do not call .item()"),
        "detached": (lambda *a, **k: cfg_loss(*a, **k).detach(), "no gradient"),
        "no model": (lambda model, x0, labels, schedule, p_uncond, generator: torch.zeros((), requires_grad=True),
                     "never calls the model"),
        "no classes": (lambda model, x0, *a, **k: model(x0, torch.zeros(len(x0))).pow(2).mean(), "got no classes"),
        "one_hot without num_classes": (cfg_loss_one_hot(None), "are 9 wide, expected 10: F.one_hot(labels, 10)"),
        "one_hot 11 wide": (cfg_loss_one_hot(11), "are 11 wide, expected 10: F.one_hot(labels, 10)"),
        "one t for the batch": (cfg_loss_one_t, "your model got the same t (the same noise level) for all 16"),
        "t drawn on the CPU": (lambda *a, **k: cfg_loss(*a, **k, mistake="cpu_t"),
                               "`torch.randint` drew on cpu with the generator"),
        "one-hot rows of torch.eye": (lambda *a, **k: cfg_loss(*a, **k, mistake="eye"),
                                      "a tensor made by `torch.eye` is on cpu, the model on meta: make it there, "
                                      "`torch.eye(..., device=x0.device)`"),
    }),
    "guided_eps": Todo(cfg.check_guided_eps, {"a student's": guided_eps, "torch.lerp": guided_eps_lerp}, {
        "swapped": (lambda *a: guided_eps(*a, swap=True), "you swapped eps_cond and eps_uncond"),
        "two passes": (guided_eps_two_passes, "ONE forward pass"),
        "one image": (lambda *a: guided_eps(*a)[0], "guided eps has shape"),
    }),
    "cfg_sample": Todo(cfg.check_cfg_sample, {"a student's sampler": cfg_sample}, {
        **{name: (lambda *a, mistake=mistake, **k: cfg_sample(*a, **k, **mistake), hint)
           for name, mistake, hint in (("train mode", {"evaluate": False}, "model.eval()"),
                                       ("gradients", {"no_grad": False}, "torch.no_grad()"),
                                       ("noise at t = 0", {"last_noise": True}, "noise at the last step"),
                                       ("no noise", {"stochastic": False}, "no noise was added"),
                                       ("guidance 1", {"scale": 1.0}, "guidance 1, the plain conditional model"),
                                       ("guidance 5", {"scale": 5.0}, "your sampler follows guidance 5"),
                                       ("guidance 0", {"scale": 0.0}, "guidance 0, the unconditional model"),
                                       ("two passes per step", {"batched": False}, "twice per step"))},
        "one_hot without num_classes": (cfg_sample_one_hot(None), "F.one_hot(labels, 10).float() (without "
                                                                  "num_classes"),
        "one_hot 11 wide": (cfg_sample_one_hot(11), "are 11 wide, expected 10"),
        "time on the CPU": (lambda *a, **k: cfg_sample(*a, **k, cpu_time=True), CPU_FULL),
        "F.one_hot(labels) left on the CPU": (lambda *a, **k: cfg_sample(*a, **k, cpu_classes=True),
                                              "your cfg_sample mixes devices: labels are on cpu, the model on meta: "
                                              "move them with `.to(device)`"),
    }),
    "sample_digits": Todo(cfg.check_sample_digits, {
        "digit by digit": (sample_digits_by_digit, cfg_answers.cfg_sample),
        "labels from a comprehension, on the model's device": (sample_digits_listed, cfg_answers.cfg_sample)}, {
        "fixed guidance": ((sample_digits_mistaken("guidance"), cfg_answers.cfg_sample),
                           "your samples follow guidance 5, not the 3 asked for"),
        "one call per digit": ((sample_digits_mistaken("per_call"), cfg_answers.cfg_sample),
                               "draw all the samples in one call of cfg_sample"),
        "one of each digit": ((sample_digits_mistaken("once"), cfg_answers.cfg_sample), "2 times (6 labels), got these counts"),
        "labels sorted after sampling": ((sample_digits_mistaken("sorted"), cfg_answers.cfg_sample),
                                         "samples[i] should be the sample of labels[i]"),
        "own generator": ((sample_digits_mistaken("own_generator"), cfg_answers.cfg_sample),
                          "from one call of cfg_sample with those labels, `guidance` and `generator`"),
        "float labels": ((sample_digits_mistaken("float"), cfg_answers.cfg_sample), "labels should be an int64 tensor"),
        "samples only": ((sample_digits_mistaken("samples_only"), cfg_answers.cfg_sample),
                         "should return two tensors, (samples, labels)"),
        "a mask on the CPU": ((sample_digits_mistaken("cpu_mask"), cfg_answers.cfg_sample),
                                                       "your sample_digits mixes devices"),
    }, {"digits": (4, 1, 9), "per_digit": 2}),
}


# ----------------------------------------------------------------------------------------------- stage 5


def flow_loss_one_t(model, x0, generator=None):
    """One t for the whole batch."""
    t = torch.rand(1, generator=generator).expand(len(x0))
    eps = torch.randn(x0.shape, generator=generator)
    return F.mse_loss(model((1 - t[:, None, None, None]) * x0 + t[:, None, None, None] * eps, t), eps - x0)


def flow_loss_lerp(model, x0, generator=None):
    """x_t as torch.lerp from x0 to eps."""
    t = torch.rand(len(x0), generator=generator, device=x0.device)
    eps = torch.randn(x0.shape, generator=generator, device=x0.device)
    return (model(torch.lerp(x0, eps, t.view(-1, 1, 1, 1)), t) - (eps - x0)).square().mean()


def flow_sample_global_noise(model, num_samples, num_steps, generator=None):
    """Starts from torch.randn without the generator (the global random state)."""
    return flow_sample(model, num_samples, num_steps, generator, start=torch.randn((num_samples, 1, 28, 28)))


def flow_sample_seeded(model, num_samples, num_steps, generator=None):
    """Seeds the global random state itself, with the visible check's seed, and starts from it."""
    torch.manual_seed(0)
    return flow_sample(model, num_samples, num_steps, generator, start=torch.randn((num_samples, 1, 28, 28)))


def flow_sample_time_grid(model, num_samples, num_steps, generator=None):
    """The Euler sampler over torch.linspace's time grid."""
    model.eval()
    device = next(model.parameters()).device
    times = torch.linspace(1, 0, num_steps + 1, device=device)
    with torch.no_grad():
        x = torch.randn((num_samples, 1, 28, 28), generator=generator, device=device)
        for t, t_next in zip(times[:-1], times[1:]):
            x = x + (t_next - t) * model(x, t.repeat(num_samples))
    return x


FLOW = {
    "flow_loss": Todo(flow.check_flow_loss, {"a student's loss": flow_loss, "torch.lerp": flow_loss_lerp}, {
        "x0 - eps": (lambda *a: flow_loss(*a, sign=-1), "eps - x0, not x0 - eps"),
        "one t for the batch": (flow_loss_one_t, "your model got the same t (the same noise level) for all 8"),
        ".item()": (lambda *a: flow_loss(*a).item(), "do not call .item()"),
        "detached": (lambda *a: flow_loss(*a).detach(), "no gradient"),
        "no model": (lambda m, x0, g: (torch.randn(x0.shape, generator=g) - x0).pow(2).mean(),
                     "never calls the model"),
        "t drawn on the CPU": (lambda *a: flow_loss(*a, cpu_t=True), "`torch.rand` drew on cpu with the generator"),
    }),
    "flow_sample": Todo(flow.check_flow_sample, {"a student's sampler": flow_sample,
                                                "linspace time grid": flow_sample_time_grid}, {
        "towards the noise": (lambda *a: flow_sample(*a, sign=+1), "x <- x - dt * v"),
        "time one step late": (lambda *a: flow_sample(*a, shift=1), "t_k = 1 - k / num_steps"),
        "start noise without the generator": (flow_sample_global_noise, "draws from the global random state"),
        "seeds the global state": (flow_sample_seeded, "ignores the generator you are given"),
        "a list": (lambda *a: (flow_sample(*a), []), "samples should be a torch.Tensor"),
        "time on the CPU": (lambda *a: flow_sample(*a, cpu_time=True), CPU_FULL),
    }),
}


# ----------------------------------------------------------------------------------------------- stage 6


def embedding(order="sin_cos", exponent=lambda i, half, dim: -i / half, on_cpu=False):
    def student(t, dim):
        half = dim // 2
        w = 10000.0 ** torch.tensor([exponent(i, half, dim) for i in range(half)], device=None if on_cpu else t.device)
        angles = t[:, None] * w
        if order == "interleaved":
            return torch.stack([angles.sin(), angles.cos()], 2).flatten(1)
        return torch.cat([angles.sin(), angles.cos()] if order == "sin_cos" else [angles.cos(), angles.sin()], 1)
    return student


def sinusoidal_embedding_arange(t, dim, device="t"):
    """The embedding with torch.arange for the frequencies, made on t's device (``device="t"``) or on ``device``."""
    half = dim // 2
    i = torch.arange(half, device=t.device if device == "t" else device)
    angles = t[:, None] * torch.exp(-math.log(10000.0) * i / half)
    return torch.cat([angles.sin(), angles.cos()], dim=1)


class Attention(SelfAttention):
    """SelfAttention written by a student; ``mistake`` switches on one error."""

    def __init__(self, channels, mistake=None):
        super().__init__(channels)
        self.mistake = mistake

    def forward(self, x):
        n, c, h, w = x.shape
        normed = x if self.mistake == "no_norm" else self.norm(x)
        tokens = normed.reshape(n, h * w, c) if self.mistake == "view" else normed.flatten(2).transpose(1, 2)
        if self.mistake == "position":
            tokens = tokens + torch.linspace(0, 1, h * w)[None, :, None]
        q, k, v = self.query(tokens), self.key(tokens), self.value(tokens)
        scale = 1.0 if self.mistake == "no_scale" else math.sqrt(c)
        weights = torch.softmax(q @ k.transpose(1, 2) / scale, dim=1 if self.mistake == "softmax_dim" else -1)
        out = self.out(weights @ v)
        out = out.reshape(n, c, h, w) if self.mistake == "view" else out.transpose(1, 2).reshape(n, c, h, w)
        if self.mistake == "no_residual":
            return out
        if self.mistake == "in_place":
            return x.add_(out)
        return x + out


def attention(mistake=None):
    return lambda channels: Attention(channels, mistake)


IMPROVED = {
    "sinusoidal_embedding": Todo(improved.check_sinusoidal_embedding, {
        "powers of 10000": embedding(), "exp of torch.arange": sinusoidal_embedding_arange}, {
        "cosines first": (embedding(order="cos_sin"), "cosines come second"),
        "interleaved": (embedding(order="interleaved"), "interleaved"),
        "growing frequencies": (embedding(exponent=lambda i, half, dim: i / half), "frequencies grow"),
        "h - 1": (embedding(exponent=lambda i, half, dim: -i / (half - 1)), "not h - 1"),
        "divided by dim": (embedding(exponent=lambda i, half, dim: -i / dim), "not by dim"),
        "sines only": (lambda t, dim: torch.sin(t[:, None] * torch.ones(dim)), "sin^2 + cos^2 = 1"),
        "in place": (lambda t, dim: t.mul_(2)[:, None].expand(-1, dim), "in place"),
        "one column short": (lambda t, dim: sinusoidal_embedding(t, dim)[:, :-1], "shape"),
        "frequencies on the CPU": (embedding(on_cpu=True), "a tensor made by `torch.tensor` is on cpu, t on meta: "
                                                           "make it there, `torch.tensor(..., device=t.device)`"),
        "torch.arange on the CPU": (lambda t, dim: sinusoidal_embedding_arange(t, dim, device=None),
                                    "`torch.arange(..., device=t.device)`"),
    }, {"dim": 12, "seed": 4}),
    "self_attention": Todo(improved.check_self_attention, {"a student's": attention()}, {
        mistake: (attention(mistake), hint)
        for mistake, hint in (("no_scale", "by sqrt(C) before the softmax"), ("softmax_dim", "softmax over the keys"),
                              ("no_residual", "add the input back"), ("no_norm", "apply self.norm"),
                              ("view", "mixes channels and positions"), ("position", "shuffling the H*W positions"),
                              ("in_place", "in place"))}, {"channels": 8, "height": 5, "width": 6, "seed": 2}),
}


# ----------------------------------------------------------------------------------------------- stage 7


def edit(model, schedule, x0, steps, generator=None, labels=None, guidance=0.0, mistake=None):
    """SDEdit (``labels`` None) or the guided edit, as a student writes them; ``mistake`` switches on one error."""
    model.eval()
    device = next(model.parameters()).device
    T, n = schedule.num_steps, x0.shape[0]
    if steps == 0 and mistake != "noises at steps = 0":
        return x0
    start = {"all T steps": T - 1, "one step too many": steps}.get(mistake, steps - 1)  # the first reverse step
    noised_to = steps if mistake == "late" else start
    eps = torch.randn(x0.shape, generator=generator, device=device)
    alpha_bar = schedule.alpha_bars[noised_to]  # at steps = 0 without the early return: the last, T - 1
    x = {"clean": x0, "pure noise": eps}.get(mistake, alpha_bar.sqrt() * x0 + (1 - alpha_bar).sqrt() * eps)
    zeros = torch.zeros(n, 10) if mistake == "zeros on the CPU" else torch.zeros(n, 10, device=device)
    if mistake == "a class":
        zeros = F.one_hot(torch.zeros(n, dtype=torch.long, device=device), 10).float()
    c = zeros if labels is None else F.one_hot(labels if mistake == "labels on the CPU" else labels.to(device),
                                                10).float()
    with torch.no_grad():
        for t in reversed(range(start + 1)):
            time = torch.full((n,), t / T, device=device)
            if labels is None:
                eps = model(x, time) if mistake == "no class" else model(x, time, zeros)
            elif mistake == "two passes":
                eps_u, eps_c = model(x, time, torch.zeros_like(c)), model(x, time, c)
                eps = eps_u + guidance * (eps_c - eps_u)
            else:
                eps = given_guided_eps(model, x, time, c, {"guidance 1": 1.0}.get(mistake, guidance))
            last = t > 0 or mistake == "noise at t = 0"
            z = torch.randn(x.shape, generator=generator, device=device) if last and mistake != "no noise" else None
            x = given_ddpm_step(x, eps, t, schedule, z) + (schedule.betas[0].sqrt() * z if t == 0 and z is not None
                                                           else 0)
    return x


def sdedit_where(model, schedule, x0, steps, generator=None):
    """SDEdit with the time as integer steps divided by T and the "no class" rows as x0.new_zeros."""
    model.eval()
    if steps == 0:
        return x0.clone()
    n, T = len(x0), schedule.num_steps
    t = torch.full((n,), steps - 1, dtype=torch.long, device=x0.device)
    x = given_q_sample(x0, t, torch.randn(x0.shape, generator=generator, device=x0.device), schedule)
    with torch.no_grad():
        for step in range(steps - 1, -1, -1):
            eps = model(x, (t * 0 + step) / T, x0.new_zeros(n, 10))
            z = torch.randn(x.shape, generator=generator, device=x0.device) if step else None
            x = given_ddpm_step(x, eps, step, schedule, z)
    return x


def inpaint(model, schedule, x0, mask, generator=None, mistake=None, mix="where"):
    """Inpainting as a student writes it, mixing in the known pixels with torch.where (``mix="where"``) or by
    arithmetic; ``mistake`` switches on one error (each with arithmetic)."""
    model.eval()
    device = next(model.parameters()).device
    T, n = schedule.num_steps, x0.shape[0]
    keep = 1 - mask if mistake == "inverted mask" else mask
    x = torch.randn(x0.shape, generator=generator, device=device)
    with torch.no_grad():
        for t in reversed(range(T)):
            z = torch.randn(x.shape, generator=generator, device=device) if mistake == "z first" and t > 0 else None
            if mistake != "no replacement":
                noise = torch.randn(x0.shape, generator=generator, device=None if mistake == "noise on the CPU"
                                    else device)
                known = x0 if mistake == "clean" else given_q_sample(x0, torch.full((n,), t, device=device), noise,
                                                                      schedule)
                x = torch.where(keep.bool(), known, x) if mix == "where" else keep * known + (1 - keep) * x
            if mistake == "train mode":
                model.train()
            eps = model(x, torch.full((n,), t / T, device=device), torch.zeros(n, 10, device=device))
            if mistake != "z first":
                z = torch.randn(x.shape, generator=generator, device=device) if t > 0 else None
            x = given_ddpm_step(x, eps, t, schedule, z)
    return x if mistake == "no paste" else keep * x0 + (1 - keep) * x


def inpaint_arithmetic(model, schedule, x0, mask, generator=None):
    """Inpainting with the known pixels mixed in by arithmetic."""
    return inpaint(model, schedule, x0, mask, generator, mix="arithmetic")


def guided_edit(model, schedule, x0, labels, steps, guidance=5.0, generator=None, mistake=None):
    return edit(model, schedule, x0, steps, generator, labels, guidance, mistake)


def guided_edit_inline(model, schedule, x0, labels, steps, guidance=5.0, generator=None):
    """The guided edit with the batched guided estimate written out, Ho & Salimans' form (1 + w) eps_c - w eps_u."""
    w = guidance - 1

    def guided(x, t, c):
        eps_c, eps_u = model(torch.cat([x, x]), torch.cat([t, t]), torch.cat([c, c * 0])).chunk(2)
        return (1 + w) * eps_c - w * eps_u

    model.eval()
    device = next(model.parameters()).device
    T, n = schedule.num_steps, len(x0)
    if steps == 0:
        return x0
    x = given_q_sample(x0, torch.full((n,), steps - 1, device=device),
                       torch.randn(x0.shape, generator=generator, device=device), schedule)
    c = F.one_hot(labels.to(device), 10).float()
    with torch.no_grad():
        for t in range(steps - 1, -1, -1):
            eps = guided(x, torch.full((n,), t / T, device=device), c)
            x = given_ddpm_step(x, eps, t, schedule, torch.randn(x.shape, generator=generator, device=device)
                                if t else None)
    return x


EDIT_MISTAKES = {
    "x0 not noised": ("clean", "noise x0 before the first step"),
    "pure noise": ("pure noise", "not from pure noise"),
    "noised to step steps": ("late", "you noised x0 to step `steps`"),
    "all T steps": ("all T steps", "ran all T = 10 reverse steps"),
    "one step too many": ("one step too many", "one too many"),
    "noise at t = 0": ("noise at t = 0", "noise at the last step"),
    "no noise": ("no noise", "no noise was added"),
}

EDITING = {
    "sdedit": Todo(editing.check_sdedit, {"a student's": edit, "new_zeros and integer steps": sdedit_where}, {
        **{name: (lambda *a, mistake=mistake, **k: edit(*a, **k, mistake=mistake), hint)
           for name, (mistake, hint) in EDIT_MISTAKES.items()},
        "noises at steps = 0": (lambda *a, **k: edit(*a, **k, mistake="noises at steps = 0"),
                                "with steps = 0 there is nothing to undo"),
        "no class": (lambda *a, **k: edit(*a, **k, mistake="no class"), "called the model without a class"),
        "the class 0": (lambda *a, **k: edit(*a, **k, mistake="a class"), "use no class"),
        "zeros on the CPU": (lambda *a, **k: edit(*a, **k, mistake="zeros on the CPU"),
                             "a tensor made by `torch.zeros` is on cpu, the model on meta: make it there, "
                             "`torch.zeros(..., device=device)`"),
    }),
    "inpaint": Todo(editing.check_inpaint, {"torch.where": inpaint, "arithmetic": inpaint_arithmetic}, {
        name: (lambda *a, mistake=mistake, **k: inpaint(*a, **k, mistake=mistake, mix="arithmetic"), hint)
        for name, mistake, hint in (
            ("no replacement", "no replacement", "replace the known pixels at every step"),
            ("clean known pixels", "clean", "not by x0 itself"),
            ("inverted mask", "inverted mask", "the mask is 1 where the pixel is known"),
            ("z first", "z first", "draw in this order at each step"),
            ("no paste", "no paste", "put them back"),
            ("train mode", "train mode", "model.eval()"),
            ("noise on the CPU", "noise on the CPU", "`torch.randn` drew on cpu with the generator you were given"))
    }),
    "guided_edit": Todo(editing.check_guided_edit, {"a student's": guided_edit, "(1 + w) eps_c - w eps_u":
                                                    guided_edit_inline}, {
        **{name: (lambda *a, mistake=mistake, **k: guided_edit(*a, **k, mistake=mistake), hint)
           for name, (mistake, hint) in EDIT_MISTAKES.items()},
        "guidance 1": (lambda *a, **k: guided_edit(*a, **k, mistake="guidance 1"), "guidance 1, the plain conditional"),
        "two passes": (lambda *a, **k: guided_edit(*a, **k, mistake="two passes"), "one batch of 2N"),
        "unconditional": (lambda m, s, x0, labels, steps, guidance=5.0, generator=None: edit(m, s, x0, steps,
                                                                                             generator),
                          "one batch of 2N"),
        "labels on the CPU": (lambda *a, **k: guided_edit(*a, **k, mistake="labels on the CPU"),
                              "labels are on cpu, the model on meta: move them with `.to(device)`"),
    }),
}


CATALOGUE: dict[str, dict[str, Todo]] = {"noising": NOISING, "denoiser": DENOISER, "ddpm": DDPM, "cfg": CFG,
                                         "flow": FLOW, "improved": IMPROVED, "editing": EDITING}


def test_every_todo_of_every_stage_has_mistakes_and_a_correct_answer():
    assert {stage.key: set(stage.todos) for stage in stages.STAGES} == \
        {key: set(todos) for key, todos in CATALOGUE.items()}
    for key, todos in CATALOGUE.items():
        for grade_id, todo in todos.items():
            assert todo.mistakes and todo.correct, f"{key}/{grade_id}: no mistake or no correct answer"
            assert todo.check.check.module == stages.get(key).checks.__name__, f"{key}/{grade_id}: another stage's check"


CORRECT = [pytest.param(todo, student, id=f"{key}/{grade_id}/{name}") for key, todos in CATALOGUE.items()
           for grade_id, todo in todos.items() for name, student in todo.correct.items()]
MISTAKES = [pytest.param(todo, student, fragment, id=f"{key}/{grade_id}/{name}") for key, todos in CATALOGUE.items()
            for grade_id, todo in todos.items() for name, (student, fragment) in todo.mistakes.items()]


@pytest.mark.parametrize("todo, student", CORRECT)
def test_a_correct_answer_written_differently_passes(todo, student, capsys):
    todo.check(*students(student), **todo.case)
    assert capsys.readouterr().out.startswith("✓")


@pytest.mark.parametrize("todo, student, fragment", MISTAKES)
def test_a_mistake_fails_with_the_message_that_names_it(todo, student, fragment):
    fails_with(todo.check, student, fragment, **todo.case)
