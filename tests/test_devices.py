"""The checks' device run (course_lib.checks.devices) and the generators of the given code and the notebooks.

Without a GPU, the checks run the student's code a second time on PyTorch's ``meta`` device under a guard that
refuses what a GPU refuses. Here: the guard itself, the references passing every device run, and every given
sampler, widget and notebook cell that samples making its generator on the sampling device.
"""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest
import torch
import torch.nn.functional as F

from course_lib import sampling, stages, widgets
from course_lib.checks.devices import DEVICE, DeviceGuard, OnCPU, device_run, generators_on_device
from course_lib.checks.harness import TinyNoisePredictor
from course_lib.noise import DDPMSchedule
from course_lib.stages.denoiser import answers as answer
from course_lib.stages.denoiser import checks as denoiser
from course_lib.stages.noising import checks as noising
from test_mistake_catalogue import CATALOGUE

pytestmark = pytest.mark.usefixtures("single_thread")

SOLUTIONS = Path(__file__).resolve().parents[1] / "solutions"


def test_the_guard_names_a_cpu_tensor_made_without_device():
    def student(model, n):
        return model(torch.randn(n, 1, 28, 28, device=DEVICE), torch.full((n,), 0.5))

    message = device_run("sampler", student, TinyNoisePredictor(0), 2)
    assert "a tensor made by `torch.full` is on cpu, the model on meta: make it there, " \
           "`torch.full(..., device=device)`" in message


def test_the_guard_names_an_input_left_on_the_cpu_after_one_hot():
    def student(model, labels):
        c = F.one_hot(labels, 10).float()
        x = torch.zeros(len(labels), 1, 28, 28, device=DEVICE)
        return model(x, torch.zeros(len(labels), device=DEVICE), c)

    message = device_run("sampler", student, TinyNoisePredictor(0, num_classes=10), OnCPU(torch.arange(3), "labels"))
    assert "labels are on cpu, the model on meta: move them with `.to(device)`" in message


def test_the_guard_lets_correct_code_read_values_back_and_mix_cpu_numbers():
    def student(model, generator):
        x = torch.randn((2, 1, 28, 28), generator=generator, device=generator.device)
        frames = [x.cpu(), x.to("cpu")]
        x = x * torch.tensor(0.5) + x.mean().item()
        return model(x, torch.full((2,), 0.5, device=x.device)), torch.stack(frames), x.tolist(), float(x.sum())

    assert device_run("sampler", student, TinyNoisePredictor(0), torch.Generator()) is None


def test_the_guard_refuses_draws_on_another_device_than_the_generator():
    on_cpu = device_run("loss", lambda x, g: x + torch.randn(x.shape, generator=g), torch.zeros(2, 3),
                        torch.Generator(), holder="x", where="x.device")
    assert "`torch.randn` drew on cpu with the generator you were given, which lives on x's device (meta): pass " \
           "`device=x.device`" in on_cpu
    own = device_run("loss", lambda x: torch.randn(x.shape, generator=torch.Generator(), device=x.device),
                     torch.zeros(2, 3), holder="x", where="x.device")
    assert "`torch.randn` drew on meta with a generator made on the CPU: make the generator on the device, " \
           "`torch.Generator(x.device)`" in own


def test_other_failures_of_the_device_run_are_left_to_the_run_on_the_cpu():
    def student(x):
        if x.sum() > 0:  # values are read back as zeros: the branch is not taken
            raise AssertionError("never")
        raise ValueError("no device mistake")

    assert device_run("f", student, torch.ones(3), holder="x") is None


def test_the_guard_names_noise_drawn_on_the_cpu_in_an_em_step():
    def student(x, t, dt, f, b, z):
        return x + f(x, t) * dt + b(x, t) * dt ** 0.5 * torch.randn(x.shape)

    inputs, _ = noising.check_em_step.check.expectations(noising.check_em_step.check.case())
    message = noising.check_em_step.check.devices(student, inputs=inputs)
    assert "your em_step mixes devices: a tensor made by `torch.randn` is on cpu, x on meta: make it there, " \
           "`torch.randn(..., device=x.device)`" in message


def test_a_generator_made_on_the_device_lets_the_training_loop_run_to_its_end():
    """The reference loop makes its validation generator on val_data.device (PyTorch has no meta generator): the
    device run goes on through every epoch, reading the losses back as zeros."""
    epochs = []

    def train_denoiser(*args, on_epoch_end=None):
        return answer.train_denoiser(*args, on_epoch_end=lambda epoch, *_: epochs.append(epoch))

    entry = denoiser.check_train_denoiser.check
    inputs, _ = entry.expectations(entry.case())
    assert entry.devices(train_denoiser, inputs=inputs) is None
    assert epochs == list(range(1, inputs["epochs"] + 1))


