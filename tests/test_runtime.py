"""course_lib.runtime: the course mode from the environment, the budget table against COURSE.md, precision."""

from __future__ import annotations

import random

import pytest
import torch

from course_lib import runtime
from course_lib.runtime import STAGES, autocast_dtype, budget, course_mode, describe, in_colab, seed_everything


@pytest.mark.parametrize("value, mode", [(None, "full"), ("", "full"), ("full", "full"), ("quick", "quick"),
                                         (" Quick ", "quick")])
def test_course_mode_reads_course_mode(monkeypatch, value, mode):
    monkeypatch.delenv("NBGRADER_EXECUTION", raising=False)
    if value is None:
        monkeypatch.delenv("COURSE_MODE", raising=False)
    else:
        monkeypatch.setenv("COURSE_MODE", value)
    assert course_mode() == mode


@pytest.mark.parametrize("value", ["full", "fast", ""])
def test_nbgrader_forces_quick_mode(monkeypatch, value):
    monkeypatch.setenv("COURSE_MODE", value)
    monkeypatch.setenv("NBGRADER_EXECUTION", "autograde")
    assert course_mode() == "quick"


def test_bad_course_mode_is_an_error_naming_the_variable(monkeypatch):
    monkeypatch.delenv("NBGRADER_EXECUTION", raising=False)
    monkeypatch.setenv("COURSE_MODE", "fast")
    with pytest.raises(ValueError, match="COURSE_MODE.*'fast'"):
        course_mode()


def test_full_budgets_are_the_assignments():
    """COURSE.md: denoiser batch 256, 5 epochs, Adam 1e-4, D = 128; diffusion stages batch 128, 20 epochs,
    Adam 1e-3, D = 64, T = 300, learning rate x 0.1 ** (1 / 20) per epoch."""
    denoiser = budget("denoiser", "full")
    assert (denoiser.epochs, denoiser.batch_size, denoiser.num_hiddens, denoiser.learning_rate,
            denoiser.subset_size, denoiser.lr_gamma) == (5, 256, 128, 1e-4, None, 1.0)
    for stage in ("ddpm", "cfg", "flow"):
        b = budget(stage, "full")
        assert (b.epochs, b.batch_size, b.num_hiddens, b.learning_rate, b.subset_size, b.num_steps) == \
            (20, 128, 64, 1e-3, None, 300), stage
        assert b.lr_gamma == pytest.approx(0.1 ** (1 / 20))
        assert b.lr_gamma ** b.epochs == pytest.approx(0.1), "the rate must end ten times lower"


def test_quick_budgets_are_small():
    for stage in STAGES:
        b = budget(stage, "quick")
        assert b.subset_size is not None and b.subset_size <= 1024, stage
        assert b.epochs * b.subset_size <= 2048 and b.num_hiddens <= 32, stage
        assert b.subset_size >= b.batch_size, f"{stage}: at least one batch per epoch"


def test_budget_defaults_to_the_course_mode(monkeypatch):
    monkeypatch.delenv("NBGRADER_EXECUTION", raising=False)
    monkeypatch.setenv("COURSE_MODE", "quick")
    assert budget("ddpm") == runtime.BUDGETS["quick"]["ddpm"]
    monkeypatch.setenv("COURSE_MODE", "full")
    assert budget("ddpm") == runtime.BUDGETS["full"]["ddpm"]


@pytest.mark.parametrize("stage, mode, argument", [("gan", "quick", "stage"), ("ddpm", "slow", "mode")])
def test_budget_rejects_unknown_names(stage, mode, argument):
    with pytest.raises(ValueError, match=f"`{argument}`"):
        budget(stage, mode)


def test_cpu_runs_in_plain_fp32():
    assert autocast_dtype("cpu") is None
    assert autocast_dtype(torch.device("cpu")) is None


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_gpu_precision_follows_compute_capability():
    major, _ = torch.cuda.get_device_capability()
    assert autocast_dtype("cuda") == (torch.float16 if major < 8 else torch.bfloat16)


def test_seed_everything_makes_every_source_repeat():
    def draws():
        generator = seed_everything(123)
        return random.random(), torch.rand(3), torch.rand(3, generator=generator)

    first, second = draws(), draws()
    assert first[0] == second[0]
    assert torch.equal(first[1], second[1]) and torch.equal(first[2], second[2])
    assert torch.equal(first[2], torch.rand(3, generator=torch.Generator().manual_seed(123)))


def test_in_colab_and_describe(monkeypatch):
    monkeypatch.delenv("COLAB_RELEASE_TAG", raising=False)
    monkeypatch.delenv("NBGRADER_EXECUTION", raising=False)
    monkeypatch.setenv("COURSE_MODE", "quick")
    assert not in_colab()
    line = describe()
    assert "'quick' mode" in line and "local" in line
    if not torch.cuda.is_available():
        assert "CPU (fp32" in line and runtime.pick_device() == torch.device("cpu")
    monkeypatch.setenv("COLAB_RELEASE_TAG", "release-colab-20250101")
    assert in_colab() and "Colab" in describe()


def test_budget_schedule_is_the_course_schedule_at_T_300_and_keeps_the_end_noise_level_in_quick_mode():
    full = runtime.budget("ddpm", "full").schedule()
    assert full.num_steps == 300
    torch.testing.assert_close(full.betas, torch.linspace(1e-4, 0.02, 300))
    quick = runtime.budget("ddpm", "quick").schedule()
    assert quick.num_steps == runtime.budget("ddpm", "quick").num_steps < 300
    # x_T must still be close to pure noise: alpha_bar at the last step within 20% of the course's (about 0.05)
    assert abs(quick.alpha_bars[-1].item() / full.alpha_bars[-1].item() - 1) < 0.2
    assert quick.alpha_bars[-1].item() < 0.1
