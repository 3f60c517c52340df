"""Checks for stage 2 (``02_denoiser``): the UNet operations and blocks, the UnconditionalUNet, and the
denoising loss and training step.

A network check builds the student's module (inside :func:`~course_lib.checks.forbid`, so subclassing or
calling the reference does not pass), checks the output shape with a hint for the usual padding, stride
and kernel slips, compares the parameter shapes with the reference's, copies the reference's weights into
it and compares the outputs on the same seeded input. Hidden tests call the same checks with other
channel counts, sizes and seeds.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .. import answers
from .. import models as reference
from .harness import CheckFailed, close, copy_weights, expect_close, expect_tensor, forbid, passed, run_student

denoiser_answers = answers.load("denoiser")
reference_loss = denoiser_answers.denoising_loss


def _near(a: torch.Tensor, b: torch.Tensor) -> bool:
    """:func:`~course_lib.checks.harness.close` at the tolerance of module outputs (BatchNorm in float32)."""
    return close(a, b, atol=1e-4, rtol=1e-3)


def _build(what: str, cls, references: tuple, *args, **kwargs) -> nn.Module:
    with forbid(*references):
        module = run_student(what, cls, *args, **kwargs)
    if not isinstance(module, nn.Module):
        raise CheckFailed(f"{what} should be an nn.Module, got {type(module).__name__}")
    return module


def _forward(what: str, module: nn.Module, x: torch.Tensor, references: tuple) -> torch.Tensor:
    with forbid(*references):
        return run_student(f"{what}.forward", module, x)


def _activation_hint(student_out: torch.Tensor, pre_activation: torch.Tensor) -> str:
    """Explain an output that equals the pre-activation or its ReLU."""
    if _near(student_out, pre_activation):
        return "the GELU at the end is missing"
    if _near(student_out, F.relu(pre_activation)):
        return "that is a ReLU: the course uses nn.GELU()"
    return "check the order: convolution, then BatchNorm2d, then GELU, with the kernel, stride and padding given"


def _check_shape(what: str, out, input_shape: tuple, expected_shape: tuple,
                 shape_hints: dict[tuple, str] | None = None) -> torch.Tensor:
    """Fail unless ``out`` is a finite float tensor of ``expected_shape``; hint at the usual shape slips."""
    if isinstance(out, torch.Tensor) and tuple(out.shape) != tuple(expected_shape):
        hint = (shape_hints or {}).get(tuple(out.shape), "")
        message = f"{what} maps {tuple(input_shape)} to {tuple(out.shape)}, expected {tuple(expected_shape)}"
        raise CheckFailed(f"{message}: {hint}" if hint else message)
    return expect_tensor(f"{what}(x)", out, expected_shape)


def _check_module(what: str, student_cls, reference_cls, args: tuple, input_shape: tuple, expected_shape: tuple,
                  seed: int, shape_hints: dict[tuple, str] | None = None, hints: dict[str, str] | None = None) -> None:
    """Build, shape-check, copy the reference's weights into, and compare one module with its reference."""
    label = f"{what}({', '.join(map(str, args))})"
    student = _build(label, student_cls, (reference_cls,), *args)
    x = torch.randn(input_shape, generator=torch.Generator().manual_seed(seed))
    _check_shape(label, _forward(label, student, x, (reference_cls,)), input_shape, expected_shape, shape_hints)
    torch.manual_seed(seed)
    ref = reference_cls(*args)
    copy_weights(ref, student, label, hints)
    for mode in ("train", "eval"):
        student.train(mode == "train")
        ref.train(mode == "train")
        with torch.no_grad():
            got = _forward(label, student, x, (reference_cls,))
            expected = ref(x)
        if not _near(got, expected):
            pre = nn.Sequential(*list(ref)[:-1])(x) if isinstance(ref[-1], nn.GELU) else None
            hint = _activation_hint(got, pre) if pre is not None else "compare your layers with the description"
            expect_close(f"{label}(x) in {mode} mode", got, expected, hint, atol=1e-4, rtol=1e-3)


_LAYER_HINTS = {
    "0.weight": "the convolution's kernel or channels differ (weight shape: out, in, kernel, kernel; "
                "a ConvTranspose2d's: in, out, kernel, kernel)",
    "1.weight": "the second layer should be nn.BatchNorm2d(out_channels)",
}


