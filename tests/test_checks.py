"""course_lib.checks: the feedback helpers the check cells and hidden tests are built from."""

from __future__ import annotations

import pytest
import torch

from course_lib.checks import CheckFailed, expect_close, expect_tensor, passed, run_student
from check_helpers import leave_out_answers, round_trip


def test_check_failed_is_an_assertion_shown_without_traceback():
    error = CheckFailed("your x is 1, expected 2")
    assert isinstance(error, AssertionError)
    assert error._render_traceback_() == ["\x1b[31m✗ your x is 1, expected 2\x1b[0m"]


def test_passed_prints_one_line(capsys):
    passed("alpha_bars")
    assert capsys.readouterr().out == "✓ alpha_bars\n"


# ----------------------------------------------------------------------------- expect_close / expect_tensor

def test_expect_close_passes_within_tolerance():
    expected = torch.linspace(0, 1, 12).view(3, 4)
    assert expect_close("alpha_bars", expected + 5e-6, expected) is None


def test_expect_close_names_the_worst_entry_its_values_and_the_hint():
    expected = torch.zeros(3, 4)
    got = expected.clone()
    got[0, 1] = 0.01
    got[1, 2] = -0.25  # the worst entry
    with pytest.raises(CheckFailed) as failure:
        expect_close("x_t", got, expected, hint="is it sqrt(alpha_bar)?")
    assert str(failure.value) == "your x_t[1, 2] is -0.25, expected 0: is it sqrt(alpha_bar)?"


def test_expect_close_without_a_hint_and_on_a_scalar():
    with pytest.raises(CheckFailed) as failure:
        expect_close("loss", torch.tensor(0.5), torch.tensor(0.25))
    assert str(failure.value) == "your loss is 0.5, expected 0.25"


def test_expect_close_uses_relative_tolerance():
    expected = torch.tensor([1000.0])
    expect_close("big", torch.tensor([1000.05]), expected)  # 5e-5 relative: within rtol 1e-4
    with pytest.raises(CheckFailed, match=r"your big\[0\] is 1001"):
        expect_close("big", torch.tensor([1001.0]), expected)


@pytest.mark.parametrize("got, message", [
    (torch.zeros(2, 3), r"x has shape \(2, 3\), expected \(3, 2\)"),
    ([[0.0] * 2] * 3, "x should be a torch.Tensor, got list"),
    (torch.zeros(3, 2, dtype=torch.long), "x has dtype torch.int64, expected a floating-point tensor"),
    (torch.full((3, 2), float("nan")), "x contains NaN or infinite values"),
])
def test_expect_close_checks_the_tensor_first(got, message):
    with pytest.raises(CheckFailed, match=message):
        expect_close("x", got, torch.zeros(3, 2))


def test_expect_tensor_accepts_integer_tensors_when_told():
    labels = torch.tensor([1, 2])
    assert expect_tensor("labels", labels, (2,), dtype_floating=False) is labels


# ----------------------------------------------------------------------------- run_student

def test_run_student_returns_the_result_and_passes_arguments():
    assert run_student("add", lambda a, b=0: a + b, 2, b=3) == 5


def test_run_student_turns_not_implemented_into_feedback():
    def todo():
        raise NotImplementedError()

    with pytest.raises(CheckFailed, match="`make_schedule` is not implemented yet"):
        run_student("make_schedule", todo)


def test_run_student_turns_a_crash_into_feedback_naming_the_function_and_error():
    def crashes(x):
        return x @ torch.zeros(3, 3)

    with pytest.raises(CheckFailed, match=r"`add_noise` raised RuntimeError: .*") as failure:
        run_student("add_noise", crashes, torch.zeros(2, 2))
    assert isinstance(failure.value.__cause__, RuntimeError)


def test_run_student_lets_check_failures_through():
    def checks_inside():
        raise CheckFailed("inner message")

    with pytest.raises(CheckFailed) as failure:
        run_student("f", checks_inside)
    assert str(failure.value) == "inner message"


def test_expect_close_shows_enough_digits_to_see_the_difference():
    """Two values that agree to four digits are printed with as many more as it takes for them to differ."""
    with pytest.raises(CheckFailed) as failure:
        expect_close("loss", torch.tensor(-1.58912), torch.tensor(-1.58934))
    assert str(failure.value) == "your loss is -1.5891, expected -1.5893"


# ----------------------------------------------------------------------------- stage 1: cosine schedule, em_step


