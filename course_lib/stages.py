"""The stage registry: one entry per notebook of the course, read by everything else.

Runtime budgets, the training command, the benchmarks, the autograder's release and grading, and the student
packages all read this table; adding a stage is one :class:`Stage` entry plus its notebook in ``solutions/``.
An entry names its notebook, the stages it builds on, its TODO cells (each ``grade_id`` mapped to the names
it is graded against in the stage's answers module, :mod:`course_lib.answers`), and, for a stage that trains
a model, that model's builder, loss and sampler and its budgets in ``full`` and ``quick`` mode.

References to answers are strings (``"ddpm:TimeConditionalUNet"`` is ``TimeConditionalUNet`` of
``course_lib.answers.ddpm``), so this table imports in an installation that leaves answers out.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Callable, Mapping

import torch
from torch import nn

from . import answers
from .noise import COURSE_NUM_STEPS, DDPMSchedule, course_schedule
from .runtime import MODES, course_mode
from .validation import check_choice


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
        num_steps: T, the number of diffusion steps (ignored by the single-step denoiser).
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

    def schedule(self) -> DDPMSchedule:
        """The course's linear schedule with this budget's T (:func:`course_lib.noise.course_schedule`), on the CPU."""
        return course_schedule(self.num_steps)

    @property
    def lr_gamma(self) -> float:
        """The ExponentialLR factor: the rate ends 10x lower after the last epoch (1.0 when not decaying)."""
        return 0.1 ** (1 / self.epochs) if self.decay_lr else 1.0


@dataclass(frozen=True)
class Model:
    """The model a stage trains. ``builder``, ``loss`` and ``sampler`` are ``"<answers module>:<name>"``.

    Attributes:
        builder: the network class, built as ``builder(num_hiddens=D)``.
        loss: the training objective, called as ``loss(model, *inputs, generator=g)``.
        loss_inputs: the loss's arguments after the model, by name: ``"images"``, ``"labels"``, ``"schedule"``.
        sampler: what draws new images from the trained model (``None`` for the one-step denoiser).
        value_range: ``"unit"`` (images in [0, 1]) or ``"signed"`` ([-1, 1]).
        figures: the function of :mod:`course_lib.deliverables` that draws the trained model's figures.
    """

    builder: str
    loss: str
    loss_inputs: tuple[str, ...]
    sampler: str | None
    value_range: str
    figures: str


@dataclass(frozen=True)
class Stage:
    """One notebook of the course.

    Attributes:
        key: the short name (``"ddpm"``): the answers module, the command line's ``--stage``, checkpoint folders.
        notebook: the notebook and nbgrader assignment name (``"03_ddpm"``).
        title: one line for tables and READMEs.
        builds_on: keys of the stages whose pieces this notebook imports from course_lib.
        todos: each TODO cell's ``grade_id`` -> the names in ``course_lib.answers.<key>`` it is graded against.
        model: the model it trains (``None``: the stage trains nothing).
        budgets: ``{"full": ..., "quick": ...}`` (empty when the stage trains nothing).
        optional: not part of the graded core of the course.
    """

    key: str
    notebook: str
    title: str
    builds_on: tuple[str, ...]
    todos: Mapping[str, tuple[str, ...]]
    model: Model | None = None
    budgets: Mapping[str, StageBudget] = field(default_factory=dict)
    optional: bool = False

    @property
    def answers_module(self) -> str:
        """The dotted name of the module that holds this stage's answers."""
        return f"{answers.__name__}.{self.key}"


def _diffusion_budgets(**quick) -> dict[str, StageBudget]:
    """The assignment's budget of a diffusion stage, and its quick-mode counterpart."""
    return {"full": StageBudget(epochs=20, batch_size=128, num_hiddens=64, subset_size=None, learning_rate=1e-3,
                                decay_lr=True),
            "quick": StageBudget(epochs=2, batch_size=64, num_hiddens=16, subset_size=512, learning_rate=1e-3,
                                 decay_lr=True, eval_samples=100, **quick)}


