"""course_lib.training: every objective learns on real MNIST, a resumed run is the same run (with or without an
EMA), Adam is chosen in one place, a step that cannot be captured falls back to the eager one, and the validation
loss is the loss on the held-out digits, measured the same way every epoch and kept across a resume.

Kept small for a shared CPU: UNets of width 4 or 8, batches of 8 or 16, at most 120 optimizer steps per run.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from course_lib import checkpoints
from course_lib.data import DeviceImages, load_mnist
from course_lib.models import ClassConditionalUNet, TimeConditionalUNet, UnconditionalUNet
from course_lib.noise import DDPMSchedule
from course_lib.stages import stage_loss, value_range
from course_lib.training import VALIDATION_SEED, LossHistory, train, validation_loss

pytestmark = pytest.mark.usefixtures("single_thread")

MODELS = {"denoiser": UnconditionalUNet, "ddpm": TimeConditionalUNet, "cfg": ClassConditionalUNet,
          "flow": TimeConditionalUNet}


@pytest.fixture(scope="module")
def mnist_train(mnist_root):
    return load_mnist(train=True, root=mnist_root)


def every_tenth(dataset, stage: str, count: int) -> DeviceImages:
    """``count`` training digits taken every tenth image, so all classes appear even in a class-sorted file."""
    return DeviceImages(dataset.data[::10][:count, None], dataset.targets[::10][:count], value_range(stage))


def build(stage: str, seed: int = 0, num_hiddens: int = 8):
    torch.manual_seed(seed)
    return MODELS[stage](num_hiddens=num_hiddens)


def random_digits(count: int, seed: int = 0) -> DeviceImages:
    """``count`` random uint8 "digits" with random labels, the same for a given seed."""
    generator = torch.Generator().manual_seed(seed)
    return DeviceImages(torch.randint(0, 256, (count, 1, 28, 28), dtype=torch.uint8, generator=generator),
                        torch.randint(0, 10, (count,), generator=generator))


@pytest.mark.parametrize("stage", list(MODELS))
def test_a_hundred_steps_lower_the_loss_clearly(mnist_train, stage):
    """The mean loss of the last 20 steps is below 60% of the first 20's.

    Measured on this budget: 19-38% over two seeds, for every objective."""
    data = every_tenth(mnist_train, stage, 480)
    losses = train(build(stage), stage_loss(stage, DDPMSchedule(300)), data, epochs=2, batch_size=8,
                   learning_rate=3e-3, seed=1, progress=False)
    assert len(losses) == 120
    assert all(torch.isfinite(torch.tensor(losses)))
    first, last = sum(losses[:20]) / 20, sum(losses[-20:]) / 20
    assert last < 0.6 * first, f"{stage}: mean loss {first:.4f} over the first 20 steps, {last:.4f} over the last 20"


def states_equal(a: dict, b: dict) -> list[str]:
    return [name for name in a if not torch.equal(a[name], b[name])]


@pytest.mark.parametrize("stage", ["cfg", "denoiser"])
def test_resuming_from_a_checkpoint_gives_the_same_run(mnist_train, stage, tmp_path):
    """2 epochs straight == 1 epoch, stop, resume from the folder to 2 epochs: same weights (BatchNorm statistics
    included) and same loss history, bit for bit on the CPU. The class-conditional stage draws the most
    randomness per step (label dropout, timesteps, noise) and decays the learning rate."""
    data = every_tenth(mnist_train, stage, 64)
    loss_fn = stage_loss(stage, DDPMSchedule(50))
    budget = dict(batch_size=16, learning_rate=1e-3, lr_gamma=0.1 ** 0.5, seed=3, progress=False)

    straight = build(stage, num_hiddens=4)
    straight_losses = train(straight, loss_fn, data, epochs=2, **budget)

    folder = tmp_path / "checkpoints"
    first_half = train(build(stage, num_hiddens=4), loss_fn, data, epochs=1, checkpoint_dir=folder, **budget)
    assert [epoch for epoch, _ in checkpoints.list_checkpoints(folder)] == [1]
    torch.manual_seed(12345)  # the resumed run must not depend on the global RNG state nor on the fresh init
    resumed = build(stage, seed=7, num_hiddens=4)
    resumed_losses = train(resumed, loss_fn, data, epochs=2, checkpoint_dir=folder, **budget)

    assert resumed_losses[:len(first_half)] == first_half
    assert resumed_losses == straight_losses
    assert not states_equal(straight.state_dict(), resumed.state_dict())
    assert [epoch for epoch, _ in checkpoints.list_checkpoints(folder)] == [1, 2]
    saved = checkpoints.load_latest(folder)
    assert saved["epoch"] == 2 and saved["losses"] == straight_losses
    assert not states_equal(saved["model"], straight.state_dict())


def test_a_finished_run_resumes_to_nothing_and_callbacks_see_every_epoch(mnist_train, tmp_path):
    data = every_tenth(mnist_train, "ddpm", 32)
    loss_fn = stage_loss("ddpm", DDPMSchedule(50))
    seen = []

    def on_epoch_end(epoch, model, losses):
        seen.append((epoch, len(losses)))
        model.eval()  # train() must put the model back in train mode

    model = build("ddpm", num_hiddens=4)
    losses = train(model, loss_fn, data, epochs=2, batch_size=16, learning_rate=1e-3, progress=False,
                   checkpoint_dir=tmp_path, on_epoch_end=on_epoch_end)
    assert seen == [(1, 2), (2, 4)] and model.training
    weights = {name: value.clone() for name, value in model.state_dict().items()}
    again = train(model, loss_fn, data, epochs=2, batch_size=16, learning_rate=1e-3, progress=False,
                  checkpoint_dir=tmp_path)
    assert again == losses and not states_equal(weights, model.state_dict())


@pytest.mark.parametrize("kwargs, argument", [
    ({"epochs": 0}, "epochs"), ({"batch_size": 0}, "batch_size"), ({"learning_rate": 2.0}, "learning_rate"),
    ({"lr_gamma": 1.5}, "lr_gamma"), ({"ema_decay": 1.0}, "ema_decay"), ({"ema_decay": 1}, "ema_decay"),
])
def test_train_rejects_bad_budgets(kwargs, argument):
    data = DeviceImages(torch.zeros(4, 1, 28, 28, dtype=torch.uint8), torch.zeros(4, dtype=torch.long))
    budget = {"epochs": 1, "batch_size": 2, "learning_rate": 1e-3}
    budget.update(kwargs)
    with pytest.raises(ValueError, match=f"`{argument}`"):
        train(build("ddpm", num_hiddens=4), stage_loss("ddpm", DDPMSchedule(10)), data, progress=False, **budget)


def test_checkpoint_folder_keeps_the_newest_two(tmp_path):
    for epoch in range(1, 5):
        checkpoints.save_checkpoint(tmp_path, epoch, {"epoch": epoch})
    assert [epoch for epoch, _ in checkpoints.list_checkpoints(tmp_path)] == [3, 4]
    assert checkpoints.load_latest(tmp_path) == {"epoch": 4}
    assert not list(tmp_path.glob("*.partial"))
    assert checkpoints.load_latest(tmp_path / "missing") is None


# ------------------------------------------------------------------------------ the optimizer: chosen in one place


def test_adam_is_fused_on_cuda_and_foreach_elsewhere():
    from course_lib.optimizers import adam_implementation, make_optimizer

    assert adam_implementation("cuda") == {"fused": True, "foreach": None}
    assert adam_implementation("cpu") == {"fused": None, "foreach": True}
    group = make_optimizer(build("ddpm", num_hiddens=4).parameters(), 1e-3, "cpu").param_groups[0]
    assert group["foreach"] is True and not group["fused"] and group["lr"] == 1e-3


def test_foreach_adam_gives_the_results_of_the_default_adam_on_the_cpu():
    """Ten steps of the class-conditional UNet: today's per-tensor Adam against make_optimizer's, same draws."""
    from course_lib.optimizers import make_optimizer
    from course_lib.train_step import optimizer_step

    loss_fn = stage_loss("cfg", DDPMSchedule(50))
    runs = []
    for make in (lambda p: torch.optim.Adam(p, lr=1e-2), lambda p: make_optimizer(p, 1e-2, "cpu")):
        model = build("cfg", num_hiddens=4)
        optimizer, generator = make(model.parameters()), torch.Generator().manual_seed(0)
        images, labels = torch.rand(8, 1, 28, 28, generator=generator) * 2 - 1, torch.arange(8)
        losses = [float(optimizer_step(model, loss_fn, images, labels, generator, optimizer,
                                       torch.amp.GradScaler("cpu", enabled=False), None)) for _ in range(10)]
        runs.append((losses, model.state_dict()))
    (losses, weights), (other_losses, other_weights) = runs
    assert losses == pytest.approx(other_losses, rel=1e-5)
    for name in weights:
        torch.testing.assert_close(weights[name], other_weights[name], rtol=1e-5, atol=1e-6)


def test_resuming_applies_this_devices_adam_to_a_checkpoint_from_another(tmp_path):
    """A checkpoint whose optimizer was fused (as on CUDA) resumes on the CPU with foreach Adam: the choice is
    re-applied after loading (``load_state_dict`` alone would keep the checkpoint's flags)."""
    data = random_digits(32)
    loss_fn = stage_loss("ddpm", DDPMSchedule(50))
    model = build("ddpm", num_hiddens=4)
    train(model, loss_fn, data, epochs=1, batch_size=16, learning_rate=1e-3, progress=False, checkpoint_dir=tmp_path)
    state = checkpoints.load_latest(tmp_path)
    fused = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)  # the CPU has a fused Adam kernel too
    model(torch.zeros(2, 1, 28, 28), torch.zeros(2)).mean().backward()
    fused.step()
    state["optimizer"] = fused.state_dict()
    assert state["optimizer"]["param_groups"][0]["fused"] is True
    checkpoints.save_checkpoint(tmp_path, 1, state)

    train(model, loss_fn, data, epochs=2, batch_size=16, learning_rate=1e-3, progress=False, checkpoint_dir=tmp_path)
    saved = checkpoints.load_latest(tmp_path)["optimizer"]
    assert saved["param_groups"][0]["foreach"] is True and not saved["param_groups"][0]["fused"]
    assert all(entry["step"].device.type == "cpu" and float(entry["step"]) == 3 for entry in saved["state"].values())


