"""course_lib.training on real MNIST: every objective learns, and a resumed run is the same run.

Kept small for a shared CPU: UNets of width 8, batches of 8, 120 optimizer steps per objective.
"""

from __future__ import annotations

import pytest
import torch

from course_lib import checkpoints
from course_lib.data import DeviceImages, load_mnist
from course_lib.models import ClassConditionalUNet, TimeConditionalUNet, UnconditionalUNet
from course_lib.noise import DDPMSchedule
from course_lib.stages import stage_loss, value_range
from course_lib.training import train

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
    ({"lr_gamma": 1.5}, "lr_gamma"),
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
