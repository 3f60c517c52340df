"""course_lib.models: the three UNets of SYLLABUS.md stages 2-4, checked against the text of the course.

BatchNorm note: every BatchNorm of the UNets normalises a map of at least 7x7 per channel, so a batch of one
image works in train mode too (the batch statistics are over 49+ values); both modes are tested at N = 1.
Gradients are checked in eval mode: in train mode BatchNorm subtracts the batch mean, so the bias of the
convolution before it gets an exactly-zero gradient by design.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from course_lib.models import ClassConditionalUNet, TimeConditionalUNet, UnconditionalUNet

pytestmark = pytest.mark.usefixtures("single_thread")

D = 8


def make(kind: str, num_hiddens: int = D) -> nn.Module:
    torch.manual_seed(0)
    return {"unconditional": UnconditionalUNet, "time": TimeConditionalUNet,
            "class": ClassConditionalUNet}[kind](num_hiddens=num_hiddens)


def inputs(kind: str, batch_size: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Arguments of ``forward``: images (N, 1, 28, 28), t / T (N,), one-hot classes (N, 10)."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(batch_size, 1, 28, 28, generator=generator)
    t = torch.rand(batch_size, generator=generator)
    c = torch.eye(10)[torch.arange(batch_size) % 10]
    return {"unconditional": (x,), "time": (x, t), "class": (x, t, c)}[kind]


KINDS = ["unconditional", "time", "class"]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("batch_size", [1, 7])
@pytest.mark.parametrize("train_mode", [True, False])
def test_output_shape(kind, batch_size, train_mode):
    model = make(kind).train(train_mode)
    out = model(*inputs(kind, batch_size))
    assert out.shape == (batch_size, 1, 28, 28) and out.dtype == torch.float32
    assert bool(torch.isfinite(out).all())


@pytest.mark.parametrize("kind", KINDS)
def test_eval_mode_treats_each_example_on_its_own(kind):
    """In eval mode an image's output does not depend on the rest of the batch."""
    model = make(kind).eval()
    batch = inputs(kind, 7)
    with torch.no_grad():
        together = model(*batch)
        alone = model(*(a[3:4] for a in batch))
    torch.testing.assert_close(together[3:4], alone, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_gradients_reach_every_parameter(kind):
    model = make(kind).eval()
    model(*inputs(kind, 10)).square().mean().backward()
    missing = [name for name, p in model.named_parameters() if p.grad is None or not bool(p.grad.abs().sum() > 0)]
    assert not missing, f"no gradient reaches {missing}"


# In train mode a condition shared by the whole batch is a per-channel constant that the next BatchNorm
# removes (it subtracts the batch mean and divides by the batch spread), so the condition can only matter
# through its variation across the batch; in eval mode, with fresh running statistics, the signal of an
# untrained UNet shrinks layer by layer. Both tests therefore vary the condition of one example in a train-mode batch.

@pytest.mark.parametrize("kind", ["time", "class"])
def test_time_changes_the_output(kind):
    model = make(kind).train()
    x, t, *rest = inputs(kind, 4)
    with torch.no_grad():
        early = model(x, torch.tensor([0.1, 0.5, 0.5, 0.5]), *rest)
        late = model(x, torch.tensor([0.9, 0.5, 0.5, 0.5]), *rest)
    assert (early[0] - late[0]).abs().max().item() > 1e-2


def test_class_changes_the_output_and_zeros_mean_no_class():
    model = make("class").train()
    x, t, _ = inputs("class", 4)
    rest = torch.eye(10)[[1, 2, 4]]
    with torch.no_grad():
        outputs = [model(x, t, torch.cat([first, rest]))
                   for first in (torch.eye(10)[[3]], torch.eye(10)[[5]], torch.zeros(1, 10))]
    for i in range(3):
        for j in range(i + 1, 3):
            assert (outputs[i][0] - outputs[j][0]).abs().max().item() > 1e-2


# ----------------------------------------------------------------------------- architecture (SYLLABUS.md stage 2)

def record_shapes(model: nn.Module, names: list[str]) -> dict[str, tuple]:
    """Forward hooks on the named submodules: their input and output shapes (inputs from the first argument)."""
    shapes = {}
    modules = dict(model.named_modules())
    for name in names:
        modules[name].register_forward_hook(
            lambda module, args, output, name=name: shapes.__setitem__(name, (tuple(args[0].shape),
                                                                             tuple(output.shape))))
    return shapes


@pytest.mark.parametrize("kind", KINDS)
def test_feature_maps_have_the_courses_channels_and_sizes(kind):
    """ConvBlock(1->D)[28], DownBlock(D->D)[14], DownBlock(D->2D)[7], Flatten[1], Unflatten[7],
    UpBlock(4D->D)[14], UpBlock(2D->D)[28], ConvBlock(2D->D), Conv2d(D->1)."""
    model = make(kind).eval()
    names = ["body.conv_in", "body.down1", "body.down2", "body.flatten", "body.unflatten", "body.up1", "body.up2",
             "body.conv_out", "body.head"]
    shapes = record_shapes(model, names)
    with torch.no_grad():
        model(*inputs(kind, 2))
    n = 2
    assert shapes == {
        "body.conv_in": ((n, 1, 28, 28), (n, D, 28, 28)),
        "body.down1": ((n, D, 28, 28), (n, D, 14, 14)),
        "body.down2": ((n, D, 14, 14), (n, 2 * D, 7, 7)),
        "body.flatten": ((n, 2 * D, 7, 7), (n, 2 * D, 1, 1)),
        "body.unflatten": ((n, 2 * D, 1, 1), (n, 2 * D, 7, 7)),
        "body.up1": ((n, 4 * D, 7, 7), (n, D, 14, 14)),
        "body.up2": ((n, 2 * D, 14, 14), (n, D, 28, 28)),
        "body.conv_out": ((n, 2 * D, 28, 28), (n, D, 28, 28)),
        "body.head": ((n, D, 28, 28), (n, 1, 28, 28)),
    }


def layer_signature(module: nn.Module) -> list:
    """Each layer of an operation as (type, kernel, stride, padding) or its type name."""
    return [(type(m).__name__, m.kernel_size, m.stride, m.padding) if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))
            else type(m).__name__ for m in module]


