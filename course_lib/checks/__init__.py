"""Immediate feedback for students: the check cells after each TODO call these.

A failed check raises :class:`CheckFailed`, whose message says what is wrong and what to look at
("your alpha_bars[10] is 0.97, expected 0.99: is it a cumulative product?"). In Jupyter and Colab it is
shown as that message alone, without a traceback. A passed check prints one short line.

Stage-specific checks live in the submodules (``course_lib.checks.noising`` and so on) and are built
from the helpers here.
"""

from __future__ import annotations

import contextlib
from typing import Callable

import torch


class CheckFailed(AssertionError):
    """A student's function gave a wrong answer; the message says what and why."""

    def _render_traceback_(self) -> list[str]:  # IPython shows this instead of a traceback
        return [f"\x1b[31m✗ {self}\x1b[0m"]


def passed(what: str) -> None:
    """Report a passed check in one line."""
    print(f"✓ {what}")


def run_student(name: str, function: Callable, *args, **kwargs):
    """Call the student's ``function``; turn a crash into a :class:`CheckFailed` that names it."""
    try:
        return function(*args, **kwargs)
    except NotImplementedError:
        raise CheckFailed(f"`{name}` is not implemented yet: replace `raise NotImplementedError()` with your code")
    except CheckFailed:
        raise
    except Exception as error:  # noqa: BLE001 - any crash of student code becomes feedback
        raise CheckFailed(f"`{name}` raised {type(error).__name__}: {error}") from error


def expect_tensor(name: str, value, shape: tuple | torch.Size, dtype_floating: bool = True) -> torch.Tensor:
    """Fail unless ``value`` is a tensor of ``shape`` (and floating-point, unless told otherwise)."""
    if not isinstance(value, torch.Tensor):
        raise CheckFailed(f"{name} should be a torch.Tensor, got {type(value).__name__}")
    if tuple(value.shape) != tuple(shape):
        raise CheckFailed(f"{name} has shape {tuple(value.shape)}, expected {tuple(shape)}")
    if dtype_floating and not value.is_floating_point():
        raise CheckFailed(f"{name} has dtype {value.dtype}, expected a floating-point tensor")
    if dtype_floating and not torch.isfinite(value).all():
        raise CheckFailed(f"{name} contains NaN or infinite values")
    return value


def expect_close(name: str, got: torch.Tensor, expected: torch.Tensor, hint: str = "",
                 atol: float = 1e-5, rtol: float = 1e-4) -> None:
    """Fail unless ``got`` matches ``expected``; the message names the worst entry and adds ``hint``."""
    got = expect_tensor(name, got, expected.shape).detach().float().cpu()
    expected = expected.detach().float().cpu()
    error = (got - expected).abs()
    if torch.all(error <= atol + rtol * expected.abs()):
        return
    worst = tuple(int(i) for i in torch.unravel_index(error.argmax(), error.shape))
    where = f"[{', '.join(map(str, worst))}]" if worst else ""
    message = f"your {name}{where} is {got[worst].item():.4g}, expected {expected[worst].item():.4g}"
    raise CheckFailed(f"{message}: {hint}" if hint else message)


def _refuse(*args, **kwargs):
    raise __import__("course_lib.checks", fromlist=["CheckFailed"]).CheckFailed(
        "this TODO must be written by you, not by calling the course_lib reference implementation")


@contextlib.contextmanager
def _forbid_one(reference):
    if isinstance(reference, type):
        original = reference.__dict__.get("__init__")
        reference.__init__ = _refuse
        try:
            yield
        finally:
            if original is None:
                del reference.__init__
            else:
                reference.__init__ = original
        return
    original_code = reference.__code__
    reference.__code__ = _refuse.__code__
    try:
        yield
    finally:
        reference.__code__ = original_code


@contextlib.contextmanager
def forbid(*references):
    """Within the block, any call of the ``references`` (course_lib functions or classes) raises :class:`CheckFailed`.

    Hidden tests wrap the student's function in it, so that a TODO solved by calling our reference,
    under any name it was imported as, earns nothing. Functions have their code swapped; classes
    their ``__init__``. Everything is restored on leaving the block.
    """
    with contextlib.ExitStack() as stack:
        for reference in references:
            stack.enter_context(_forbid_one(reference))
        yield
