"""Sample quality of trained checkpoints, stage by stage, measured with course_lib.quality.

Reads the newest checkpoint of each stage in a run folder of ``python -m course_lib train``
(``<run>/<stage>/checkpoints/epoch-NNN.pt``, weights under the key ``"model"``) and prints:

  denoiser  PSNR (dB) on test digits at each sigma of SYLLABUS.md, beside the noisy input's PSNR
  ddpm      classifier confidence and Frechet LeNet distance (FLD) of DDPM samples (all T steps), and of
            DDIM samples against the number of sampling steps
  cfg       fraction classified as the requested digit, confidence and FLD at guidance 0, 1, 3, 5, 7
  flow      confidence and FLD of rectified-flow samples against the number of Euler steps

plus two reference rows: the classifier's test accuracy, and the FLD of as many *real* training digits
(the floor an ideal generator would reach at that sample count).

    python -m course_lib train --stage all --out runs/full                 # on a GPU, the full budgets
    python benchmarks/quality.py runs/full --num-samples 1000
    python benchmarks/quality.py runs/quick --mode quick --num-samples 200 --steps 5 10 25 50   # CPU smoke run
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Iterator

import torch
from torch import nn

from course_lib import checkpoints, quality, sampling, stages
from course_lib.classifier import accuracy, load_classifier
from course_lib.data import DeviceImages, load_mnist
from course_lib.noise import course_schedule
from course_lib.runtime import MODES, course_mode, pick_device
from course_lib.stages import TRAINING_STAGES, budget, build_model

DEFAULT_STEPS = (5, 10, 25, 50, 100, 300)
DEFAULT_GUIDANCE = (0.0, 1.0, 3.0, 5.0, 7.0)


def load_stage(run_dir: Path, stage: str, mode: str, device: torch.device) -> tuple[nn.Module, int] | None:
    """The newest checkpoint's model of ``stage`` (width read from the weights) and its epoch, or ``None``."""
    state = checkpoints.load_latest(run_dir / stage / "checkpoints", map_location=device)
    if state is None:
        return None
    weights = state["model"]
    width = weights["body.head.weight"].shape[1]
    model = build_model(stage, replace(budget(stage, mode), num_hiddens=width)).to(device)
    model.load_state_dict(weights)
    return model.eval(), state["epoch"]


def quality_row(name: str, samples: torch.Tensor, seconds: float, labels: torch.Tensor | None = None) -> str:
    numbers = quality.sample_quality(samples)
    accuracy_text = f"{quality.guidance_accuracy(samples, labels):>10.3f}" if labels is not None else f"{'':>10}"
    return (f"  {name:<22}{numbers['confidence']:>11.3f}{numbers['frechet_distance']:>9.2f}{accuracy_text}"
            f"{seconds:>10.1f}")


def timed(sample):
    started = time.perf_counter()
    samples = sample()
    return samples, time.perf_counter() - started


@dataclass
class Evaluation:
    """What every stage's rows need: the options, the device, the reference rows and fresh seeded generators."""

    args: argparse.Namespace
    device: torch.device
    real_row: str

    @property
    def n(self) -> int:
        return self.args.num_samples

    def generator(self) -> torch.Generator:
        return torch.Generator(device=self.device).manual_seed(self.args.seed)

    def sample_table(self) -> Iterator[str]:
        """The header and the real digits' row that open every table of samples."""
        yield f"  {'sampler':<22}{'confidence':>11}{'FLD':>9}{'requested':>10}{'seconds':>10}"
        yield self.real_row


def psnr_rows(model: nn.Module, schedule: nn.Module, run: Evaluation) -> Iterator[str]:
    """The denoiser: PSNR of the noisy input and of the denoised digits at each sigma."""
    images, seed = run.args.psnr_images, run.args.seed
    noisy = quality.denoiser_psnr(nn.Identity(), num_images=images, seed=seed, device=run.device)
    denoised = quality.denoiser_psnr(model, num_images=images, seed=seed)
    yield f"  {'sigma':>6}{'noisy PSNR':>12}{'denoised PSNR':>15}   (dB, {images} test digits)"
    for sigma, value in denoised.items():
        yield f"  {sigma:>6.1f}{noisy[sigma]:>12.2f}{value:>15.2f}"


