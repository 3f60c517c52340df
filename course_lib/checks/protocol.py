"""Checks in three parts, so that a verdict never depends on code that runs beside the student's.

Every check of the course is one :class:`Check`:

- ``reference(**case) -> (inputs, expected)`` builds the inputs of one case (seeded tensors, weights to load)
  and what the reference gives on them, with the outputs of known mistakes for hints. It needs the answers
  and lives in each stage's ``reference.py`` (reached through ``REFERENCE``, :class:`course_lib.stages.stage.ReferenceCase`):
  it runs in the grader, and when a student package is built, whose fixtures then hold the visible cases' inputs
  and expected values.
- ``probe(*student_objects, inputs=...) -> outputs`` runs the student's code on the inputs and returns what it
  gave (tensors, numbers, strings). It is the only part that runs student code, and it never sees ``expected``.
- ``judge(case, inputs, outputs, expected) -> message`` compares. It raises :class:`CheckFailed` with a hint,
  or returns the one-line "passed" message.
- ``devices(*student_objects, inputs=...) -> message or None`` (optional, for code that takes a model or tensors)
  runs the student's code once more with them on another device (:mod:`course_lib.checks.devices`). The probe
  records its message, and a check whose values pass fails with it.

In a notebook, ``check_add_noise(add_noise, seed=3)`` runs all three in one process (:meth:`Check.run`). When
grading, the kernel only runs the probes (:func:`record`, which shows the outputs as the cell's output), and the
grader, in its own process, computes the expected values and judges (``autograder/execute/verdicts.py``).

A check is declared by decorating its notebook signature: the parameters without defaults are the student's
objects, those with defaults the case::

    @check(reference=REFERENCE.add_noise_case, probe=_add_noise_probe, judge=_add_noise_judge)
    def check_add_noise(add_noise, shape=(4, 1, 28, 28), sigma=0.5, seed=0):
        '''Check add_noise(x, sigma, generator) ...'''
"""

from __future__ import annotations

import base64
import contextlib
import functools
import inspect
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

import torch

from .harness import CheckFailed, passed

CHECKS: dict[str, "Check"] = {}
FIXTURES_FILE = Path(__file__).with_name("fixtures.pt")
CHECKS_FOLDER = ".checks"  # inside the notebook's folder while grading: the probes' inputs


@dataclass(frozen=True)
class Check:
    """One check: its notebook name, its module, its three parts, its student arguments and its case parameters
    with defaults."""

    name: str
    module: str
    reference: Callable[..., tuple[dict, dict]]
    probe: Callable[..., dict]
    judge: Callable[[dict, dict, dict, dict], str]
    students: tuple[str, ...]
    defaults: Mapping[str, object]
    devices: Callable[..., str | None] | None = None

    def case(self, **given) -> dict:
        """The full case: the defaults updated with ``given`` (unknown names are an error)."""
        unknown = set(given) - set(self.defaults)
        if unknown:
            raise TypeError(f"{self.name}() got unexpected arguments {sorted(unknown)}; "
                            f"its case parameters are {list(self.defaults)}")
        return {**self.defaults, **given}

    def expectations(self, case: dict) -> tuple[dict, dict]:
        """``(inputs, expected)`` of ``case``: from the package's fixtures when it holds them, else the reference."""
        stored = _fixtures().get(case_key(self.name, case))
        if stored is not None:
            return stored["inputs"], stored["expected"]
        return compact(self.reference(**case))

    def run_probe(self, students: tuple, inputs: dict) -> dict:
        """The probe's outputs, or ``{"failed": message}`` when the student's code failed in a way that says why;
        with the message of the device run under ``"devices"`` (None when it found nothing) when the check has one."""
        try:
            outputs = compact(self.probe(*students, inputs=inputs))
        except CheckFailed as failure:
            return {"failed": str(failure)}
        if self.devices is not None:
            outputs["devices"] = self.devices(*students, inputs=inputs)
        return outputs

    def run(self, students: tuple, **given) -> None:
        """The whole check in this process: expectations, probe, judge; prints the passed line or raises."""
        case = self.case(**given)
        inputs, expected = self.expectations(case)
        with one_thread():
            outputs = self.run_probe(students, inputs)
        passed(verdict(self, case, inputs, outputs, expected))