STAGES: tuple[Stage, ...] = (
    Stage("noising", "01_noising", "Noising: Gaussian noise, the DDPM schedule and the forward process", (),
          {"add_noise": ("add_noise",), "ddpm_schedule": ("ddpm_schedule",), "cosine_schedule": ("cosine_schedule",),
           "q_sample": ("q_sample",), "em_step": ("em_step",)}),
    Stage("denoiser", "02_denoiser", "A one-step denoising UNet", ("noising",),
          {"operations": ("Conv", "DownConv", "UpConv", "Flatten", "Unflatten"),
           "blocks": ("ConvBlock", "DownBlock", "UpBlock"), "unet": ("UnconditionalUNet",),
           "loss_and_step": ("denoising_loss", "train_step"), "train_denoiser": ("train_denoiser",)},
          Model("denoiser:UnconditionalUNet", "denoiser:denoising_loss", ("images",), None, "unit",
                "denoised_digits"),
          {"full": StageBudget(epochs=5, batch_size=256, num_hiddens=128, subset_size=None, learning_rate=1e-4),
           "quick": StageBudget(epochs=2, batch_size=64, num_hiddens=16, subset_size=512, learning_rate=1e-3,
                                eval_samples=100)}),
    Stage("ddpm", "03_ddpm", "DDPM with a time-conditioned UNet", ("noising", "denoiser"),
          {"fc_block": ("FCBlock",), "time_conditional_unet": ("TimeConditionalUNet",), "ddpm_loss": ("ddpm_loss",),
           "ddpm_step": ("ddpm_step",), "ddpm_sample": ("ddpm_sample",)},
          Model("ddpm:TimeConditionalUNet", "ddpm:ddpm_loss", ("images", "schedule"), "ddpm:ddpm_sample", "signed",
                "ddpm_samples"),
          _diffusion_budgets(num_steps=50)),
    Stage("cfg", "04_cfg", "Class conditioning and classifier-free guidance", ("noising", "denoiser", "ddpm"),
          {"class_conditional_unet": ("ClassConditionalUNet",), "drop_labels": ("drop_labels",),
           "cfg_loss": ("class_conditional_loss",), "guided_eps": ("guided_eps",), "cfg_sample": ("cfg_sample",)},
          Model("cfg:ClassConditionalUNet", "cfg:class_conditional_loss", ("images", "labels", "schedule"),
                "cfg:cfg_sample", "signed", "guided_samples"),
          _diffusion_budgets(num_steps=50)),
    Stage("flow", "05_flow", "Rectified flow", ("noising", "denoiser", "ddpm"),
          {"flow_loss": ("flow_loss",), "flow_sample": ("flow_sample",)},
          Model("ddpm:TimeConditionalUNet", "flow:flow_loss", ("images",), "flow:flow_sample", "signed",
                "flow_samples"),
          _diffusion_budgets()),
    Stage("improved", "06_improved_unet", "Improve the UNet: sinusoidal time, residual blocks, self-attention",
          ("noising", "denoiser", "ddpm"),
          {"sinusoidal_embedding": ("sinusoidal_embedding",), "self_attention": ("SelfAttention",)},
          optional=True),
)
_BY_KEY = MappingProxyType({stage.key: stage for stage in STAGES})
NOTEBOOKS: tuple[str, ...] = tuple(stage.notebook for stage in STAGES)
TRAINING_STAGES: tuple[str, ...] = tuple(stage.key for stage in STAGES if stage.model is not None)


def get(name: str) -> Stage:
    """The stage whose key (``"ddpm"``) or notebook name (``"03_ddpm"``) is ``name``."""
    for stage in STAGES:
        if name in (stage.key, stage.notebook):
            return stage
    raise ValueError(f"`stage` must be one of {[s.key for s in STAGES]} (or a notebook name {list(NOTEBOOKS)}), "
                     f"got {name!r}")


def resolve(reference: str):
    """The object a ``"<answers module>:<name>"`` reference names (``"ddpm:ddpm_loss"``)."""
    module, name = reference.split(":")
    return getattr(answers.load(module), name)


def _training_stage(stage: str) -> Stage:
    check_choice("stage", stage, TRAINING_STAGES)
    return _BY_KEY[stage]


def budget(stage: str, mode: str | None = None) -> StageBudget:
    """The budget of training stage ``stage`` (one of ``TRAINING_STAGES``) in ``mode`` (default: ``COURSE_MODE``)."""
    entry = _training_stage(stage)
    mode = course_mode() if mode is None else mode
    check_choice("mode", mode, MODES)
    return entry.budgets[mode]


def value_range(stage: str) -> str:
    """``"unit"`` ([0, 1]) or ``"signed"`` ([-1, 1]): the images ``stage`` trains on."""
    return _training_stage(stage).model.value_range


def build_model(stage: str, stage_budget: StageBudget) -> nn.Module:
    """A freshly initialised model of ``stage`` with the budget's width."""
    return resolve(_training_stage(stage).model.builder)(num_hiddens=stage_budget.num_hiddens)


LossFunction = Callable[[nn.Module, torch.Tensor, torch.Tensor, torch.Generator], torch.Tensor]


def stage_loss(stage: str, schedule: DDPMSchedule) -> LossFunction:
    """The loss of ``stage`` as ``loss_fn(model, images, labels, generator)`` for :func:`~course_lib.training.train`.

    It calls the answer itself, without the argument checks of :mod:`course_lib.objectives`: a training step
    must not wait for the GPU to check values.
    """
    model = _training_stage(stage).model
    loss = resolve(model.loss)
    positions = tuple(("images", "labels", "schedule").index(name) for name in model.loss_inputs)

    def loss_fn(net: nn.Module, images: torch.Tensor, labels: torch.Tensor, generator: torch.Generator):
        available = (images, labels, schedule)
        return loss(net, *(available[i] for i in positions), generator=generator)

    return loss_fn

