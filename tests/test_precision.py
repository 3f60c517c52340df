"""course_lib.precision: fp32 on the CPU without measuring; on a GPU the fastest precision by timing (the timing
itself runs on any device, so it is checked here on the CPU)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from course_lib import precision
from course_lib.noise import DDPMSchedule
from course_lib.stages import stage_loss

pytestmark = pytest.mark.usefixtures("single_thread")


def _model():
    from course_lib.models import TimeConditionalUNet

    torch.manual_seed(0)
    return TimeConditionalUNet(num_hiddens=4)


def test_the_cpu_trains_in_fp32_without_measuring():
    def loss_fn(*args):
        raise AssertionError("measured on the CPU")

    assert precision.autocast_candidates("cpu") == [None]
    assert precision.fastest_autocast_dtype(_model(), loss_fn, torch.zeros(2, 1, 28, 28), torch.zeros(2)) is None


@pytest.mark.parametrize("dtype", [None, torch.bfloat16])
def test_step_seconds_times_a_copy_and_leaves_the_model_alone(dtype):
    model = _model()
    before = {name: value.clone() for name, value in model.state_dict().items()}
    seconds = precision.step_seconds(model, stage_loss("ddpm", DDPMSchedule(50)), torch.rand(4, 1, 28, 28) * 2 - 1,
                                     torch.arange(4), dtype, steps=2, warmup=1)
    assert 0 < seconds < 60
    assert all(torch.equal(before[name], value) for name, value in model.state_dict().items())


@pytest.mark.parametrize("timings, expected", [
    ({None: 1.0, torch.bfloat16: 1.2, torch.float16: 1.1}, None),
    ({None: 1.0, torch.bfloat16: 0.7, torch.float16: 0.8}, torch.bfloat16),
    ({None: 1.0, torch.float16: 0.97}, None),  # within the margin: fp32, the safe choice
    ({None: float("inf"), torch.float16: 2.0}, torch.float16),
])
def test_the_fastest_precision_wins_by_a_margin(timings, expected):
    assert precision.fastest(timings) is expected


def test_precision_does_not_import_the_training_loop():
    """The imports run one way: training uses precision, and precision takes the step and Adam from their own
    modules (``train_step``, ``optimizers``), not from training. The loop still offers those names to its callers."""
    code = ("import sys, course_lib.precision; print('course_lib.training' in sys.modules); "
            "from course_lib.training import TrainStep, make_optimizer, optimizer_step, compile_for_capture")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"
