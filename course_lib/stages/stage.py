"""What a stage of the course is: :class:`Stage`, its model (:class:`Model`) and its budgets (:class:`StageBudget`).

Each stage is one package, ``course_lib/stages/<key>/``, split into files by who may see them:

- ``__init__.py``: its :class:`Stage` entry, ``STAGE`` (given);
- ``api.py``: the public, checked names built on its answers (given; re-exported by ``course_lib.noise``,
  ``models``, ``objectives`` and ``sampling``);
- ``checks.py``: what students run after each TODO: the probe and the judge of every check (given);
- ``answers.py``: the reference of every TODO of the stage, and nothing else (left out of the student package and
  the grading view of this stage and every earlier one);
- ``reference.py``: the checks' reference side, which builds each case's inputs and expected values with the
  answers (it never leaves the grader: no student package or grading kernel has it).

A :class:`Stage` imports its answers, checks and reference modules only when asked (:attr:`Stage.answers`, ...),
so every stage entry imports in an installation that leaves some of them out.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from types import ModuleType
from typing import Callable, Mapping

COURSE_NUM_STEPS = 300  # T of the course; Ho et al. use 1000


class AnswerNotIncluded(ImportError):
    """The reference of a student exercise was asked for in an installation that leaves it out."""


@dataclass(frozen=True)
class StageBudget:
    """How much one stage trains in one mode.

    Attributes:
        epochs: passes over the training images.
        batch_size: images per optimizer step.
        num_hiddens: D, the UNet width.
        subset_size: number of MNIST training images drawn, before :func:`course_lib.data.validation_split` holds
            out one in twelve of them for validation (``None``: all 60,000, so 55,000 train).
        learning_rate: Adam's learning rate.
        num_steps: T, the number of diffusion steps (ignored by the single-step denoiser); the schedule is
            ``course_lib.noise.course_schedule(num_steps)``.
        decay_lr: multiply the learning rate by ``0.1 ** (1 / epochs)`` after each epoch.
        eval_samples: how many samples a notebook draws to measure quality (course_lib.quality).
    """

    epochs: int
    batch_size: int
    num_hiddens: int
    subset_size: int | None
    learning_rate: float
    num_steps: int = COURSE_NUM_STEPS
    decay_lr: bool = False
    eval_samples: int = 1000

    @property
    def lr_gamma(self) -> float:
        """The ExponentialLR factor: the rate ends 10x lower after the last epoch (1.0 when not decaying)."""
        return 0.1 ** (1 / self.epochs) if self.decay_lr else 1.0


def diffusion_budgets(**quick) -> dict[str, StageBudget]:
    """The assignment's budget of a diffusion stage (``"full"``), and its ``"quick"`` counterpart."""
    return {"full": StageBudget(epochs=20, batch_size=128, num_hiddens=64, subset_size=None, learning_rate=1e-3,
                                decay_lr=True),
            "quick": StageBudget(epochs=2, batch_size=64, num_hiddens=16, subset_size=512, learning_rate=1e-3,
                                 decay_lr=True, eval_samples=100, **quick)}


@dataclass(frozen=True)
class Model:
    """The model a stage trains. ``builder``, ``loss`` and ``sampler`` return what they name when called (so the entry
    imports without the answers).

    Attributes:
        builder: returns the network class, built as ``cls(num_hiddens=D)``.
        loss: returns the training objective, called as ``loss(model, *inputs, generator=g)``.
        loss_inputs: the loss's arguments after the model, by name: ``"images"``, ``"labels"``, ``"schedule"``.
        sampler: returns the stage's public, checked sampler (its ``api``), which draws new images from the trained
            model, e.g. ``ddpm_sample`` (``None`` for the one-step denoiser).
        value_range: ``"unit"`` (images in [0, 1]) or ``"signed"`` ([-1, 1]).
        figures: the name of the function of :mod:`course_lib.deliverables` that draws the trained model's figures.
    """

    builder: Callable[[], type]
    loss: Callable[[], Callable]
    loss_inputs: tuple[str, ...]
    sampler: Callable[[], Callable] | None
    value_range: str
    figures: str


@dataclass(frozen=True)
class Stage:
    """One notebook of the course and everything about it.

    Attributes:
        key: the short name (``"ddpm"``): the command line's ``--stage``, checkpoint folders.
        notebook: the notebook and nbgrader assignment name (``"03_ddpm"``).
        title: one line for tables and READMEs.
        package: the stage's package (``"course_lib.stages.ddpm"``), whose files are described above.
        builds_on: keys of the stages whose pieces this notebook imports from course_lib.
        todos: each TODO cell's ``grade_id`` -> the names in the stage's answers it is graded against.
        classes: the networks of its answers that ``course_lib.models`` hands out by name.
        model: the model it trains (``None``: the stage trains nothing).
        budgets: ``{"full": ..., "quick": ...}`` (empty when the stage trains nothing).
        optional: not part of the graded core of the course.
    """

    key: str
    notebook: str
    title: str
    package: str
    builds_on: tuple[str, ...]
    todos: Mapping[str, tuple[str, ...]]
    classes: tuple[str, ...] = ()
    model: Model | None = None
    budgets: Mapping[str, StageBudget] = field(default_factory=dict)
    optional: bool = False

    @property
    def grading_budget(self) -> StageBudget | None:
        """What a grading kernel trains at: the ``quick`` budget (the autograder runs with ``COURSE_MODE=quick``)."""
        return self.budgets.get("quick")

    @property
    def answers(self) -> ModuleType:
        """The stage's answers; :class:`AnswerNotIncluded` where this installation leaves them out."""
        return self._part("answers", "the reference answers", "that is an exercise you write yourself (or its "
                          "solutions are not released yet). Use your own function from the notebook.")

    @property
    def reference(self) -> ModuleType:
        """The reference side of the stage's checks; :class:`AnswerNotIncluded` outside the grader."""
        return self._part("reference", "the reference side of the checks", "a student package holds the expected "
                          "results of the notebook's own check calls only: call the check as its cell does.")

    @property
    def checks(self) -> ModuleType:
        """The stage's checks (every installation has them)."""
        return importlib.import_module(f"{self.package}.checks")

    @property
    def api(self) -> ModuleType:
        """The stage's public, checked names."""
        return importlib.import_module(f"{self.package}.api")

    def _part(self, module: str, what: str, advice: str) -> ModuleType:
        name = f"{self.package}.{module}"
        try:
            return importlib.import_module(name)
        except ModuleNotFoundError as error:
            if error.name != name:
                raise
            raise AnswerNotIncluded(f"this installation of course_lib leaves out {what} of stage {self.key!r}: "
                                    f"{advice}") from None


class ReferenceCase:
    """``REFERENCE.add_noise_case`` in a checks module: the function ``add_noise_case`` of the stage's
    ``reference.py``, imported only when a case is computed (so the checks import where it is left out)."""

    def __init__(self, stage: Stage):
        self._stage = stage

    def __getattr__(self, name: str) -> Callable[..., tuple[dict, dict]]:
        stage = self._stage

        def build_case(**case) -> tuple[dict, dict]:
            return getattr(stage.reference, name)(**case)

        build_case.__name__ = build_case.__qualname__ = name
        return build_case
