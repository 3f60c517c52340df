"""Checks for stage 2 (``02_denoiser``): the UNet operations and blocks, the UnconditionalUNet, the
denoising loss and training step, and the training loop.

Each check has three parts (see :mod:`course_lib.checks.protocol`). A network check's reference builds the
seeded reference module and ships its parameters and buffers (in registration order, with their names) as
inputs, with its outputs in train and eval mode as expected values. The probe builds the student's module,
runs it once (its output shape), copies the reference's tensors into it in registration order, and runs it
again in train and eval mode. The judge checks the output shape with a hint for the usual padding, stride and
kernel slips, explains a parameter whose shape differs from the reference's, and compares the outputs. The
training-step check runs the student's loss and one ``train_step`` on a tiny given model (:func:`tiny_model`)
and compares with the reference's loss, known mistakes and weights after one Adam step. The training-loop check
runs the student's ``train_denoiser`` for a few epochs on a tiny given model with a BatchNorm (:func:`loop_model`),
wrapped so that every call's mode, autograd, batch size and weights' version is recorded, with an Adam optimizer
whose steps are recorded, on toy digits whose clean images it can read off the noisy ones; it judges what makes a
loop right (modes, gradients, one optimizer, fresh gradients, every held-out digit once, the returned losses, the
loss falling, a callback per epoch), not the order of its random draws. Each check also has a device run
(:mod:`course_lib.checks.devices`): the modules' forward passes, the loss and step, and the whole loop (its digits
and model on the device, so that a validation generator made on the CPU is named) run again on the ``meta`` device.
Hidden tests call the same checks with other channel counts, sizes and seeds.

The probe and the judge of each check are here; its reference side, which builds the inputs and expected values
with the answers, is in ``reference.py`` beside this file (read through ``REFERENCE``), which only the grader has.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ...checks.harness import (CheckFailed, close, compare, expect_close, expect_tensor, generator, layer_list,
                               module_tensors, recorded, recorded_tensor, run_student)
from ...checks.devices import DEVICE, device_run, module_device_run
from ...checks.protocol import check
from ...data import DeviceImages
from ..stage import ReferenceCase
from . import STAGE


REFERENCE = ReferenceCase(STAGE)


def _near(a: torch.Tensor, b: torch.Tensor) -> bool:
    """:func:`~course_lib.checks.harness.close` at the tolerance of module outputs (BatchNorm in float32)."""
    return close(a, b, atol=1e-4, rtol=1e-3)


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
    return recorded_tensor(f"{what}(x)", out, expected_shape)


def _weights_problem(what: str, reference: dict, student: dict, hints: dict[str, str] | None = None) -> str | None:
    """Why the reference's tensors cannot be copied into the student's module, or None when they can.

    The logic of copying weights in registration order, on shapes: ``reference`` holds ``names``,
    ``tensors`` (parameters then buffers, in registration order), ``num_parameters`` and ``layers``; ``student``
    the ``shapes`` of its tensors in the same order, its ``num_parameters`` and ``layers``. ``hints`` maps a
    prefix of the reference's tensor names to the hint for that submodule.
    """
    source = [tuple(t.shape) for t in reference["tensors"]]
    target = [tuple(int(n) for n in shape) for shape in student["shapes"]]
    p, q = int(reference["num_parameters"]), int(student["num_parameters"])
    if sorted(source[:p]) == sorted(target[:q]) and source[:p] != target[:q]:
        return (f"{what} has the right layers, created in a different order: create them in __init__ in the order "
                "of the diagram, so that the check can compare them with the reference")
    for index, (name, s, d) in enumerate(zip(reference["names"], source, target)):
        if s != d:
            hint = next((h for prefix, h in (hints or {}).items() if name.startswith(prefix)), "")
            message = f"{what}: your tensor #{index} has shape {d} where the reference's `{name}` has shape {s}"
            return f"{message}: {hint}" if hint else message
    if len(source) != len(target):
        return f"{what} has the layers [{student['layers']}], expected [{reference['layers']}]"
    return None


def _spec(name: str, args: tuple, input_shape: tuple, output_shape: tuple, seed: int,
          shape_hints: dict[tuple, str] | None = None, weight_hints: dict[str, str] | None = None,
          kwargs: dict | None = None) -> dict:
    """One module of a check: the answers' class ``name`` built with ``args``/``kwargs``, its seeded input of
    ``input_shape`` and the hints for a wrong output shape and for a parameter of a wrong shape."""
    kwargs = kwargs or {}
    label = f"{name}({', '.join([*map(str, args), *(f'{k}={v}' for k, v in kwargs.items())])})"
    return {"name": name, "label": label, "args": tuple(args), "kwargs": kwargs, "input_shape": tuple(input_shape),
            "output_shape": tuple(output_shape), "seed": seed, "shape_hints": shape_hints or {},
            "weight_hints": weight_hints or {}}


_FORWARD_CRASH_HINT = ("a block received the wrong number of channels; follow the diagram's channel counts "
                       "(each concatenation adds the skip's channels)")


def _probe_module(student_cls, spec: dict, backward: bool = False) -> dict:
    """Build the student's module, run it, load the reference's tensors, run it in train and eval mode.

    Returns what it got as far as it went: ``out`` (the first output), ``unused`` (with ``backward``: the
    parameters without a gradient after a backward pass of ``out.square().mean()``), ``shapes``,
    ``num_parameters`` and ``layers`` of the student's tensors, then ``train`` and ``eval`` (the outputs with
    the reference's tensors loaded); and ``failed``, the message of the step where the student's code failed.
    """
    result: dict = {}
    label = spec["label"]
    try:
        module = run_student(label, student_cls, *spec["args"], **spec["kwargs"])
        if not isinstance(module, nn.Module):
            raise CheckFailed(f"{label} should be an nn.Module, got {type(module).__name__}")
        try:
            out = run_student(f"{label}.forward", module, spec["x"].clone())
        except CheckFailed as error:
            if backward and ("channels" in str(error) or "size" in str(error)):
                raise CheckFailed(f"{error}. Hint: {_FORWARD_CRASH_HINT}") from None
            raise
        result["out"] = recorded(out)
        if backward:
            if isinstance(out, torch.Tensor) and out.requires_grad:
                run_student(f"{label} (backward pass)", lambda: out.square().mean().backward())
            result["unused"] = [name for name, p in module.named_parameters() if p.grad is None]
        tensors = module_tensors(module)
        result.update(shapes=[tuple(t.shape) for _, t in tensors], num_parameters=len(list(module.parameters())),
                      layers=layer_list(module))
        if _weights_problem(label, spec, result) is not None:
            return result
        with torch.no_grad():
            for (_, mine), theirs in zip(tensors, spec["tensors"]):
                mine.copy_(theirs)
        for mode in ("train", "eval"):
            run_student(f"{label}.train", module.train, mode == "train")
            with torch.no_grad():
                result[mode] = recorded(run_student(f"{label}.forward", module, spec["x"].clone()))
    except CheckFailed as failure:
        result["failed"] = str(failure)
    except Exception as error:  # noqa: BLE001 - a module that breaks the harness is the student's failure
        result["failed"] = f"{label}: {type(error).__name__}: {error}"
    return result


def _judge_module(spec: dict, inputs: dict, result: dict, expected: dict, unused_check: bool = False,
                  output_name: str | None = None, output_hint: str | None = None) -> None:
    """Judge one module's recorded ``result``, step by step in the order the probe ran them."""
    label = spec["label"]
    if not isinstance(result, dict):
        raise CheckFailed(f"{label}: no usable result was recorded")

    def step(key: str):
        if key in result:
            return result[key]
        raise CheckFailed(str(result.get("failed", f"{label}: no result was recorded")))

    _check_shape(label, step("out"), spec["input_shape"], spec["output_shape"], spec["shape_hints"])
    if unused_check:
        unused = [str(name) for name in step("unused")]
        if unused:
            raise CheckFailed(f"{label}: these layers are never used in forward: {', '.join(unused[:4])}"
                              f"{' ...' if len(unused) > 4 else ''}")
    problem = _weights_problem(label, inputs, {key: step(key) for key in ("shapes", "num_parameters", "layers")},
                               spec["weight_hints"])
    if problem:
        raise CheckFailed(problem)
    for mode in ("train", "eval"):
        name = f"{output_name or f'{label}(x)'} in {mode} mode"
        want = expected[mode]
        got = recorded_tensor(name, step(mode), tuple(want.shape))
        if _near(got, want):
            continue
        if output_hint is not None:
            hint = output_hint
        elif expected[f"{mode}_pre"] is not None:
            hint = _activation_hint(got, expected[f"{mode}_pre"])
        else:
            hint = "compare your layers with the description"
        expect_close(name, got, want, hint, atol=1e-4, rtol=1e-3)