def test_operations_are_the_courses():
    """Conv 3x3/1/1, DownConv 3x3/2/1, UpConv transposed 4x4/2/1, Unflatten transposed 7x7/7/0, each with
    BatchNorm and GELU; Flatten = AvgPool2d(7) + GELU; the head a plain 3x3 convolution."""
    body = make("unconditional").body
    conv = ("Conv2d", (3, 3), (1, 1), (1, 1))
    assert [layer_signature(op) for op in body.conv_in] == [[conv, "BatchNorm2d", "GELU"]] * 2
    down, block = body.down2
    assert layer_signature(down) == [("Conv2d", (3, 3), (2, 2), (1, 1)), "BatchNorm2d", "GELU"]
    assert [layer_signature(op) for op in block] == [[conv, "BatchNorm2d", "GELU"]] * 2
    up, _ = body.up1
    assert layer_signature(up) == [("ConvTranspose2d", (4, 4), (2, 2), (1, 1)), "BatchNorm2d", "GELU"]
    assert layer_signature(body.unflatten) == [("ConvTranspose2d", (7, 7), (7, 7), (0, 0)), "BatchNorm2d", "GELU"]
    pool, gelu = body.flatten
    assert isinstance(pool, nn.AvgPool2d) and pool.kernel_size == 7 and isinstance(gelu, nn.GELU)
    assert (body.head.kernel_size, body.head.padding, body.head.in_channels, body.head.out_channels) == \
        ((3, 3), (1, 1), D, 1)


def test_fc_blocks_embed_time_and_class_with_the_courses_widths():
    """t1 = FCBlock(1 -> 2D), t2 = FCBlock(1 -> D), c1 = FCBlock(10 -> 2D), c2 = FCBlock(10 -> D),
    each Linear(F_in, F_out) + GELU + Linear(F_out, F_out)."""
    model = make("class")
    for name, (f_in, f_out) in {"t1": (1, 2 * D), "t2": (1, D), "c1": (10, 2 * D), "c2": (10, D)}.items():
        first, gelu, second = getattr(model, name)
        assert (first.in_features, first.out_features, second.in_features, second.out_features) == \
            (f_in, f_out, f_out, f_out), name
        assert isinstance(gelu, nn.GELU)


