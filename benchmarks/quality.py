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
from dataclasses import replace
from pathlib import Path

import torch
from torch import nn

from course_lib import checkpoints, quality, sampling
from course_lib.classifier import accuracy, load_classifier
from course_lib.data import DeviceImages, load_mnist
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


def main(argv: list[str] | None = None) -> int:
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
    args = parser.parse_args(argv)

    mode = args.mode or course_mode()
    device = pick_device()
    n = args.num_samples
    test = DeviceImages.from_dataset(load_mnist(train=False), device, "unit")
    train = DeviceImages.from_dataset(load_mnist(train=True), device, "signed", n)
    print(f"Run {args.run} ({mode!r} budgets) on {device}; {n} samples per row, seed {args.seed}")
    print(f"Reference classifier: test accuracy {accuracy(load_classifier(device), *test.first(len(test))):.4f} "
          f"on {len(test)} test digits")
    header = f"  {'sampler':<22}{'confidence':>11}{'FLD':>9}{'requested':>10}{'seconds':>10}"
    real_row = quality_row(f"real digits (N={len(train)})", train.first(len(train))[0], 0.0)

    def generator():
        return torch.Generator(device=device).manual_seed(args.seed)

    for stage in args.stages:
        loaded = load_stage(args.run, stage, mode, device)
        if loaded is None:
            print(f"\n{stage}: no checkpoint in {args.run / stage / 'checkpoints'}; skipped")
            continue
        model, epoch = loaded
        schedule = budget(stage, mode).schedule().to(device)
        steps = [s for s in args.steps if s <= schedule.num_steps]
        steps_text = f", T={schedule.num_steps}" if stage in ("ddpm", "cfg") else ""
        print(f"\n{stage} (epoch {epoch}, D={model.body.num_hiddens}{steps_text})")
        if stage == "denoiser":
            noisy = quality.denoiser_psnr(nn.Identity(), num_images=args.psnr_images, seed=args.seed, device=device)
            denoised = quality.denoiser_psnr(model, num_images=args.psnr_images, seed=args.seed)
            print(f"  {'sigma':>6}{'noisy PSNR':>12}{'denoised PSNR':>15}   (dB, {args.psnr_images} test digits)")
            for sigma, value in denoised.items():
                print(f"  {sigma:>6.1f}{noisy[sigma]:>12.2f}{value:>15.2f}")
            continue
        print(header)
        print(real_row)
        if stage == "ddpm":
            samples, seconds = timed(lambda: sampling.ddpm_sample(model, schedule, n, generator=generator()))
            print(quality_row(f"DDPM {schedule.num_steps} steps", samples, seconds))
            for count in steps:
                samples, seconds = timed(lambda: sampling.ddim_sample(model, schedule, n, count,
                                                                      generator=generator()))
                print(quality_row(f"DDIM {count} steps", samples, seconds))
        elif stage == "cfg":
            labels = torch.arange(10, device=device).repeat((n + 9) // 10)[:n]
            for guidance in args.guidance:
                samples, seconds = timed(lambda: sampling.cfg_sample(model, schedule, labels, guidance,
                                                                     generator=generator()))
                print(quality_row(f"guidance {guidance:g}", samples, seconds, labels))
        else:
            for count in args.steps:
                samples, seconds = timed(lambda: sampling.flow_sample(model, n, count, generator=generator()))
                print(quality_row(f"flow {count} Euler steps", samples, seconds))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