def _stage1_fails_with(check, student, hint: str, **case) -> str:
    with pytest.raises(CheckFailed) as failure:
        check(student, **case)
    assert hint in str(failure.value), str(failure.value)
    return str(failure.value)


def _stage1_verdict_without_answers(monkeypatch, check_function, student, **given) -> str:
    """The expected values with the answers; the probe with the answers refusing (as in a grading kernel),
    its outputs through torch.save/torch.load(weights_only=True); then the verdict."""

    from course_lib.checks.protocol import verdict

    entry = check_function.check
    case = entry.case(**given)

    inputs, expected = (round_trip(part) for part in entry.reference(**case))

    with monkeypatch.context() as patched:
        leave_out_answers(patched)
        outputs = round_trip(entry.run_probe((student,), inputs))
    return verdict(entry, case, inputs, outputs, expected)


def cosine_schedule_float32(num_steps, offset=0.008, max_beta=0.02, mistake=None):
    """A student's cosine schedule in float32 (the reference computes in float64), with one mistake if asked."""
    import math

    s = torch.arange(num_steps + 1) + (1 if mistake == "shift" else 0)
    o = 0.0 if mistake == "no_offset" else offset
    f = torch.cos((s / num_steps + o) / (1 + o) * math.pi / 2) ** (1 if mistake == "not_squared" else 2)
    betas = 1 - f[1:] / f[:-1]
    betas = {"unclipped": betas, "floor": betas.clamp(min=max_beta)}.get(mistake, betas.clamp(max=max_beta))
    alphas = 1 - betas
    alpha_bars = f[1:] / f[0] if mistake == "alpha_bars_from_f" else torch.cumprod(alphas, 0)
    return betas, alphas, alpha_bars


def test_cosine_schedule_check_passes_the_reference_and_float32():
    from course_lib.stages.noising.answers import cosine_schedule
    from course_lib.stages.noising.checks import check_cosine_schedule

    for case in ({}, {"num_steps": 1000}, {"num_steps": 1000, "max_beta": 0.999},
                 {"num_steps": 40, "offset": 0.02, "max_beta": 0.1}, {"num_steps": 1}):
        check_cosine_schedule(cosine_schedule, **case)
        check_cosine_schedule(cosine_schedule_float32, **case)


def test_cosine_schedule_check_needs_three_tables_of_length_T():
    from course_lib.stages.noising.checks import check_cosine_schedule

    _stage1_fails_with(check_cosine_schedule, lambda *a, **k: cosine_schedule_float32(*a, **k)[0], "three tensors")
    _stage1_fails_with(check_cosine_schedule, lambda n, **k: cosine_schedule_float32(n - 1, **k),
                       "betas has shape (299,), expected (300,)")
    _stage1_fails_with(check_cosine_schedule, lambda n, offset: cosine_schedule_float32(n, offset),
                       "unexpected keyword argument 'max_beta'")


def test_cosine_schedule_probe_runs_without_the_answers(monkeypatch):
    from course_lib.stages.noising.checks import check_cosine_schedule

    assert "91 of 300 betas" in _stage1_verdict_without_answers(monkeypatch, check_cosine_schedule,
                                                                 cosine_schedule_float32)
    with pytest.raises(CheckFailed, match="betas go above max_beta"):
        _stage1_verdict_without_answers(monkeypatch, check_cosine_schedule,
                                        lambda *a, **k: cosine_schedule_float32(*a, **k, mistake="unclipped"))


def em_step(x, t, dt, drift, diffusion, z):
    return x + drift(x, t) * dt + diffusion(x, t) * dt ** 0.5 * z


def test_em_step_check_passes_the_reference_and_a_student():
    from course_lib.stages.noising import answers as noising
    from course_lib.stages.noising.checks import check_em_step

    for case in ({}, {"num_paths": 3, "dt": 0.25, "seed": 5}, {"num_paths": 40, "dt": 0.001, "seed": 12}):
        check_em_step(noising.em_step, **case)
        check_em_step(em_step, **case)


def test_em_step_probe_runs_without_the_answers(monkeypatch):
    from course_lib.stages.noising.checks import check_em_step

    assert "3 paths, dt=0.25" in _stage1_verdict_without_answers(monkeypatch, check_em_step, em_step,
                                                                 num_paths=3, dt=0.25, seed=5)
    with pytest.raises(CheckFailed, match="needs sqrt"):
        _stage1_verdict_without_answers(monkeypatch, check_em_step,
                                        lambda x, t, dt, f, b, z: x + f(x, t) * dt + b(x, t) * z)
