"""course_lib.runtime: the course mode from the environment, precision, seeding, Colab detection."""

from __future__ import annotations

import random

import pytest
import torch

from course_lib import runtime
from course_lib.runtime import autocast_dtype, course_mode, describe, in_colab, seed_everything


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