def _probe_modules(students: tuple, inputs: dict, backward: bool = False) -> dict:
    return {"modules": [_probe_module(cls, spec, backward) for cls, spec in zip(students, inputs["modules"])]}


def _modules_devices(students: tuple, inputs: dict) -> str | None:
    """The device run of each student module's forward pass on its input, built as the probe builds it: the
    message of the first that makes a tensor off the input's device, or None."""
    for cls, spec in zip(students, inputs["modules"]):
        message = module_device_run(spec["label"], lambda cls=cls, spec=spec: cls(*spec["args"], **spec["kwargs"]),
                                    spec["x"].clone(), holder="the module", where="x.device")
        if message:
            return message
    return None


def _judge_modules(specs: list[dict], inputs: dict, outputs: dict, expected: dict, **options) -> None:
    results = outputs["modules"]
    if not isinstance(results, (list, tuple)) or len(results) != len(specs):
        raise CheckFailed("the recorded result does not hold one entry per module")
    for spec, module_inputs, result, module_expected in zip(specs, inputs["modules"], results, expected["modules"]):
        _judge_module(spec, module_inputs, result, module_expected, **options)


_LAYER_HINTS = {
    "0.weight": "the convolution's kernel or channels differ (weight shape: out, in, kernel, kernel; "
                "a ConvTranspose2d's: in, out, kernel, kernel)",
    "1.weight": "the second layer should be nn.BatchNorm2d(out_channels)",
}


