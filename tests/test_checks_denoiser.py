"""The checks of stage 2 (course_lib.stages.denoiser.checks): the reference answers pass, known mistakes fail with the
hint that names them, and the probes run without the answers (as in a grading kernel).

Each "student" below is a small, deliberately wrong variant of the notebook's solutions. The catalogue of mistakes
and the messages that name them is ``test_mistake_catalogue.py``, which uses these students too; here are the
checks' other behaviours.
"""

from __future__ import annotations

import io

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import course_lib.models
import course_lib.stages
from course_lib.checks import CheckFailed
from course_lib.stages.denoiser import answers as answer
from course_lib.stages.denoiser import checks as denoiser
from course_lib.checks.protocol import verdict
from course_lib.data import DeviceImages
from check_helpers import fails_with, leave_out_answers

OPERATIONS = (answer.Conv, answer.DownConv, answer.UpConv, answer.Flatten, answer.Unflatten)
BLOCKS = (answer.ConvBlock, answer.DownBlock, answer.UpBlock)


pytestmark = pytest.mark.usefixtures("single_thread")


def operations(**replaced) -> tuple:
    """The reference operations with some replaced by a student's, by name."""
    return tuple(replaced.get(cls.__name__, cls) for cls in OPERATIONS)


def blocks(**replaced) -> tuple:
    return tuple(replaced.get(cls.__name__, cls) for cls in BLOCKS)


def conv_layer(conv=None, norm=True, activation=nn.GELU):
    """A student's operation class: ``conv(in, out)``, then BatchNorm2d (unless ``norm`` is False), then
    ``activation`` (unless None)."""
    class Operation(nn.Sequential):
        def __init__(self, in_channels, out_channels):
            layers = [conv(in_channels, out_channels)]
            if norm:
                layers.append(nn.BatchNorm2d(out_channels))
            if activation is not None:
                layers.append(activation())
            super().__init__(*layers)
    return Operation


# ----------------------------------------------------------------------------------------------- operations


def test_operations_check_passes_the_reference():
    denoiser.check_operations(*OPERATIONS)
    denoiser.check_operations(*OPERATIONS, in_channels=6, out_channels=2, size=4, batch_size=3, seed=17)


def test_operations_check_names_the_shape_and_the_mistaken_operation():
    message = fails_with(denoiser.check_operations, operations(DownConv=conv_layer(
        lambda i, o: nn.Conv2d(i, o, 3, padding=1))), "stride=2")
    assert message.startswith("DownConv(3, 5) maps (4, 3, 8, 8) to (4, 5, 8, 8), expected (4, 5, 4, 4)"), message
    message = fails_with(denoiser.check_operations, operations(Conv=conv_layer(
        lambda i, o: nn.Conv2d(i, o, 3, padding=1), activation=None)), "GELU", in_channels=1, out_channels=4,
        size=14, batch_size=2, seed=5)
    assert message.startswith("your Conv(1, 4)(x) in train mode"), message


def test_operations_check_reports_the_first_failing_operation_first():
    def crash(*args):
        raise RuntimeError("boom")
    fails_with(denoiser.check_operations, operations(Conv=conv_layer(lambda i, o: nn.Conv2d(i, o, 3)),
                                                     DownConv=crash), "padding=1 keeps H and W")
    fails_with(denoiser.check_operations, operations(DownConv=crash), "`DownConv(3, 5)` raised RuntimeError: boom")


def test_operations_check_feedback_for_unwritten_or_non_module_operations():
    def unwritten(*args):
        raise NotImplementedError()
    fails_with(denoiser.check_operations, operations(Conv=unwritten), "`Conv(3, 5)` is not implemented yet")
    fails_with(denoiser.check_operations, operations(Flatten=lambda: "pool"), "Flatten() should be an nn.Module")
    fails_with(denoiser.check_operations, operations(Flatten=lambda: lambda x: x.mean()),
               "Flatten() should be an nn.Module, got function")

    class ListOut(nn.Module):
        def __init__(self, channels):
            super().__init__()

        def forward(self, x):
            return [x]
    fails_with(denoiser.check_operations, operations(Unflatten=ListOut), "should be a torch.Tensor, got list")