# ------------------------------------------------------------------------------ capture, and its fallback


@pytest.fixture
def fresh_dynamo():
    """Forget what torch.compile compiled (or failed to) in this test."""
    yield
    torch._dynamo.reset()


def _capture_run(compiler, stage: str = "flow", epochs: int = 2, **kwargs):
    data = random_digits(40)
    model = build(stage, num_hiddens=4)
    losses = train(model, stage_loss(stage, DDPMSchedule(50)), data, epochs=epochs, batch_size=16, learning_rate=1e-3,
                   progress=False, capture=compiler is not None, compiler=compiler, **kwargs)
    return losses, model.state_dict()


def test_capture_is_off_on_the_cpu_by_default(capsys):
    def compiler(loss_fn):
        raise AssertionError("compiled on the CPU")

    data = random_digits(16)
    train(build("flow", num_hiddens=4), stage_loss("flow", DDPMSchedule(50)), data, epochs=1, batch_size=8,
          learning_rate=1e-3, progress=False, compiler=compiler)
    assert capsys.readouterr().out == ""


def _unavailable(loss_fn):
    raise RuntimeError("torch.compile is not supported on this Python\nsecond line")


def _fails_after_drawing(loss_fn):
    """A compiled loss that has already drawn noise (and run BatchNorm) when capture fails: state must be restored."""
    def compiled(model, images, labels, generator):
        loss_fn(model, images, labels, generator)
        raise RuntimeError("CUDA graph capture failed: operation not permitted when stream is capturing")
    return compiled