def ddpm_rows(model: nn.Module, schedule: nn.Module, run: Evaluation) -> Iterator[str]:
    """DDPM samples with all T steps, then DDIM samples with each step count up to T."""
    yield from run.sample_table()
    samples, seconds = timed(lambda: sampling.ddpm_sample(model, schedule, run.n, generator=run.generator()))
    yield quality_row(f"DDPM {schedule.num_steps} steps", samples, seconds)
    for count in [s for s in run.args.steps if s <= schedule.num_steps]:
        samples, seconds = timed(lambda: sampling.ddim_sample(model, schedule, run.n, count,
                                                              generator=run.generator()))
        yield quality_row(f"DDIM {count} steps", samples, seconds)


def guidance_rows(model: nn.Module, schedule: nn.Module, run: Evaluation) -> Iterator[str]:
    """Class-conditional samples of the digits 0-9 in turn at each guidance weight."""
    yield from run.sample_table()
    labels = torch.arange(10, device=run.device).repeat((run.n + 9) // 10)[:run.n]
    for guidance in run.args.guidance:
        samples, seconds = timed(lambda: sampling.cfg_sample(model, schedule, labels, guidance,
                                                             generator=run.generator()))
        yield quality_row(f"guidance {guidance:g}", samples, seconds, labels)


def flow_rows(model: nn.Module, schedule: nn.Module, run: Evaluation) -> Iterator[str]:
    """Rectified-flow samples with each number of Euler steps."""
    yield from run.sample_table()
    for count in run.args.steps:
        samples, seconds = timed(lambda: sampling.flow_sample(model, run.n, count, generator=run.generator()))
        yield quality_row(f"flow {count} Euler steps", samples, seconds)


# The rows of each training stage (every key of TRAINING_STAGES), printed under the stage's title line.
STAGE_ROWS: dict[str, Callable[[nn.Module, nn.Module, Evaluation], Iterator[str]]] = {
    "denoiser": psnr_rows, "ddpm": ddpm_rows, "cfg": guidance_rows, "flow": flow_rows}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="run folder of `python -m course_lib train`")
    parser.add_argument("--mode", choices=MODES, help="budget the run was trained with, for T "
                                                      "(default: $COURSE_MODE, else full)")
    parser.add_argument("--stages", nargs="+", choices=TRAINING_STAGES, default=list(TRAINING_STAGES))
    parser.add_argument("--num-samples", type=int, default=1000, help="samples per row (default 1000)")
    parser.add_argument("--steps", nargs="+", type=int, default=list(DEFAULT_STEPS),
                        help="sampling-step counts for DDIM and rectified flow")
    parser.add_argument("--guidance", nargs="+", type=float, default=list(DEFAULT_GUIDANCE))
    parser.add_argument("--psnr-images", type=int, default=1000, help="test digits for the denoiser's PSNR")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def references(args: argparse.Namespace, mode: str, device: torch.device) -> Evaluation:
    """Print the run's line and the classifier's accuracy; the evaluation with the real digits' row."""
    n = args.num_samples
    test = DeviceImages.from_dataset(load_mnist(train=False), device, "unit")
    train = DeviceImages.from_dataset(load_mnist(train=True), device, "signed", n)
    print(f"Run {args.run} ({mode!r} budgets) on {device}; {n} samples per row, seed {args.seed}")
    print(f"Reference classifier: test accuracy {accuracy(load_classifier(device), *test.first(len(test))):.4f} "
          f"on {len(test)} test digits")
    real_row = quality_row(f"real digits (N={len(train)})", train.first(len(train))[0], 0.0)
    return Evaluation(args, device, real_row)


def evaluate_stage(stage: str, mode: str, run: Evaluation) -> None:
    """The stage's title line and its rows, or a line saying that the run has no checkpoint of it."""
    run_dir = run.args.run
    loaded = load_stage(run_dir, stage, mode, run.device)
    if loaded is None:
        print(f"\n{stage}: no checkpoint in {run_dir / stage / 'checkpoints'}; skipped")
        return
    model, epoch = loaded
    schedule = course_schedule(budget(stage, mode).num_steps).to(run.device)
    uses_schedule = "schedule" in stages.get(stage).model.loss_inputs  # trained on the DDPM schedule: show its T
    steps_text = f", T={schedule.num_steps}" if uses_schedule else ""
    print(f"\n{stage} (epoch {epoch}, D={model.body.num_hiddens}{steps_text})")
    for line in STAGE_ROWS[stage](model, schedule, run):
        print(line)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    mode = args.mode or course_mode()
    run = references(args, mode, pick_device())
    for stage in args.stages:
        evaluate_stage(stage, mode, run)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