# ----------------------------------------------------------------------------------------------- blocks


def test_blocks_check_passes_the_reference():
    denoiser.check_blocks(*BLOCKS)
    denoiser.check_blocks(*BLOCKS, in_channels=4, out_channels=4, size=6, batch_size=5, seed=12)


# ----------------------------------------------------------------------------------------------- the UNet


class StudentUNet(nn.Module):
    """The notebook's UnconditionalUNet; ``mistake`` switches on one error."""

    def __init__(self, in_channels=1, num_hiddens=128, mistake=None):
        super().__init__()
        d = num_hiddens
        self.mistake = mistake
        self.conv_in = answer.ConvBlock(in_channels, d)
        self.down1 = answer.DownBlock(d, d)
        self.down2 = answer.DownBlock(d, 2 * d)
        self.flatten = answer.Flatten()
        self.unflatten = answer.Unflatten(2 * d)
        self.up1 = answer.UpBlock(2 * d if mistake == "up1 channels" else 4 * d, d)
        self.up2 = answer.UpBlock(2 * d, d)
        self.conv_out = answer.ConvBlock(2 * d, d)
        self.head = nn.Conv2d(d, in_channels, 1) if mistake == "head kernel" else nn.Conv2d(d, in_channels, 3,
                                                                                             padding=1)
        if mistake == "unused":
            self.extra = nn.Conv2d(d, d, 1)

    def forward(self, x):
        first = self.conv_in(x)
        skip14 = self.down1(first)
        skip7 = self.down2(skip14)
        h = self.unflatten(self.flatten(skip7))
        if self.mistake == "cpu zeros":
            h = h + torch.zeros(h.shape)  # made without device=: on the CPU whatever the model's device
        h = self.up1(torch.cat([skip7, h] if self.mistake == "skip order" else [h, skip7], dim=1))
        h = self.up2(torch.cat([h, skip14], dim=1))
        h = self.conv_out(torch.cat([h, first], dim=1))
        out = self.head(h)
        return out.detach() if self.mistake == "detached" else out


def unet(mistake=None):
    return lambda in_channels=1, num_hiddens=128: StudentUNet(in_channels, num_hiddens, mistake)


def test_unet_check_passes_the_reference_and_a_student():
    denoiser.check_unet(answer.UnconditionalUNet)
    denoiser.check_unet(answer.UnconditionalUNet, num_hiddens=4, batch_size=2, in_channels=2, seed=3)
    denoiser.check_unet(unet(), num_hiddens=4, batch_size=2)


def test_unet_check_names_the_output_and_the_mode():
    message = fails_with(denoiser.check_unet, (unet("skip order"),), "same layers", num_hiddens=4)
    assert message.startswith("your output in train mode"), message


# ----------------------------------------------------------------------------------------------- loss and step


def noisy(x, sigma, generator):
    return x + sigma * torch.randn(x.shape, generator=generator, device=x.device)


def loss_summed(model, x, sigma=0.5, generator=None):
    return F.mse_loss(model(noisy(x, sigma, generator)), x, reduction="sum")


def test_training_step_check_passes_the_reference():
    denoiser.check_training_step(answer.denoising_loss, answer.train_step)
    denoiser.check_training_step(answer.denoising_loss, answer.train_step, batch_size=5, size=28, sigma=0.3, seed=9)


def test_training_step_check_judges_the_loss_before_a_crashing_step():
    def crash(model, optimizer, x, generator=None):
        raise ValueError("no step")
    fails_with(denoiser.check_training_step, (loss_summed, crash), "not the sum")
    fails_with(denoiser.check_training_step, (answer.denoising_loss, crash), "`train_step` raised ValueError")


# ----------------------------------------------------------------------------------------------- the training loop