def _broken_backend(graph_module, example_inputs):
    raise RuntimeError("no compiler for this device")


@pytest.mark.parametrize("compiler", [
    _unavailable, _fails_after_drawing, lambda loss_fn: torch.compile(loss_fn, backend=_broken_backend),
], ids=["compile-unavailable", "capture-fails-mid-step", "dynamo-backend-fails"])
def test_a_step_that_cannot_be_captured_falls_back_to_the_eager_run(compiler, capsys, fresh_dynamo):
    """One line of note, then training completes with the eager loss trajectory and weights, bit for bit."""
    eager_losses, eager_weights = _capture_run(None)
    assert capsys.readouterr().out == ""
    losses, weights = _capture_run(compiler)
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 1 and out[0].startswith("Note: could not capture the training step (") and "eagerly" in out[0]
    assert losses == eager_losses
    assert not states_equal(weights, eager_weights)


def test_a_compiled_step_with_data_dependent_control_flow_trains_like_the_eager_one(capsys, fresh_dynamo):
    """The compile path for real (torch.compile with the aot_eager backend on the CPU): a student's `.item()`
    is a graph break, not a failure; same losses as eager."""
    flow = stage_loss("flow", DDPMSchedule(50))

    def student_loss(model, images, labels, generator):
        loss = flow(model, images, labels, generator)
        return loss * 0.5 if loss.item() > 1e6 else loss

    data = random_digits(32)
    runs = []
    for compiler in (None, lambda loss_fn: torch.compile(loss_fn, backend="aot_eager", dynamic=False)):
        model = build("flow", num_hiddens=4)
        runs.append(train(model, student_loss, data, epochs=1, batch_size=8, learning_rate=1e-3, progress=False,
                          capture=compiler is not None, compiler=compiler))
    assert runs[0] == runs[1]
    assert "could not capture" not in capsys.readouterr().out


