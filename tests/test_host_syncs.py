"""course_lib.host_syncs: the counter counts what would make the host wait for the GPU, and a training step of
every stage waits for nothing (checked on the CPU, which stands in for a GPU: the counter works on operations).

Tiny UNets (width 4) on random batches of 4: a few seconds in all.
"""

from __future__ import annotations

import pytest
import torch

from course_lib import objectives
from course_lib.data import DeviceImages
from course_lib.ema import EMA
from course_lib.host_syncs import HostSyncCounter, host_only
from course_lib.noise import DDPMSchedule
from course_lib.optimizers import make_optimizer
from course_lib.train_step import optimizer_step
from course_lib.training import train

pytestmark = pytest.mark.usefixtures("single_thread")

T = 50


def _losses(schedule):
    """Each stage's real loss from course_lib.objectives, as ``loss_fn(model, images, labels, generator)``."""
    return {
        "denoiser": lambda m, x, y, g: objectives.denoising_loss(m, x, generator=g),
        "ddpm": lambda m, x, y, g: objectives.ddpm_loss(m, x, schedule, generator=g),
        "cfg": lambda m, x, y, g: objectives.class_conditional_loss(m, x, y, schedule, generator=g),
        "flow": lambda m, x, y, g: objectives.flow_loss(m, x, generator=g),
    }


def _model(stage: str):
    from course_lib import models

    name = {"denoiser": "UnconditionalUNet", "cfg": "ClassConditionalUNet"}.get(stage, "TimeConditionalUNet")
    torch.manual_seed(0)
    return getattr(models, name)(num_hiddens=4)


def count_step_syncs(stage: str, loss_fn=None, ema: bool = False, steps: int = 2) -> HostSyncCounter:
    """Run ``steps`` optimizer steps (the first creates Adam's state) of ``stage`` under the counter."""
    model = _model(stage)
    loss_fn = loss_fn or _losses(DDPMSchedule(T))[stage]
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(4, 1, 28, 28, generator=generator) * 2 - 1
    labels = torch.arange(4)
    optimizer = make_optimizer(model.parameters(), 1e-3, images.device)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    average = EMA(model, 0.999) if ema else None
    with HostSyncCounter() as syncs:
        for _ in range(steps):
            optimizer_step(model, loss_fn, images, labels, generator, optimizer, scaler, None, average)
    return syncs


@pytest.mark.parametrize("stage", ["denoiser", "ddpm", "cfg", "flow"])
def test_a_training_step_never_waits_for_the_device(stage):
    """Loss, backward, Adam (foreach here, fused on CUDA): no scalar read, no data-dependent shape, no copy."""
    syncs = count_step_syncs(stage)
    assert syncs.count == 0, f"{stage}: {syncs.count} host syncs in 2 steps:\n{syncs.summary()}"


@pytest.mark.parametrize("stage", ["denoiser", "ddpm", "cfg", "flow"])
def test_a_training_step_of_the_stage_registry_never_waits_for_the_device(stage):
    """The losses that ``train_stage`` trains with (``course_lib.stages.stage_loss``: the answers, unchecked)."""
    from course_lib.stages import stage_loss

    syncs = count_step_syncs(stage, stage_loss(stage, DDPMSchedule(T)))
    assert syncs.count == 0, f"{stage}: {syncs.count} host syncs in 2 steps:\n{syncs.summary()}"


def test_a_step_with_the_ema_never_waits_for_the_device():
    syncs = count_step_syncs("flow", ema=True)
    assert syncs.count == 0, syncs.summary()


def test_the_counter_sees_a_loss_that_reads_a_value_back():
    flow = _losses(None)["flow"]

    def impatient_loss(model, images, labels, generator):
        loss = flow(model, images, labels, generator)
        print(f"loss {loss.item():.3f}")  # a student's progress print: one sync per step
        return loss

    syncs = count_step_syncs("flow", impatient_loss, steps=2)
    assert syncs.count >= 2
    assert {event.op for event in syncs.events} == {"aten._local_scalar_dense.default"}
    assert all("impatient_loss" in event.where for event in syncs.events), syncs.summary()


def _index_put(t, mask):
    t[mask] = 0.0


