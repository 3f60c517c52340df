"""``python -m course_lib train --stage {denoiser,ddpm,cfg,flow,all} [--mode quick|full]``.

Trains the reference model of each stage, writes its checkpoints, loss curve and sample grid into a run
folder, and prints one line per stage: epochs, training images per second, final loss, wall time.
"""

from __future__ import annotations

import argparse
import time
from datetime import datetime
from pathlib import Path

import matplotlib

from .runtime import MODES, course_mode, pick_device
from .stages import TRAINING_STAGES


def train_command(args: argparse.Namespace) -> int:
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    import torch

    from . import deliverables, plots
    from .runs import train_stage
    from .stages import get

    stages = TRAINING_STAGES if args.stage == "all" else (args.stage,)
    mode = args.mode or course_mode()
    device = pick_device()
    run_dir = Path(args.out or Path("runs") / datetime.now().strftime("%Y%m%d-%H%M%S"))
    print(f"Training {', '.join(stages)} in {mode!r} mode on {device}; writing to {run_dir}/")
    rows = []
    for stage in stages:
        started = time.perf_counter()
        trained = train_stage(stage, mode, device=device, checkpoint_dir=run_dir / stage / "checkpoints",
                              data_root=args.data_root, progress=not args.no_progress)
        train_seconds = time.perf_counter() - started
        generator = torch.Generator(device=device).manual_seed(0)
        losses_figure = plots.plot_losses(trained.losses, f"{stage}: training and validation loss")
        figures = {"loss.png": losses_figure,
                   **getattr(deliverables, get(stage).model.figures)(trained, generator, args.data_root)}
        for name, figure in figures.items():
            figure.savefig(run_dir / stage / name, dpi=120)
            plt.close(figure)
        rows.append((stage, trained.budget.epochs, trained.num_images / train_seconds, trained.losses[-1],
                     time.perf_counter() - started))
    print(f"\n{'stage':<10}{'epochs':>7}{'images/s':>11}{'final loss':>12}{'wall s':>9}")
    for stage, epochs, speed, loss, wall in rows:
        print(f"{stage:<10}{epochs:>7}{speed:>11.0f}{loss:>12.4f}{wall:>9.1f}")
    print(f"\nFigures and checkpoints are in {run_dir}/")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m course_lib", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    train = commands.add_parser("train", help="train the reference model of one stage or all of them")
    train.add_argument("--stage", choices=(*TRAINING_STAGES, "all"), required=True)
    train.add_argument("--mode", choices=MODES, help="budget to use (default: $COURSE_MODE, else full)")
    train.add_argument("--out", help="run folder (default: runs/<date-time>)")
    train.add_argument("--data-root", help="MNIST root (default: $COURSE_DATA_DIR or a cache folder)")
    train.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    args = parser.parse_args(argv)
    return train_command(args)