def test_every_step_sees_a_full_batch_so_the_captured_step_has_one_shape():
    """20 images in batches of 8: 2 steps of 8 per epoch, the 4 left over skipped (different ones each epoch)."""
    shapes, seen = [], []
    flow = stage_loss("flow", DDPMSchedule(50))

    def loss_fn(model, images, labels, generator):
        shapes.append(tuple(images.shape))
        seen.append(labels.clone())
        return flow(model, images, labels, generator)

    data = DeviceImages(torch.randint(0, 256, (20, 1, 28, 28), dtype=torch.uint8), torch.arange(20))
    losses = train(build("flow", num_hiddens=4), loss_fn, data, epochs=3, batch_size=8, learning_rate=1e-3,
                   progress=False)
    assert len(losses) == 6 and set(shapes) == {(8, 1, 28, 28)}
    used = [set(torch.cat(seen[i:i + 2]).tolist()) for i in (0, 2, 4)]
    assert all(len(epoch) == 16 for epoch in used) and len(set(map(frozenset, used))) > 1


# ------------------------------------------------------------------------------ EMA in training


def test_resuming_with_an_ema_gives_the_same_run_and_the_same_average(mnist_train, tmp_path):
    """2 epochs straight == 1 + resume + 1 with an EMA: the EMA (which the model ends with) is equal bit for bit."""
    data = every_tenth(mnist_train, "cfg", 64)
    loss_fn = stage_loss("cfg", DDPMSchedule(50))
    budget = dict(batch_size=16, learning_rate=1e-3, seed=3, progress=False, ema_decay=0.9)
    straight = build("cfg", num_hiddens=4)
    straight_losses = train(straight, loss_fn, data, epochs=2, **budget)

    train(build("cfg", num_hiddens=4), loss_fn, data, epochs=1, checkpoint_dir=tmp_path, **budget)
    resumed = build("cfg", seed=7, num_hiddens=4)
    assert train(resumed, loss_fn, data, epochs=2, checkpoint_dir=tmp_path, **budget) == straight_losses
    assert not states_equal(straight.state_dict(), resumed.state_dict())
    saved = checkpoints.load_latest(tmp_path)
    assert saved["ema"]["num_updates"] == 8
    assert not states_equal(saved["ema"]["shadow"], straight.state_dict())  # the model ends with the EMA weights
    assert states_equal(saved["model"], straight.state_dict())  # ... and the trained ones stay in the checkpoint