def student_loop(global_shuffle=False, no_shuffle=False, zero_grad=True, eval_mode=True, no_grad=True,
                 train_mode=True, train_drop_last=True, val_drop_last=False, returns="floats", per_epoch=False,
                 callback=True, val_batch=None, val_noise="own", new_optimizer=False, average="weighted",
                 ascend=False):
    """The notebook's train_denoiser written out by a student; each flag switches one variation or mistake on."""
    def train_denoiser(model, optimizer, train_data, val_data, epochs, batch_size, generator, on_epoch_end=None):
        train_losses, val_losses = [], []
        for epoch in range(1, epochs + 1):
            if new_optimizer:
                optimizer = torch.optim.Adam(model.parameters(), lr=optimizer.param_groups[0]["lr"])
            if train_mode or epoch == 1:
                model.train()
            epoch_losses = []
            for x, _ in train_data.batches(batch_size, None if global_shuffle else generator,
                                           shuffle=not no_shuffle, drop_last=train_drop_last):
                if zero_grad:
                    optimizer.zero_grad()
                loss = answer.denoising_loss(model, x, generator=generator)
                (-loss if ascend else loss).backward()
                optimizer.step()
                epoch_losses.append(loss if returns == "tensors" else loss.item())
            if per_epoch:
                train_losses.append(sum(epoch_losses) / len(epoch_losses))
            else:
                train_losses.extend(epoch_losses)
            if eval_mode:
                model.eval()
            val_generator = {"own": torch.Generator(device=val_data.device).manual_seed(epoch),
                             "cpu": torch.Generator().manual_seed(epoch),  # wrong on a GPU
                             "training": generator, "global": None}[val_noise]
            batch_losses, sizes = [], []
            with torch.set_grad_enabled(not no_grad):
                for x, _ in val_data.batches(val_batch or batch_size, shuffle=False, drop_last=val_drop_last):
                    batch_losses.append(answer.denoising_loss(model, x, generator=val_generator).item())
                    sizes.append(len(x))
            weighted = sum(loss * size for loss, size in zip(batch_losses, sizes))
            val_losses.append({"unweighted": sum(batch_losses) / len(batch_losses), "last_batch": batch_losses[-1],
                               "summed": weighted}.get(average, weighted / len(val_data)))
            if callback and on_epoch_end is not None:
                on_epoch_end(epoch, model, train_losses, val_losses)
        return train_losses, val_losses
    return train_denoiser


def own_batches_loop(model, optimizer, train_data, val_data, epochs, batch_size, generator, on_epoch_end=None):
    """A correct loop written differently: its own permutation and indexing, the gradients cleared after the forward
    pass, the whole validation in one batch under torch.inference_mode, its noise from the global random state."""
    train_losses, val_losses = [], []
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(len(train_data), generator=generator, device=train_data.device)
        for start in range(0, len(order) - batch_size + 1, batch_size):
            x = train_data.images[order[start:start + batch_size]].float() / 255
            loss = answer.denoising_loss(model, x, generator=generator)
            optimizer.zero_grad(set_to_none=False)
            loss.backward()
            optimizer.step()
            train_losses.append(loss.detach().item())
        model.eval()
        with torch.inference_mode():
            x, _ = val_data.first(len(val_data))
            val_losses.append(answer.denoising_loss(model, x).item())
        if on_epoch_end:
            on_epoch_end(epoch + 1, model, train_losses, val_losses)
    return train_losses, val_losses


def test_train_denoiser_check_passes_the_reference_and_students():
    denoiser.check_train_denoiser(answer.train_denoiser)
    denoiser.check_train_denoiser(answer.train_denoiser, train_size=17, val_size=9, batch_size=4, epochs=3, seed=5)
    denoiser.check_train_denoiser(student_loop(), train_size=12, val_size=5, batch_size=4, seed=2)
    denoiser.check_train_denoiser(own_batches_loop, train_size=17, val_size=9, batch_size=4, epochs=3, seed=5)