def operation_specs(in_channels: int, out_channels: int, size: int, batch_size: int, seed: int) -> list[dict]:
    n, c_in, c_out, h = batch_size, in_channels, out_channels, size
    return [
        _spec("Conv", (c_in, c_out), (n, c_in, h, h), (n, c_out, h, h), seed, {
            (n, c_out, h - 2, h - 2): "padding=1 keeps H and W (a 3x3 kernel without padding loses a pixel per side)",
            (n, c_out, h // 2, h // 2): "Conv keeps H and W: stride=1 (DownConv is the one with stride 2)",
        }, _LAYER_HINTS),
        _spec("DownConv", (c_in, c_out), (n, c_in, h, h), (n, c_out, h // 2, h // 2), seed + 1, {
            (n, c_out, h, h): "DownConv halves H and W: stride=2",
            (n, c_out, (h - 3) // 2 + 1, (h - 3) // 2 + 1): "padding=1 is missing",
        }, _LAYER_HINTS),
        _spec("UpConv", (c_in, c_out), (n, c_in, h, h), (n, c_out, 2 * h, 2 * h), seed + 2, {
            (n, c_out, 2 * h + 2, 2 * h + 2): "padding=1 is missing: ConvTranspose2d(kernel_size=4, stride=2, "
                                              "padding=1) gives exactly 2H",
            (n, c_out, 2 * h - 1, 2 * h - 1): "kernel_size=4, not 3: ConvTranspose2d(kernel_size=4, stride=2, "
                                              "padding=1) gives exactly 2H",
            (n, c_out, h, h): "UpConv doubles H and W: nn.ConvTranspose2d with stride=2",
            (n, c_out, h - 2, h - 2): "UpConv doubles H and W: nn.ConvTranspose2d, not nn.Conv2d",
        }, _LAYER_HINTS),
        _spec("Flatten", (), (n, c_out, 7, 7), (n, c_out, 1, 1), seed + 3, {
            (n, c_out * 49): "this Flatten is not nn.Flatten: nn.AvgPool2d(7) keeps the shape (N, C, 1, 1)",
            (n, c_out): "keep the shape (N, C, 1, 1): nn.AvgPool2d(7) then nn.GELU()",
        }),
        _spec("Unflatten", (c_out,), (n, c_out, 1, 1), (n, c_out, 7, 7), seed + 4, {
            (n, c_out, 1, 1): "Unflatten goes from 1x1 to 7x7: nn.ConvTranspose2d(C, C, 7, stride=7, padding=0)",
        }, _LAYER_HINTS),
    ]


def _operations_probe(Conv, DownConv, UpConv, Flatten, Unflatten, *, inputs: dict) -> dict:
    return _probe_modules((Conv, DownConv, UpConv, Flatten, Unflatten), inputs)


def _operations_devices(Conv, DownConv, UpConv, Flatten, Unflatten, *, inputs: dict) -> str | None:
    return _modules_devices((Conv, DownConv, UpConv, Flatten, Unflatten), inputs)


def _operations_judge(case: dict, inputs: dict, outputs: dict, expected: dict) -> str:
    specs = operation_specs(case["in_channels"], case["out_channels"], case["size"], case["batch_size"],
                             case["seed"])
    _judge_modules(specs, inputs, outputs, expected)
    h = case["size"]
    return (f"Conv, DownConv, UpConv, Flatten, Unflatten: shapes and outputs match the reference "
            f"({case['in_channels']} -> {case['out_channels']} channels, {h}x{h} inputs)")


@check(reference=REFERENCE.operations_case, probe=_operations_probe, judge=_operations_judge,
       devices=_operations_devices)
def check_operations(Conv, DownConv, UpConv, Flatten, Unflatten, in_channels: int = 3, out_channels: int = 5,
                     size: int = 8, batch_size: int = 4, seed: int = 0):
    """Check the five UNet operations against the reference operations.

    Conv, DownConv and UpConv map ``in_channels`` to ``out_channels`` on ``size`` x ``size`` inputs
    (``size`` even); Flatten takes (N, C, 7, 7) and Unflatten (N, C, 1, 1) with C = ``out_channels``. Each is
    run with the reference's weights, in train and eval mode, on a seeded input of ``batch_size`` images.
    """


def block_specs(in_channels: int, out_channels: int, size: int, batch_size: int, seed: int) -> list[dict]:
    n, c_in, c_out, h = batch_size, in_channels, out_channels, size
    return [
        _spec("ConvBlock", (c_in, c_out), (n, c_in, h, h), (n, c_out, h, h), seed,
              weight_hints={"1.": "the second Conv maps out_channels to out_channels"}),
        _spec("DownBlock", (c_in, c_out), (n, c_in, h, h), (n, c_out, h // 2, h // 2), seed + 1,
              {(n, c_out, h, h): "a DownBlock starts with a DownConv, which halves H and W"},
              {"1.": "after the DownConv(in, out) comes a ConvBlock(out, out)"}),
        _spec("UpBlock", (c_in, c_out), (n, c_in, h, h), (n, c_out, 2 * h, 2 * h), seed + 2,
              {(n, c_out, h, h): "an UpBlock starts with an UpConv, which doubles H and W"},
              {"1.": "after the UpConv(in, out) comes a ConvBlock(out, out)"}),
    ]


def _blocks_probe(ConvBlock, DownBlock, UpBlock, *, inputs: dict) -> dict:
    return _probe_modules((ConvBlock, DownBlock, UpBlock), inputs)


def _blocks_devices(ConvBlock, DownBlock, UpBlock, *, inputs: dict) -> str | None:
    return _modules_devices((ConvBlock, DownBlock, UpBlock), inputs)


def _blocks_judge(case: dict, inputs: dict, outputs: dict, expected: dict) -> str:
    specs = block_specs(case["in_channels"], case["out_channels"], case["size"], case["batch_size"], case["seed"])
    _judge_modules(specs, inputs, outputs, expected)
    return (f"ConvBlock, DownBlock, UpBlock: shapes and outputs match the reference "
            f"({case['in_channels']} -> {case['out_channels']} channels)")


@check(reference=REFERENCE.blocks_case, probe=_blocks_probe, judge=_blocks_judge, devices=_blocks_devices)
def check_blocks(ConvBlock, DownBlock, UpBlock, in_channels: int = 3, out_channels: int = 5, size: int = 8,
                 batch_size: int = 4, seed: int = 0):
    """Check ConvBlock, DownBlock and UpBlock against the reference blocks (same arguments as
    :func:`check_operations`), with the reference's weights, in train and eval mode."""


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


_UNET_OUTPUT_HINT = ("same layers, different result: follow the diagram in forward. Each skip is "
                     "torch.cat([decoder features, encoder features], dim=1); Flatten then Unflatten at the "
                     "bottleneck; the head comes last")


def unet_spec(num_hiddens: int, batch_size: int, in_channels: int, seed: int) -> dict:
    shape = (batch_size, in_channels, 28, 28)
    return _spec("UnconditionalUNet", (), shape, shape, seed, weight_hints=_UNET_HINTS,
                 kwargs={"in_channels": in_channels, "num_hiddens": num_hiddens})


def _unet_probe(UnconditionalUNet, *, inputs: dict) -> dict:
    return _probe_modules((UnconditionalUNet,), inputs, backward=True)


def _unet_devices(UnconditionalUNet, *, inputs: dict) -> str | None:
    return _modules_devices((UnconditionalUNet,), inputs)


def _unet_judge(case: dict, inputs: dict, outputs: dict, expected: dict) -> str:
    spec = unet_spec(case["num_hiddens"], case["batch_size"], case["in_channels"], case["seed"])
    _judge_modules([spec], inputs, outputs, expected, unused_check=True, output_name="output",
                   output_hint=_UNET_OUTPUT_HINT)
    return (f"{spec['label']}: output shape {spec['input_shape']}, every layer used, same outputs as the reference "
            "with its weights")


@check(reference=REFERENCE.unet_case, probe=_unet_probe, judge=_unet_judge, devices=_unet_devices)
def check_unet(UnconditionalUNet, num_hiddens: int = 8, batch_size: int = 3, in_channels: int = 1, seed: int = 0):
    """Check the student's ``UnconditionalUNet(in_channels, num_hiddens)`` against the reference.

    Input (batch_size, in_channels, 28, 28); every parameter must be used; with the reference's weights
    the outputs must match (skip connections concatenated as ``torch.cat([decoder, encoder], dim=1)``).
    """


def tiny_model(seed: int) -> nn.Module:
    """The seeded model the loss and the step run on: given code, not an answer (the probe builds it too)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.GELU(), nn.Conv2d(4, 1, 3, padding=1))


def flat_weights(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten().cpu() for p in model.parameters()])


LEARNING_RATE = 1e-2


def stale_gradients(model: nn.Module) -> None:
    for p in model.parameters():
        p.grad = torch.ones_like(p)  # left over from an earlier step


def _training_step_probe(denoising_loss: Callable, train_step: Callable, *, inputs: dict) -> dict:
    x, sigma = inputs["x"], inputs["sigma"]
    model = tiny_model(inputs["model_seed"])
    loss = run_student("denoising_loss", denoising_loss, model, x.clone(), sigma=sigma,
                       generator=generator(inputs["loss_seed"]))
    again = run_student("denoising_loss", denoising_loss, model, x.clone(), sigma=sigma,
                        generator=generator(inputs["loss_seed"]))
    outputs = {"loss": recorded(loss), "again": recorded(again),
               "requires_grad": bool(isinstance(loss, torch.Tensor) and loss.requires_grad)}
    student_model = tiny_model(inputs["model_seed"])
    optimizer = torch.optim.Adam(student_model.parameters(), lr=inputs["learning_rate"])
    stale_gradients(student_model)
    try:
        returned = run_student("train_step", train_step, student_model, optimizer, x.clone(),
                               generator=generator(inputs["step_seed"]))
    except CheckFailed as failure:
        return {**outputs, "step_failed": str(failure)}
    return {**outputs, "returned_type": type(returned).__name__,
            "returned": float(returned) if isinstance(returned, float) else None,
            "weights": flat_weights(student_model)}


def _training_step_judge(case: dict, inputs: dict, outputs: dict, expected: dict) -> str:
    loss = recorded_tensor("denoising_loss(...)", outputs["loss"], ())
    if outputs["requires_grad"] is not True:
        raise CheckFailed("the loss does not depend on the model's weights: compute it from model(z) "
                          "without torch.no_grad() or .detach()")
    again = outputs["again"]
    if not (isinstance(again, torch.Tensor) and torch.equal(loss, again)):
        raise CheckFailed("denoising_loss gave different values for the same generator seed: draw the noise with "
                          "generator=generator (e.g. add_noise(x, sigma, generator))")
    want = expected["loss"]
    for wrong, hint in expected["mistakes"]:
        if _near(loss, wrong) and not _near(loss, want):
            expect_close("loss", loss, want, hint)
    expect_close("loss", loss, want, "L = mean((model(x + sigma * eps) - x) ** 2)")

    if "step_failed" in outputs:
        raise CheckFailed(str(outputs["step_failed"]))
    returned, value = outputs["returned"], expected["value"]
    if not isinstance(returned, float):
        raise CheckFailed(f"train_step should return the loss as a Python float (loss.item()), "
                          f"got {outputs['returned_type']}")
    if not abs(returned - value) <= 1e-4 * max(1.0, abs(value)):
        raise CheckFailed(f"train_step returned {returned:.5g}, expected the batch's loss before the step, "
                          f"{value:.5g}")
    got = recorded_tensor("weights after train_step", outputs["weights"], tuple(expected["weights"].shape))
    if torch.equal(got, expected["initial_weights"]):
        raise CheckFailed("train_step did not change the weights: call loss.backward() and then optimizer.step()")
    if _near(got, expected["stale_weights"]) and not _near(got, expected["weights"]):
        raise CheckFailed("the gradients of the previous step were added to this one: call optimizer.zero_grad() "
                          "before loss.backward()")
    expect_close("weights after train_step", got, expected["weights"],
                 "one step is: optimizer.zero_grad(), loss = denoising_loss(model, x, generator=generator), "
                 "loss.backward(), optimizer.step()", atol=1e-5, rtol=1e-4)
    return (f"denoising_loss and train_step: same loss ({returned:.4f}) and same weights after one Adam step "
            "as the reference")


def _training_step_devices(denoising_loss: Callable, train_step: Callable, *, inputs: dict) -> str | None:
    model = tiny_model(inputs["model_seed"]).to(DEVICE)
    optimizer = torch.optim.Adam(model.parameters(), lr=inputs["learning_rate"])
    return (device_run("denoising_loss", denoising_loss, model, inputs["x"].clone(), sigma=inputs["sigma"],
                       generator=generator(inputs["loss_seed"]), where="x.device")
            or device_run("train_step", train_step, model, optimizer, inputs["x"].clone(),
                          generator=generator(inputs["step_seed"]), where="x.device"))


@check(reference=REFERENCE.training_step_case, probe=_training_step_probe, judge=_training_step_judge,
       devices=_training_step_devices)
def check_training_step(denoising_loss, train_step, batch_size: int = 8, size: int = 12, sigma: float = 0.5,
                        seed: int = 0):
    """Check ``denoising_loss(model, x, sigma, generator)`` and ``train_step(model, optimizer, x, generator)``.

    On a tiny seeded model, the loss must equal the reference's on the same generator; one ``train_step``
    must return that loss as a float and leave the weights where one Adam step of the reference leaves them
    (starting from stale gradients, which ``optimizer.zero_grad()`` must clear).
    """


LOOP_LEARNING_RATE = 3e-2


def loop_model(seed: int) -> nn.Module:
    """The seeded model the loop check trains: given code, with a BatchNorm so that train and eval mode differ.

    The convolution before the BatchNorm has no bias: the BatchNorm cancels it, so its gradient is rounding noise,
    which Adam would blow up into steps that differ with the number of CPU threads (and move the eval-mode output).
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.GELU(),
                             nn.Conv2d(4, 1, 3, padding=1))


class _CallRecorder(nn.Module):
    """Wraps the loop's model and records every call: (train mode, autograd on, batch size, weights' version), and
    the loss of each digit of the batch.

    The check's digits are blank or full squares (pixels all 0 or all 1), so the clean image of a noisy input z is
    read off z's mean; each digit's loss is the mean of ``(model(z) - x)^2`` over its pixels. The weights' version
    counts the in-place updates of the parameters: it changes with every optimizer step, whichever the optimizer.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.calls: list[tuple[int, int, int, int]] = []
        self.losses: list[torch.Tensor] = []

    def version(self) -> int:
        return sum(p._version for p in self.model.parameters())

    def forward(self, z):
        self.calls.append((int(self.training), int(torch.is_grad_enabled()), int(z.shape[0]), self.version()))
        out = self.model(z)
        with torch.no_grad():
            x = (z.flatten(1).mean(1) > 0.5).to(z.dtype).view(-1, 1, 1, 1)
            self.losses.append((out - x).square().flatten(1).mean(1).double().cpu())
        return out


class _StepRecorder:
    """Counts the steps of the optimizer the loop was given and, before each, whether every gradient is the one the
    latest backward pass computed (and not a sum with earlier steps' gradients left in ``.grad``)."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer):
        self.parameters = list(model.parameters())
        self.latest: dict[int, torch.Tensor] = {}
        self.fresh: list[bool] = []
        for index, p in enumerate(self.parameters):
            p.register_hook(lambda grad, index=index: self.latest.__setitem__(index, grad.detach().clone()))
        optimizer.register_step_pre_hook(lambda *_: self.fresh.append(self._gradients_fresh()))
        optimizer.register_step_post_hook(lambda *_: self.latest.clear())

    def _gradients_fresh(self) -> bool:
        return all(p.grad is None or (index in self.latest and torch.allclose(p.grad, self.latest[index]))
                   for index, p in enumerate(self.parameters))


class _RecordedImages(DeviceImages):
    """The training digits; records the ``shuffle`` argument of every call of :meth:`batches`."""

    def __init__(self, *args):
        super().__init__(*args)
        self.shuffled: list[bool] = []

    def batches(self, batch_size, generator=None, shuffle=True, drop_last=True):
        self.shuffled.append(bool(shuffle))
        return super().batches(batch_size, generator, shuffle, drop_last)


def _float_list(value):
    """A returned list of losses as a float64 tensor, or a description of what it is instead."""
    if isinstance(value, (list, tuple)):
        if all(isinstance(v, (float, int)) and not isinstance(v, bool) for v in value):
            return torch.tensor([float(v) for v in value], dtype=torch.float64)
        kinds = sorted({type(v).__name__ for v in value})
        return {"not_a_tensor": f"{type(value).__name__} of {', '.join(kinds)}"}
    return {"not_a_tensor": type(value).__name__}


def _callback_record(args: tuple, kwargs: dict, model: _CallRecorder) -> dict:
    """What one call of on_epoch_end received (the epoch, whether the model is the loop's, the lengths of the lists
    so far), and how many calls of the model and which weights' version came before it."""
    def length(value):
        return len(value) if isinstance(value, (list, tuple)) else -1
    args = list(args) + [None] * max(0, 4 - len(args))
    return {"epoch": args[0] if isinstance(args[0], int) else -1, "model": args[1] is model,
            "train": length(args[2]), "val": length(args[3]), "keywords": sorted(kwargs),
            "calls": len(model.calls), "version": model.version()}


def run_loop(train_denoiser: Callable, inputs: dict) -> dict:
    """Run a training loop on the check's digits with a recorded model and optimizer: what it returned, every call
    of the model with each digit's loss, the optimizer's steps, the callbacks and the shuffle arguments."""
    train_data = _RecordedImages(inputs["train_images"], inputs["train_labels"], "unit")
    val_data = DeviceImages(inputs["val_images"], inputs["val_labels"], "unit")
    model = _CallRecorder(loop_model(inputs["model_seed"]))
    optimizer = torch.optim.Adam(model.parameters(), lr=inputs["learning_rate"])
    steps = _StepRecorder(model, optimizer)
    callbacks = []

    def on_epoch_end(*args, **kwargs):
        callbacks.append(_callback_record(args, kwargs, model))

    returned = run_student("train_denoiser", train_denoiser, model, optimizer, train_data, val_data,
                           inputs["epochs"], inputs["batch_size"], generator(inputs["generator_seed"]),
                           on_epoch_end=on_epoch_end)
    if not (isinstance(returned, (tuple, list)) and len(returned) == 2):
        raise CheckFailed(f"train_denoiser should return two lists, (train_losses, val_losses), got "
                          f"{type(returned).__name__}")
    return {"train": _float_list(returned[0]), "val": _float_list(returned[1]),
            "calls": torch.tensor(model.calls, dtype=torch.int64).view(-1, 4),
            "losses": [loss for loss in model.losses], "callbacks": callbacks,
            "fresh": torch.tensor(steps.fresh, dtype=torch.bool), "shuffled": train_data.shuffled}


def _train_loop_probe(train_denoiser: Callable, *, inputs: dict) -> dict:
    return run_loop(train_denoiser, inputs)


def _train_loop_devices(train_denoiser: Callable, *, inputs: dict) -> str | None:
    """The loop once more with its digits and the model on the device, to its end (read-back losses are zeros):
    a generator it makes on the CPU, then draws with on the data's device, is named."""
    train_data, val_data = (DeviceImages(inputs[f"{part}_images"].to(DEVICE), inputs[f"{part}_labels"].to(DEVICE),
                                         "unit") for part in ("train", "val"))
    model = loop_model(inputs["model_seed"]).to(DEVICE)
    optimizer = torch.optim.Adam(model.parameters(), lr=inputs["learning_rate"])
    return device_run("train_denoiser", train_denoiser, model, optimizer, train_data, val_data, inputs["epochs"],
                      inputs["batch_size"], generator(inputs["generator_seed"]), on_epoch_end=lambda *_: None,
                      holder="the data", where="val_data.device")


def _losses(name: str, value, count: int, per: str) -> torch.Tensor:
    if isinstance(value, dict) and isinstance(value.get("not_a_tensor"), str):
        raise CheckFailed(f"{name} should be a list of Python floats, got {value['not_a_tensor']}: append loss.item() "
                          "(what train_step returns), not the loss tensor")
    got = expect_tensor(name, value, (len(value),))
    if len(got) != count:
        raise CheckFailed(f"{name} has {len(got)} entries, expected {count}: one per {per}")
    return got


def _epochs(calls: torch.Tensor, callbacks: list, epochs: int) -> list[tuple[list[int], list[int]]]:
    """Each epoch's training calls and evaluation calls (indices into ``calls``), after checking that on_epoch_end
    came once per epoch. The evaluation is the calls made with the weights the epoch ended with, after its last
    optimizer step; the training is the calls before."""
    seen = [(c["epoch"], c["model"], c["val"]) for c in callbacks]
    if seen != [(epoch, True, epoch) for epoch in range(1, epochs + 1)]:
        raise CheckFailed(f"on_epoch_end was called {len(seen)} times, expected once per epoch: after each epoch's "
                          "validation, if on_epoch_end is not None, call on_epoch_end(epoch, model, train_losses, "
                          "val_losses) with epoch counting from 1 and the lists so far")
    segments, start = [], 0
    for callback in callbacks:
        end = int(callback["calls"])
        indices = range(start, end)
        evaluation = [i for i in indices if int(calls[i, 3]) == int(callback["version"])]
        segments.append(([i for i in indices if i not in evaluation], evaluation))
        start = end
    return segments


def _judge_training_calls(epoch: int, calls: torch.Tensor, train_size: int, batch_size: int) -> None:
    if len(calls) == 0:
        raise CheckFailed(f"in epoch {epoch} the weights never changed: take one train_step (zero_grad, backward, "
                          "step of the optimizer you were given) for every training batch")
    if not bool(calls[:, 0].all()):
        raise CheckFailed(f"in epoch {epoch} the model trained in eval mode: call model.train() at the start of "
                          "every epoch (the validation switched it to eval mode)")
    if not bool(calls[:, 1].all()):
        raise CheckFailed(f"in epoch {epoch} a training step ran without gradients: keep torch.no_grad() for the "
                          "validation only")
    sizes = calls[:, 2].tolist()
    if max(sizes) > batch_size or not train_size - train_size % batch_size <= sum(sizes) <= train_size:
        raise CheckFailed(f"in epoch {epoch} the training batches held {sizes} digits: one pass over the "
                          f"{train_size} training digits in batches of {batch_size}")


def _judge_validation_calls(epoch: int, calls: torch.Tensor, val_size: int) -> None:
    if len(calls) == 0:
        raise CheckFailed(f"no held-out digit went through the model after epoch {epoch}: validate on val_data "
                          "after every epoch, before calling on_epoch_end")
    if bool(calls[:, 0].any()):
        raise CheckFailed(f"after epoch {epoch} the validation ran in train mode: call model.eval() before it, so "
                          "that BatchNorm uses its running statistics (and does not update them)")
    if bool(calls[:, 1].any()):
        raise CheckFailed(f"after epoch {epoch} the validation tracked gradients: wrap it in torch.no_grad()")
    sizes = calls[:, 2].tolist()
    if sum(sizes) != val_size:
        missing = " (the last, smaller batch is missing: drop_last=False keeps it)" if sum(sizes) < val_size else ""
        raise CheckFailed(f"after epoch {epoch} the validation batches held {sizes} digits, {sum(sizes)} in all: "
                          f"every one of the {val_size} held-out digits, once{missing}")


def _judge_steps(outputs: dict, training_calls: int) -> None:
    fresh = outputs["fresh"]
    if len(fresh) != training_calls:
        raise CheckFailed(f"the optimizer passed to train_denoiser took {len(fresh)} steps for {training_calls} "
                          "training batches: take every step with it, in every epoch (a new optimizer starts "
                          "Adam's running averages from zero, and a resumed run would lose them)")
    if not bool(fresh.all()):
        raise CheckFailed("the gradients of earlier steps piled up: call optimizer.zero_grad() before every "
                          "loss.backward() (your train_step does)")
    shuffled = [bool(flag) for flag in outputs["shuffled"]]
    if shuffled and not any(shuffled):
        raise CheckFailed("the training batches come in the same order every epoch: draw them shuffled, "
                          "train_data.batches(batch_size, generator)")


def _validation_mistakes(losses: list[torch.Tensor]) -> list[tuple[torch.Tensor, str]]:
    """What the usual slips of averaging would give from each validation batch's per-digit losses."""
    means = torch.stack([batch.mean() for batch in losses])
    sizes = torch.tensor([len(batch) for batch in losses], dtype=torch.float64)
    return [(means.mean(), "the last batch of held-out digits is smaller: weight each batch's loss by its number "
                           "of digits, so that every digit counts once"),
            (means[-1], "that is the last batch's loss: the validation loss is the mean over all held-out digits"),
            ((means * sizes).sum(), "divide the weighted sum by the number of held-out digits, len(val_data)")]


def _train_loop_judge(case: dict, inputs: dict, outputs: dict, expected: dict) -> str:
    epochs, batch_size = case["epochs"], case["batch_size"]
    train = _losses("train_losses", outputs["train"], len(outputs["train"]), "optimizer step")
    val = _losses("val_losses", outputs["val"], len(outputs["val"]), "epoch")
    calls, losses = outputs["calls"], outputs["losses"]
    segments = _epochs(calls, outputs["callbacks"], epochs)
    for epoch, (training, evaluation) in enumerate(segments, start=1):
        _judge_training_calls(epoch, calls[training], case["train_size"], batch_size)
        _judge_validation_calls(epoch, calls[evaluation], case["val_size"])
    steps = [i for training, _ in segments for i in training]
    _judge_steps(outputs, len(steps))
    _losses("train_losses", train, len(steps), f"optimizer step ({len(steps)} over {epochs} epochs)")
    expect_close("train_losses", train, torch.stack([losses[i].mean() for i in steps]),
                 "keep the loss of every training step, in order: what train_step returns", atol=1e-6, rtol=1e-4)
    _losses("val_losses", val, epochs, "epoch")
    for epoch, (_, evaluation) in enumerate(segments, start=1):
        batches = [losses[i] for i in evaluation]
        compare(f"val_losses[{epoch - 1}]", val[epoch - 1], torch.cat(batches).mean(), _validation_mistakes(batches),
                "the validation loss is denoising_loss averaged over every held-out digit", atol=1e-6, rtol=1e-4)
    untrained = float(expected["untrained"])
    if not float(val[-1]) < 0.9 * untrained:
        raise CheckFailed(f"after {epochs} epochs the validation loss is {float(val[-1]):.4f}, and was {untrained:.4f} "
                          "before training: a correct loop lowers it clearly on these toy digits; each step should "
                          "minimise denoising_loss (backward, then step)")
    return (f"train_denoiser: {epochs} epochs of {len(steps) // epochs} steps in train mode, one optimizer, a "
            f"validation over every held-out digit in eval mode after each (validation loss {untrained:.4f} "
            f"untrained, {float(val[0]):.4f} after epoch 1, {float(val[-1]):.4f} after epoch {epochs})")


@check(reference=REFERENCE.train_loop_case, probe=_train_loop_probe, judge=_train_loop_judge,
       devices=_train_loop_devices)
def check_train_denoiser(train_denoiser, train_size: int = 20, val_size: int = 7, batch_size: int = 6,
                         epochs: int = 2, size: int = 12, seed: int = 0):
    """Check ``train_denoiser(model, optimizer, train_data, val_data, epochs, batch_size, generator,
    on_epoch_end)`` by what makes a training loop right, whatever its order of random draws.

    It trains a tiny seeded model with a BatchNorm, with an Adam optimizer made here, on ``train_size`` toy digits
    (blank or full ``size`` x ``size`` squares) and validates on ``val_size`` others. Every training batch must run
    in train mode with gradients and at most ``batch_size`` digits, one pass per epoch, each step taken by the given
    optimizer on fresh gradients; after every epoch, every held-out digit once in eval mode without gradients, then
    ``on_epoch_end``. The returned losses must be the steps' losses and, per epoch, the mean over the held-out
    digits; and the validation loss must fall below the untrained model's.
    """