def test_callbacks_see_the_ema_weights_and_training_continues_from_the_trained_ones():
    data = random_digits(32)
    loss_fn = stage_loss("flow", DDPMSchedule(50))
    seen = {}

    def on_epoch_end(epoch, model, losses):
        seen[epoch] = {name: value.clone() for name, value in model.state_dict().items()}

    with_ema = build("flow", num_hiddens=4)
    losses = train(with_ema, loss_fn, data, epochs=2, batch_size=8, learning_rate=1e-3, progress=False,
                   ema_decay=0.5, on_epoch_end=on_epoch_end)
    without = build("flow", num_hiddens=4)
    assert train(without, loss_fn, data, epochs=2, batch_size=8, learning_rate=1e-3, progress=False) == losses
    assert not states_equal(seen[2], with_ema.state_dict())
    assert states_equal(seen[2], without.state_dict())


def test_the_precision_is_checkpointed_and_a_resumed_run_keeps_it(tmp_path):
    """On the CPU training runs in fp32 and says so in its checkpoints; a resumed run takes the checkpoint's."""
    from course_lib.training import _training_dtype

    data = random_digits(32)
    train(build("ddpm", num_hiddens=4), stage_loss("ddpm", DDPMSchedule(10)), data, epochs=1, batch_size=16,
          learning_rate=1e-3, progress=False, checkpoint_dir=tmp_path)
    state = checkpoints.load_latest(tmp_path)
    assert state["precision"] == "fp32"
    assert _training_dtype(None, None, data, 16, {**state, "precision": "bfloat16"}) == torch.bfloat16


# ------------------------------------------------------------------------------ validation