REFERENCES = [pytest.param(stage, grade_id, todo, id=f"{stage.key}/{grade_id}") for stage in stages.STAGES
              for grade_id, todo in CATALOGUE[stage.key].items() if todo.check.check.devices is not None]


@pytest.mark.parametrize("stage, grade_id, todo", REFERENCES)
def test_every_device_run_passes_the_reference(stage, grade_id, todo):
    entry = todo.check.check
    inputs, _ = entry.expectations(entry.case(**todo.case))
    answers = tuple(getattr(stage.answers, name) for name in stage.todos[grade_id])
    assert entry.devices(*answers, inputs=inputs) is None


def test_every_module_sampler_loss_and_loop_todo_has_a_device_run():
    for key, grade_ids in {"ddpm": ("ddpm_loss", "ddpm_sample", "ddim_sample"), "cfg": ("cfg_loss", "cfg_sample"),
                           "flow": ("flow_loss", "flow_sample"),
                           "noising": ("add_noise", "q_sample", "em_step"),
                           "denoiser": ("operations", "blocks", "unet", "loss_and_step", "train_denoiser"),
                           "editing": ("sdedit", "inpaint", "guided_edit")}.items():
        for grade_id in grade_ids:
            assert CATALOGUE[key][grade_id].check.check.devices is not None, f"{key}/{grade_id}"


@pytest.fixture
def generators_on_meta():
    """``torch.Generator(device)`` gives a :class:`DeviceGenerator` for the meta device (which has none) and a
    CPU generator otherwise, as in a device run, so that given code can sample on the meta device and show where
    it made its generator."""
    with generators_on_device():
        yield


def meta_models() -> tuple:
    """A noise predictor, a class-conditional one and a 3-step schedule, on the meta device."""
    return tuple(module.to(DEVICE) for module in (TinyNoisePredictor(0), TinyNoisePredictor(0, num_classes=10),
                                                  DDPMSchedule(num_steps=3)))


@pytest.mark.parametrize("name, run", [
    ("ddim_sample", lambda model, cfg_model, schedule: sampling.ddim_sample(
        model, schedule, 2, 2, generator=torch.Generator(DEVICE), eta=1.0, return_trajectory=True)),
    ("guidance_slider", lambda model, cfg_model, schedule: widgets.guidance_slider(
        cfg_model, schedule, guidances=(0.0, 1.0), digits=(1, 2))),
    ("forward_process_slider", lambda model, cfg_model, schedule: widgets.forward_process_slider(
        torch.zeros(2, 1, 28, 28, device=DEVICE), schedule)),
    ("sdedit_slider", lambda model, cfg_model, schedule: widgets.sdedit_slider(
        cfg_model, schedule, torch.zeros(2, 1, 28, 28), strengths=(1, 3))),
    ("inpainting_slider", lambda model, cfg_model, schedule: widgets.inpainting_slider(
        cfg_model, schedule, torch.zeros(2, 1, 28, 28), known_rows=(14,))),
    ("edit_guidance_slider", lambda model, cfg_model, schedule: widgets.edit_guidance_slider(
        cfg_model, schedule, torch.zeros(2, 1, 28, 28), torch.tensor([1, 2]), 2, guidances=(0.0, 2.0))),
])
def test_given_code_makes_its_generator_on_the_sampling_device(name, run, generators_on_meta):
    """On a GPU a generator made on the CPU cannot draw there: the given code runs on the meta device, under the
    guard (which raises on a device mistake; any other failure fails the test too)."""
    models = meta_models()
    with DeviceGuard(None, "the model", "device"):
        run(*models)


NOTEBOOKS = [SOLUTIONS / f"{stage.notebook}.ipynb" for stage in stages.STAGES]


def generator_calls(notebook) -> list[str]:
    """Every ``torch.Generator(...)`` call in the code cells of ``notebook`` (a source notebook's path)."""
    cells = nbformat.read(notebook, as_version=4).cells
    return [call for cell in cells if cell.cell_type == "code"
            for call in re.findall(r"torch\.Generator\([^)]*\)", cell.source)]


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda path: path.name)
def test_every_notebook_generator_is_made_on_the_sampling_device(notebook):
    """Stage 1 works on the CPU (no cell names DEVICE); from stage 2 on, the notebooks sample on DEVICE, and
    every generator is made there (``torch.Generator(DEVICE)``, or on the data's device)."""
    text = notebook.read_text()
    calls = generator_calls(notebook)
    if "DEVICE" not in text:
        return
    assert calls, notebook.name
    for call in calls:
        assert re.fullmatch(r"torch\.Generator\((device=)?(DEVICE|\w+\.device)\)", call), f"{notebook.name}: {call}"