def compact(value):
    """``value`` with every tensor copied into storage of its own size.

    ``torch.save`` writes a tensor's whole storage, and a tensor's storage can be larger than the tensor: a view,
    or a scalar loss whose reduction left a 25 kB buffer behind, whose bytes past the data were never written and
    hold whatever that memory held before (text of the notebooks, for instance). Everything this protocol saves
    (grading inputs, records, a package's fixtures) goes through here first.
    """
    if isinstance(value, torch.Tensor):
        return value.detach().clone(memory_format=torch.contiguous_format)
    if isinstance(value, dict):
        return {key: compact(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(compact(item) for item in value)
    return value


def verdict(check: Check, case: dict, inputs: dict, outputs: dict, expected: dict) -> str:
    """Judge ``outputs``: the passed message, or :class:`CheckFailed` (also for outputs that are not what the
    probe writes, such as a record forged or cut short by the student's code). The values come first; a device
    mistake fails a check whose values are right."""
    if not isinstance(outputs, dict):
        raise CheckFailed(f"{check.name}: no usable result was recorded")
    if "failed" in outputs:
        raise CheckFailed(str(outputs["failed"]))
    try:
        message = check.judge(case, inputs, outputs, expected)
    except CheckFailed:
        raise
    except (KeyError, TypeError, ValueError, IndexError, AttributeError, RuntimeError) as error:
        raise CheckFailed(f"{check.name}: the recorded result is incomplete or malformed "
                          f"({type(error).__name__}: {error})") from None
    if check.devices is not None and outputs.get("devices") is not None:
        raise CheckFailed(str(outputs["devices"]))
    return message


def check(*, reference: Callable, probe: Callable, judge: Callable,
          devices: Callable | None = None) -> Callable[[Callable], Callable]:
    """Declare a check from its notebook signature (see the module docstring); registers it in :data:`CHECKS`."""
    def declare(signature_only: Callable) -> Callable:
        parameters = inspect.signature(signature_only).parameters.values()
        students = tuple(p.name for p in parameters if p.default is inspect.Parameter.empty)
        defaults = {p.name: p.default for p in parameters if p.default is not inspect.Parameter.empty}
        entry = Check(signature_only.__name__, signature_only.__module__, reference, probe, judge, students,
                      defaults, devices)
        CHECKS[entry.name] = entry

        @functools.wraps(signature_only)
        def run(*students, **given) -> None:
            if len(students) != len(entry.students):
                raise TypeError(f"{entry.name}() takes your {', '.join(entry.students)}, got {len(students)} "
                                "arguments")
            entry.run(students, **given)

        run.check = entry
        return run
    return declare


@contextlib.contextmanager
def one_thread():
    """Run the block with one torch thread (the checks' models are tiny; extra threads only wait)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def case_key(name: str, case: Mapping) -> str:
    """A stable text key of one case: ``check_add_noise(seed=0, shape=(4, 1, 28, 28), sigma=0.5)``."""
    def plain(value):
        return tuple(plain(v) for v in value) if isinstance(value, (list, tuple)) else value
    return f"{name}({', '.join(f'{k}={plain(v)!r}' for k, v in sorted(case.items()))})"


@functools.lru_cache(maxsize=1)
def _fixtures() -> dict:
    """The stored ``{case key: {"inputs", "expected"}}`` of a student package (empty in the full library)."""
    if not FIXTURES_FILE.exists():
        return {}
    return torch.load(FIXTURES_FILE, weights_only=True)


# ------------------------------------------------------------------------------ the grading kernel's side

RECORD_MIME = "application/vnd.course-check-record+base64"  # the probe cell's one output while grading


def record(cell: str, calls: list[tuple[str, Callable[[], tuple]]]) -> None:
    """Run the probes of one test cell in the grading kernel and show what the student's code gave.

    ``calls`` pairs each check's name with a function returning the student's objects (so that a missing name
    is recorded as that call's failure). The inputs come from ``.checks/<cell>.inputs.pt``, written by the
    grader; the outputs leave the kernel as the cell's output (``torch.save`` bytes, base64, of type
    :data:`RECORD_MIME`), which the grader reads from the executed notebook and judges. Nothing here decides a
    verdict.
    """
    inputs = torch.load(Path(CHECKS_FOLDER) / f"{cell}.inputs.pt", weights_only=True)
    results = []
    for (name, students), call_inputs in zip(calls, inputs):
        try:
            objects = students()
        except NameError as error:
            results.append({"failed": f"{error}: run the cell that defines it (and keep its name)"})
            continue
        with one_thread():
            results.append(CHECKS[name].run_probe(objects, call_inputs))
    buffer = io.BytesIO()
    torch.save(results, buffer)
    show_record(base64.b64encode(buffer.getvalue()).decode("ascii"))


def show_record(payload: str) -> None:
    """Display the record as the cell's output (IPython's display, raw, so no other representation is added)."""
    from IPython.display import display

    display({RECORD_MIME: payload}, raw=True)