def batchnorm_model(seed: int = 0) -> nn.Module:
    """A tiny model whose BatchNorm makes train and eval mode give different outputs."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.BatchNorm2d(3), nn.GELU(), nn.Conv2d(3, 1, 3, padding=1))


def reconstruction(model, images, labels, generator):
    """A loss without randomness: how well the model reproduces its input."""
    return F.mse_loss(model(images), images)


def test_validation_loss_is_the_mean_loss_over_every_held_out_digit_in_eval_mode_without_gradients():
    """30 digits in batches of 7 (the last one of 2): the size-weighted mean is the loss of all 30 at once, computed in
    eval mode (BatchNorm's running statistics, which it does not change)."""
    model = batchnorm_model()
    model.train()
    model(torch.randn(8, 1, 28, 28))  # running statistics away from their initial values
    held_out = random_digits(30, seed=4)
    everything, labels = held_out.first(30)
    statistics = model[1].running_mean.clone()
    model.eval()
    with torch.no_grad():
        expected = F.mse_loss(model(everything), everything).item()
    model.train()
    calls = []
    spy = lambda model, images, labels, generator: calls.append((model.training, torch.is_grad_enabled())) or \
        reconstruction(model, images, labels, generator)
    assert validation_loss(model, spy, held_out, batch_size=7) == pytest.approx(expected, rel=1e-6)
    assert calls == [(False, False)] * 5 and not model.training
    assert torch.equal(model[1].running_mean, statistics)


def test_validation_loss_draws_the_same_noise_every_time_from_its_seed():
    """With noise in the loss, the value is the loss of the held-out digits under a generator seeded VALIDATION_SEED
    (one batch here), and two calls agree exactly."""
    model = build("ddpm", num_hiddens=4)
    held_out = random_digits(12, seed=5)
    loss_fn = stage_loss("ddpm", DDPMSchedule(50))
    images, labels = held_out.first(12)
    model.eval()
    with torch.no_grad():
        expected = loss_fn(model, images, labels, torch.Generator().manual_seed(VALIDATION_SEED)).item()
    first = validation_loss(model, loss_fn, held_out, batch_size=16)
    assert first == pytest.approx(expected, rel=1e-6)
    assert validation_loss(model, loss_fn, held_out, batch_size=16) == first
    assert validation_loss(model, loss_fn, held_out, batch_size=16, seed=1) != first


def test_train_reports_the_validation_loss_of_every_epoch_without_changing_training():
    """Validation draws nothing from the training generator and leaves BatchNorm alone: the training losses and
    weights are those of a run without it; each epoch's value is validation_loss of the weights after that epoch."""
    data, held_out = random_digits(40, seed=1), random_digits(10, seed=2)
    loss_fn = stage_loss("denoiser", DDPMSchedule(50))
    budget = dict(epochs=3, batch_size=8, learning_rate=1e-2, seed=3, progress=False)
    after_epoch = []

    def on_epoch_end(epoch, model, losses):
        after_epoch.append(validation_loss(model, loss_fn, held_out, batch_size=8))
        assert len(losses.validation) == epoch

    with_validation = build("denoiser", num_hiddens=4)
    losses = train(with_validation, loss_fn, data, validation=held_out, on_epoch_end=on_epoch_end, **budget)
    without = build("denoiser", num_hiddens=4)
    plain = train(without, loss_fn, data, **budget)
    assert isinstance(losses, LossHistory) and isinstance(losses, list) and losses == plain
    assert not states_equal(with_validation.state_dict(), without.state_dict())
    assert losses.validation == after_epoch and len(losses.validation) == 3 and losses.steps_per_epoch == 5
    assert plain.validation == [] and plain.steps_per_epoch == 5
    assert losses.validation[-1] < losses.validation[0]


def test_validation_of_an_unchanging_model_is_the_same_every_epoch():
    """A learning rate of 0 and no BatchNorm: the weights never change, so a fixed validation noise gives one value."""
    torch.manual_seed(0)
    model = nn.Conv2d(1, 1, 3, padding=1)
    loss_fn = stage_loss("flow", DDPMSchedule(50))
    losses = train(model, lambda m, x, y, g: loss_fn(lambda x, t: m(x), x, y, g), random_digits(16), epochs=3,
                   batch_size=8, learning_rate=0.0, progress=False, validation=random_digits(9, seed=3))
    assert len(set(losses.validation)) == 1


def test_resuming_keeps_the_validation_history(mnist_train, tmp_path):
    """2 epochs straight == 1 + resume + 1: the same validation losses, and the checkpoint holds them."""
    digits = every_tenth(mnist_train, "ddpm", 64)
    data, held_out = DeviceImages(digits.images[:48], digits.labels[:48]), DeviceImages(digits.images[48:],
                                                                                         digits.labels[48:])
    loss_fn = stage_loss("ddpm", DDPMSchedule(50))
    budget = dict(batch_size=16, learning_rate=1e-3, lr_gamma=0.1 ** 0.5, seed=3, progress=False, validation=held_out)
    straight = train(build("ddpm", num_hiddens=4), loss_fn, data, epochs=2, **budget)
    train(build("ddpm", num_hiddens=4), loss_fn, data, epochs=1, checkpoint_dir=tmp_path, **budget)
    assert checkpoints.load_latest(tmp_path)["validation_losses"] == straight.validation[:1]
    resumed = train(build("ddpm", seed=7, num_hiddens=4), loss_fn, data, epochs=2, checkpoint_dir=tmp_path, **budget)
    assert resumed == straight and resumed.validation == straight.validation and len(resumed.validation) == 2
    assert checkpoints.load_latest(tmp_path)["validation_losses"] == straight.validation
    finished = train(build("ddpm", num_hiddens=4), loss_fn, data, epochs=2, checkpoint_dir=tmp_path, **budget)
    assert finished.validation == straight.validation, "a finished run resumes to nothing and keeps its history"


def test_train_rejects_validation_images_elsewhere():
    data = random_digits(8)
    with pytest.raises(ValueError, match="`validation`"):
        train(build("denoiser", num_hiddens=4), stage_loss("denoiser", DDPMSchedule(50)), data, epochs=1,
              batch_size=4, learning_rate=1e-3, progress=False, validation=data.first(4))