def test_class_conditioning_scales_and_time_shifts():
    """unflatten <- c1 * unflatten + t1 and up1 <- c2 * up1 + t2, checked on the recorded feature maps: the
    first 2D channels entering up1 are the modulated unflatten output, up2's first D channels the modulated up1."""
    model = make("class").eval()
    recorded = {}
    for name in ("body.unflatten", "body.up1", "t1", "t2", "c1", "c2"):
        dict(model.named_modules())[name].register_forward_hook(
            lambda module, args, output, name=name: recorded.__setitem__(name, output))
    entering = {}
    for name in ("body.up1", "body.up2"):
        dict(model.named_modules())[name].register_forward_pre_hook(
            lambda module, args, name=name: entering.__setitem__(name, args[0]))
    with torch.no_grad():
        model(*inputs("class", 4))
    as_map = lambda v: v[:, :, None, None]  # noqa: E731
    torch.testing.assert_close(entering["body.up1"][:, :2 * D],
                               as_map(recorded["c1"]) * recorded["body.unflatten"] + as_map(recorded["t1"]))
    torch.testing.assert_close(entering["body.up2"][:, :D],
                               as_map(recorded["c2"]) * recorded["body.up1"] + as_map(recorded["t2"]))


def test_time_conditioning_shifts_only():
    model = make("time").eval()
    recorded, entering = {}, {}
    for name in ("body.unflatten", "t1"):
        dict(model.named_modules())[name].register_forward_hook(
            lambda module, args, output, name=name: recorded.__setitem__(name, output))
    model.body.up1.register_forward_pre_hook(lambda module, args: entering.__setitem__("up1", args[0]))
    with torch.no_grad():
        model(*inputs("time", 3))
    torch.testing.assert_close(entering["up1"][:, :2 * D],
                               recorded["body.unflatten"] + recorded["t1"][:, :, None, None])


def test_default_widths_follow_the_course():
    """D = 128 for the denoiser, 64 for the diffusion UNets."""
    assert UnconditionalUNet().body.num_hiddens == 128
    assert TimeConditionalUNet().body.num_hiddens == 64
    assert ClassConditionalUNet().body.num_hiddens == 64 and ClassConditionalUNet().num_classes == 10


# ----------------------------------------------------------------------------- errors name the argument

GOOD = {"x": torch.zeros(2, 1, 28, 28), "t": torch.zeros(2), "c": torch.eye(10)[:2]}
BAD_INPUTS = [
    ("x", torch.zeros(2, 3, 28, 28), ValueError),
    ("x", torch.zeros(2, 1, 32, 32), ValueError),
    ("x", torch.zeros(1, 28, 28), ValueError),
    ("x", torch.zeros(0, 1, 28, 28), ValueError),
    ("x", torch.zeros(2, 1, 28, 28, dtype=torch.uint8), TypeError),
    ("x", [[0.0]], TypeError),
    ("t", torch.zeros(2, 1), ValueError),
    ("t", torch.zeros(3), ValueError),
    ("t", torch.zeros(2, dtype=torch.long), TypeError),
    ("c", torch.zeros(2, 9), ValueError),
    ("c", torch.zeros(2), ValueError),
    ("c", torch.zeros(2, 10, dtype=torch.long), TypeError),
]


ARGUMENTS = {"unconditional": ["x"], "time": ["x", "t"], "class": ["x", "t", "c"]}


@pytest.mark.parametrize("kind, argument, value, error", [
    pytest.param(kind, argument, value, error, id=f"{kind}-{argument}-{i}")
    for kind in KINDS for i, (argument, value, error) in enumerate(BAD_INPUTS) if argument in ARGUMENTS[kind]])
def test_bad_inputs_raise_errors_naming_the_argument(kind, argument, value, error):
    arguments = [value if name == argument else GOOD[name] for name in ARGUMENTS[kind]]
    with pytest.raises(error, match=f"`{argument}`"):
        make(kind, 4)(*arguments)


@pytest.mark.parametrize("model_class", [UnconditionalUNet, TimeConditionalUNet, ClassConditionalUNet])
def test_bad_widths_raise_errors_naming_the_argument(model_class):
    with pytest.raises(ValueError, match="`num_hiddens`"):
        model_class(num_hiddens=0)
    with pytest.raises(ValueError, match="`in_channels`"):
        model_class(in_channels=0)