def check_operations(Conv, DownConv, UpConv, Flatten, Unflatten, in_channels: int = 3, out_channels: int = 5,
                     size: int = 8, batch_size: int = 4, seed: int = 0) -> None:
    """Check the five UNet operations against :mod:`course_lib.models.operations`.

    Conv, DownConv and UpConv map ``in_channels`` to ``out_channels`` on ``size`` x ``size`` inputs
    (``size`` even); Flatten takes (N, C, 7, 7) and Unflatten (N, C, 1, 1) with C = ``out_channels``.
    """
    n, c_in, c_out, h = batch_size, in_channels, out_channels, size
    _check_module("Conv", Conv, reference.Conv, (c_in, c_out), (n, c_in, h, h), (n, c_out, h, h), seed, {
        (n, c_out, h - 2, h - 2): "padding=1 keeps H and W (a 3x3 kernel without padding loses a pixel per side)",
        (n, c_out, h // 2, h // 2): "Conv keeps H and W: stride=1 (DownConv is the one with stride 2)",
    }, _LAYER_HINTS)
    _check_module("DownConv", DownConv, reference.DownConv, (c_in, c_out), (n, c_in, h, h),
                  (n, c_out, h // 2, h // 2), seed + 1, {
                      (n, c_out, h, h): "DownConv halves H and W: stride=2",
                      (n, c_out, (h - 3) // 2 + 1, (h - 3) // 2 + 1): "padding=1 is missing",
                  }, _LAYER_HINTS)
    _check_module("UpConv", UpConv, reference.UpConv, (c_in, c_out), (n, c_in, h, h), (n, c_out, 2 * h, 2 * h),
                  seed + 2, {
                      (n, c_out, 2 * h + 2, 2 * h + 2): "padding=1 is missing: ConvTranspose2d(kernel_size=4, "
                                                        "stride=2, padding=1) gives exactly 2H",
                      (n, c_out, 2 * h - 1, 2 * h - 1): "kernel_size=4, not 3: ConvTranspose2d(kernel_size=4, "
                                                        "stride=2, padding=1) gives exactly 2H",
                      (n, c_out, h, h): "UpConv doubles H and W: nn.ConvTranspose2d with stride=2",
                      (n, c_out, h - 2, h - 2): "UpConv doubles H and W: nn.ConvTranspose2d, not nn.Conv2d",
                  }, _LAYER_HINTS)
    _check_module("Flatten", Flatten, reference.Flatten, (), (n, c_out, 7, 7), (n, c_out, 1, 1), seed + 3, {
        (n, c_out * 49): "this Flatten is not nn.Flatten: nn.AvgPool2d(7) keeps the shape (N, C, 1, 1)",
        (n, c_out): "keep the shape (N, C, 1, 1): nn.AvgPool2d(7) then nn.GELU()",
    })
    _check_module("Unflatten", Unflatten, reference.Unflatten, (c_out,), (n, c_out, 1, 1), (n, c_out, 7, 7),
                  seed + 4, {
                      (n, c_out, 1, 1): "Unflatten goes from 1x1 to 7x7: nn.ConvTranspose2d(C, C, 7, stride=7, "
                                        "padding=0)",
                  }, _LAYER_HINTS)
    passed(f"Conv, DownConv, UpConv, Flatten, Unflatten: shapes and outputs match the reference "
           f"({c_in} -> {c_out} channels, {h}x{h} inputs)")


def check_blocks(ConvBlock, DownBlock, UpBlock, in_channels: int = 3, out_channels: int = 5, size: int = 8,
                 batch_size: int = 4, seed: int = 0) -> None:
    """Check ConvBlock, DownBlock and UpBlock against :mod:`course_lib.models.blocks`."""
    n, c_in, c_out, h = batch_size, in_channels, out_channels, size
    _check_module("ConvBlock", ConvBlock, reference.ConvBlock, (c_in, c_out), (n, c_in, h, h), (n, c_out, h, h),
                  seed, hints={"1.": "the second Conv maps out_channels to out_channels"})
    _check_module("DownBlock", DownBlock, reference.DownBlock, (c_in, c_out), (n, c_in, h, h),
                  (n, c_out, h // 2, h // 2), seed + 1,
                  {(n, c_out, h, h): "a DownBlock starts with a DownConv, which halves H and W"},
                  {"1.": "after the DownConv(in, out) comes a ConvBlock(out, out)"})
    _check_module("UpBlock", UpBlock, reference.UpBlock, (c_in, c_out), (n, c_in, h, h),
                  (n, c_out, 2 * h, 2 * h), seed + 2,
                  {(n, c_out, h, h): "an UpBlock starts with an UpConv, which doubles H and W"},
                  {"1.": "after the UpConv(in, out) comes a ConvBlock(out, out)"})
    passed(f"ConvBlock, DownBlock, UpBlock: shapes and outputs match the reference ({c_in} -> {c_out} channels)")


_UNET_HINTS = {
    "body.conv_in": "conv_in = ConvBlock(in_channels, D)",
    "body.down1": "down1 = DownBlock(D, D)",
    "body.down2": "down2 = DownBlock(D, 2D)",
    "body.unflatten": "unflatten = Unflatten(2D)",
    "body.up1": "up1 = UpBlock(4D, D): its input is torch.cat([unflattened, down2 features], dim=1), 2D + 2D channels",
    "body.up2": "up2 = UpBlock(2D, D): its input is torch.cat([up1 output, down1 features], dim=1), D + D channels",
    "body.conv_out": "conv_out = ConvBlock(2D, D): its input is torch.cat([up2 output, conv_in features], dim=1)",
    "body.head": "head = nn.Conv2d(D, in_channels, 3, padding=1), a plain convolution (no BatchNorm, no GELU)",
}


def check_unet(UnconditionalUNet, num_hiddens: int = 8, batch_size: int = 3, in_channels: int = 1,
               seed: int = 0) -> None:
    """Check the student's ``UnconditionalUNet(in_channels, num_hiddens)`` against the reference.

    Input (batch_size, in_channels, 28, 28); every parameter must be used; with the reference's weights
    the outputs must match (skip connections concatenated as ``torch.cat([decoder, encoder], dim=1)``).
    """
    label = f"UnconditionalUNet(in_channels={in_channels}, num_hiddens={num_hiddens})"
    forbidden = (reference.UnconditionalUNet, reference.UNetBody)
    student = _build(label, UnconditionalUNet, forbidden, in_channels=in_channels, num_hiddens=num_hiddens)
    shape = (batch_size, in_channels, 28, 28)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
    try:
        out = _forward(label, student, x, forbidden)
    except CheckFailed as error:
        if "channels" in str(error) or "size" in str(error):
            raise CheckFailed(f"{error}. Hint: a block received the wrong number of channels; follow the "
                              "diagram's channel counts (each concatenation adds the skip's channels)") from None
        raise
    _check_shape(label, out, shape, shape)
    out.square().mean().backward()
    unused = [name for name, p in student.named_parameters() if p.grad is None]
    if unused:
        raise CheckFailed(f"{label}: these layers are never used in forward: {', '.join(unused[:4])}"
                          f"{' ...' if len(unused) > 4 else ''}")
    torch.manual_seed(seed)
    ref = reference.UnconditionalUNet(in_channels, num_hiddens)
    copy_weights(ref, student, label, _UNET_HINTS)
    for mode in ("train", "eval"):
        student.train(mode == "train")
        ref.train(mode == "train")
        with torch.no_grad():
            got = _forward(label, student, x, forbidden)
            expected = ref(x)
        expect_close(f"output in {mode} mode", got, expected,
                     "same layers, different result: follow the diagram in forward. Each skip is "
                     "torch.cat([decoder features, encoder features], dim=1); Flatten then Unflatten at the "
                     "bottleneck; the head comes last", atol=1e-4, rtol=1e-3)
    passed(f"{label}: output shape {shape}, every layer used, same outputs as the reference with its weights")


def _tiny_model(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.GELU(), nn.Conv2d(4, 1, 3, padding=1))


def check_training_step(denoising_loss: Callable, train_step: Callable, batch_size: int = 8, size: int = 12,
                        sigma: float = 0.5, seed: int = 0) -> None:
    """Check ``denoising_loss(model, x, sigma, generator)`` and ``train_step(model, optimizer, x, generator)``.

    The loss must equal :func:`course_lib.objectives.denoising_loss` on the same generator; one
    ``train_step`` must return that loss as a float and leave the weights where one Adam step of the
    reference leaves them (starting from stale gradients, which ``optimizer.zero_grad()`` must clear).
    """
    x = torch.rand(batch_size, 1, size, size, generator=torch.Generator().manual_seed(seed))

    def g(offset: int) -> torch.Generator:
        return torch.Generator().manual_seed(seed + offset)

    model = _tiny_model(seed)
    with forbid(reference_loss):
        loss = run_student("denoising_loss", denoising_loss, model, x, sigma=sigma, generator=g(1))
        again = run_student("denoising_loss", denoising_loss, model, x, sigma=sigma, generator=g(1))
    loss = expect_tensor("denoising_loss(...)", loss, ())
    if not loss.requires_grad:
        raise CheckFailed("the loss does not depend on the model's weights: compute it from model(z) "
                          "without torch.no_grad() or .detach()")
    if not torch.equal(loss, again):
        raise CheckFailed("denoising_loss gave different values for the same generator seed: draw the noise with "
                          "generator=generator (e.g. add_noise(x, sigma, generator))")
    with torch.no_grad():
        eps = torch.randn(x.shape, generator=g(1))
        z = x + sigma * eps
        expected = reference_loss(model, x, sigma, g(1))
        mistakes = [
            (F.mse_loss(model(z), eps), "the denoiser predicts the clean image x, not the noise"),
            (F.mse_loss(model(x), x), "feed the noisy z = x + sigma * eps to the model, not the clean x"),
            (F.mse_loss(model(z), x, reduction="sum"), "use the mean of the squared errors (F.mse_loss), not the sum"),
            (F.mse_loss(model(x + eps), x), "the noise is not scaled: z = x + sigma * eps"),
        ]
    for wrong, hint in mistakes:
        if _near(loss, wrong) and not _near(loss, expected):
            expect_close("loss", loss, expected, hint)
    expect_close("loss", loss, expected, "L = mean((model(x + sigma * eps) - x) ** 2)")

    student_model, reference_model, stale_model = (_tiny_model(seed) for _ in range(3))
    optimizers = [torch.optim.Adam(m.parameters(), lr=1e-2) for m in (student_model, reference_model, stale_model)]
    for stale in (student_model, stale_model):
        for p in stale.parameters():
            p.grad = torch.ones_like(p)  # left over from an earlier step
    with forbid(reference_loss, denoiser_answers.train_step):
        returned = run_student("train_step", train_step, student_model, optimizers[0], x, generator=g(2))
    reference_value = reference_loss(reference_model, x, generator=g(2))
    optimizers[1].zero_grad()
    reference_value.backward()
    optimizers[1].step()
    stale_loss = reference_loss(stale_model, x, generator=g(2))
    stale_loss.backward()
    optimizers[2].step()
    if not isinstance(returned, float):
        raise CheckFailed(f"train_step should return the loss as a Python float (loss.item()), "
                          f"got {type(returned).__name__}")
    if abs(returned - reference_value.item()) > 1e-4 * max(1.0, abs(reference_value.item())):
        raise CheckFailed(f"train_step returned {returned:.5g}, expected the batch's loss before the step, "
                          f"{reference_value.item():.5g}")
    got, expected, stale = (torch.cat([p.detach().flatten() for p in m.parameters()])
                            for m in (student_model, reference_model, stale_model))
    if torch.equal(got, torch.cat([p.detach().flatten() for p in _tiny_model(seed).parameters()])):
        raise CheckFailed("train_step did not change the weights: call loss.backward() and then optimizer.step()")
    if _near(got, stale) and not _near(got, expected):
        raise CheckFailed("the gradients of the previous step were added to this one: call optimizer.zero_grad() "
                          "before loss.backward()")
    expect_close("weights after train_step", got, expected,
                 "one step is: optimizer.zero_grad(), loss = denoising_loss(model, x, generator=generator), "
                 "loss.backward(), optimizer.step()", atol=1e-5, rtol=1e-4)
    passed(f"denoising_loss and train_step: same loss ({returned:.4f}) and same weights after one Adam step "
           "as the reference")