def test_resuming_with_the_optimizers_state_continues_the_same_run():
    """The contract the training cell relies on: two epochs in one run equal one epoch, a checkpoint (the weights,
    Adam's state and the generator's), and one more epoch in fresh objects loaded from it; with a fresh Adam instead
    the second epoch differs."""
    inputs, _ = denoiser.check_train_denoiser.check.reference(**denoiser.check_train_denoiser.check.case())
    train = DeviceImages(inputs["train_images"], inputs["train_labels"], "unit")
    val = DeviceImages(inputs["val_images"], inputs["val_labels"], "unit")

    def fresh():
        model = denoiser.loop_model(0)
        return model, torch.optim.Adam(model.parameters(), lr=1e-2)

    model, optimizer = fresh()
    whole, _ = answer.train_denoiser(model, optimizer, train, val, 2, 6, torch.Generator().manual_seed(1))
    model, optimizer = fresh()
    g = torch.Generator().manual_seed(1)
    first, _ = answer.train_denoiser(model, optimizer, train, val, 1, 6, g)
    saved = _round_trip({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "rng": g.get_state()})
    resumed = {}
    for restore_adam in (True, False):
        model, optimizer = fresh()
        model.load_state_dict(saved["model"])
        if restore_adam:
            optimizer.load_state_dict(saved["optimizer"])
        g = torch.Generator()
        g.set_state(saved["rng"])
        resumed[restore_adam], _ = answer.train_denoiser(model, optimizer, train, val, 1, 6, g)
    torch.testing.assert_close(torch.tensor(first + resumed[True]), torch.tensor(whole))
    assert not torch.allclose(torch.tensor(first + resumed[False]), torch.tensor(whole))


def test_train_denoiser_check_feedback_for_an_unwritten_or_odd_loop():
    def unwritten(*args, **kwargs):
        raise NotImplementedError()
    fails_with(denoiser.check_train_denoiser, (unwritten,), "`train_denoiser` is not implemented yet")
    fails_with(denoiser.check_train_denoiser, (lambda *args, **kwargs: [0.5],),
               "should return two lists, (train_losses, val_losses), got list")


# ----------------------------------------------------------------------------------------------- without the answers


def _no_models(name):
    raise course_lib.stages.AnswerNotIncluded(f"no {name} here")


def _round_trip(value):
    buffer = io.BytesIO()
    torch.save(value, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


@pytest.mark.parametrize("check, students, given", [
    (denoiser.check_operations, OPERATIONS, {}),
    (denoiser.check_operations, OPERATIONS, {"in_channels": 1, "out_channels": 4, "size": 14, "batch_size": 2,
                                             "seed": 5}),
    (denoiser.check_blocks, BLOCKS, {}),
    (denoiser.check_blocks, BLOCKS, {"in_channels": 1, "out_channels": 6, "size": 14, "batch_size": 2, "seed": 3}),
    (denoiser.check_unet, (answer.UnconditionalUNet,), {}),
    (denoiser.check_unet, (answer.UnconditionalUNet,), {"num_hiddens": 16, "batch_size": 1, "seed": 8}),
    (denoiser.check_training_step, (answer.denoising_loss, answer.train_step), {}),
    (denoiser.check_training_step, (answer.denoising_loss, answer.train_step),
     {"batch_size": 3, "size": 10, "sigma": 1.0, "seed": 21}),
    (denoiser.check_train_denoiser, (answer.train_denoiser,), {}),
    (denoiser.check_train_denoiser, (answer.train_denoiser,),
     {"train_size": 17, "val_size": 9, "batch_size": 4, "epochs": 3, "seed": 5}),
])
def test_probes_run_without_the_answers(monkeypatch, check, students, given):
    entry = check.check
    case = entry.case(**given)
    inputs, expected = _round_trip(entry.reference(**case))
    leave_out_answers(monkeypatch)
    monkeypatch.setattr(course_lib.models, "__getattr__", _no_models)
    with pytest.raises(course_lib.stages.AnswerNotIncluded):
        entry.reference(**case)
    outputs = _round_trip(entry.run_probe(students, inputs))
    monkeypatch.undo()
    assert "failed" not in outputs, outputs
    assert verdict(entry, case, inputs, outputs, expected)


def test_a_malformed_record_is_a_failure_not_a_crash():
    entry = denoiser.check_blocks.check
    case = entry.case()
    inputs, expected = entry.reference(**case)
    for outputs in ({"modules": ["forged"] * 3}, {"modules": []}, {"modules": [{"out": "x"}] * 3}):
        with pytest.raises(CheckFailed):
            verdict(entry, case, inputs, outputs, expected)