SYNCING = {
    "item": lambda t, m: t.sum().item(), "int": lambda t, m: int(t[0, 0]), "if": lambda t, m: 1 if m.any() else 0,
    "format": lambda t, m: f"{t.sum():.2f}", "tolist": lambda t, m: t.tolist(), "numpy": lambda t, m: t.numpy(),
    "cpu": lambda t, m: t.cpu(), "to cpu": lambda t, m: t.to("cpu"), "equal": lambda t, m: torch.equal(t, t),
    "allclose": lambda t, m: torch.allclose(t, t), "nonzero": lambda t, m: t.nonzero(),
    "where": lambda t, m: torch.where(m), "mask": lambda t, m: t[m],
    "mask assign": lambda t, m: _index_put(t.clone(), m),
    "unique": lambda t, m: t.unique(), "repeat_interleave": lambda t, m: torch.repeat_interleave(m.long().flatten()),
    "one_hot guessing the classes": lambda t, m: torch.nn.functional.one_hot(m.long().flatten()),
}
NOT_SYNCING = {
    "arithmetic": lambda t, m: (t * 2 + 1).sum(), "masked arithmetic": lambda t, m: torch.where(m, t, 0.0),
    "index list": lambda t, m: t[[0, 1]], "cast": lambda t, m: t.to(torch.float64),
    "non-blocking copy": lambda t, m: t.to("cpu", non_blocking=True), "random": lambda t, m: torch.randn(3),
    "sized repeat_interleave": lambda t, m: torch.repeat_interleave(m.long().flatten(), output_size=3),
    "one_hot": lambda t, m: torch.nn.functional.one_hot(m.long().flatten(), 2),  # CUDA asserts on the device
}


@pytest.mark.parametrize("operation, count", [(SYNCING[name], 1) for name in SYNCING] +
                         [(NOT_SYNCING[name], 0) for name in NOT_SYNCING], ids=[*SYNCING, *NOT_SYNCING])
def test_the_counter_counts_each_kind_of_sync_once_and_ignores_what_stays_on_the_device(operation, count):
    t = torch.arange(6.0).reshape(2, 3)
    with HostSyncCounter() as syncs:
        operation(t, t > 2)
    assert syncs.count == count, syncs.summary()


def test_adams_host_step_counters_are_not_syncs_but_the_counter_is_removed_after():
    """Non-fused Adam reads its step counters with .item(); they live on the host on every device."""
    parameter = torch.nn.Parameter(torch.ones(3))
    parameter.grad = torch.ones(3)
    optimizer = torch.optim.Adam([parameter], foreach=False)
    with HostSyncCounter() as syncs:
        optimizer.step()
        optimizer.step()
    assert syncs.count == 0
    optimizer.state[parameter]["step"].item()  # outside the block: nothing is recorded any more
    assert syncs.count == 0


def test_training_reads_the_losses_back_once_per_epoch():
    """``train`` on the CPU: the only host read is the epoch's losses (``.tolist()``), 2 epochs of 3 steps."""
    data = DeviceImages(torch.randint(0, 256, (26, 1, 28, 28), dtype=torch.uint8), torch.randint(0, 10, (26,)))
    with HostSyncCounter() as syncs:
        losses = train(_model("flow"), _losses(None)["flow"], data, epochs=2, batch_size=8, learning_rate=1e-3,
                       progress=False, ema_decay=0.99)
    assert len(losses) == 6
    expected = ["Tensor.tolist (a copy between host and device on a GPU)"] * 2
    assert [event.op for event in syncs.events] == expected, syncs.summary()


def test_validation_reads_its_loss_back_once_per_epoch():
    """With held-out digits, each epoch adds one read: the validation loss (``.item()`` of the weighted sum)."""
    data = DeviceImages(torch.randint(0, 256, (26, 1, 28, 28), dtype=torch.uint8), torch.randint(0, 10, (26,)))
    held_out = DeviceImages(torch.randint(0, 256, (11, 1, 28, 28), dtype=torch.uint8), torch.randint(0, 10, (11,)))
    with HostSyncCounter() as syncs:
        losses = train(_model("flow"), _losses(None)["flow"], data, epochs=2, batch_size=8, learning_rate=1e-3,
                       progress=False, validation=held_out)
    assert len(losses.validation) == 2
    reads = [event.op for event in syncs.events]
    assert len(reads) == 4 and reads[0] == reads[2] == "Tensor.tolist (a copy between host and device on a GPU)", \
        syncs.summary()


def test_host_only_code_and_other_devices_are_not_counted():
    t = torch.arange(6.0)
    with HostSyncCounter() as syncs:
        with host_only():
            int(t[0]), t.tolist()  # a DataLoader's work on host tensors
        int(t[1])
    assert syncs.count == 1
    with HostSyncCounter("cuda") as on_gpu:  # watching a GPU: CPU tensors' reads wait for no GPU
        int(t[0]), t.tolist(), t.cpu(), t[t > 2]
    assert on_gpu.count == 0
