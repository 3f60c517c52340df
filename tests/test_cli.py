"""``python -m course_lib train``: one quick stage end to end as a subprocess, and argument errors in process."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from course_lib import checkpoints
from course_lib.cli import main
from course_lib.data import VALIDATION_FRACTION
from course_lib.stages import budget

REPO_ROOT = Path(__file__).resolve().parent.parent


def test_train_denoiser_quick_writes_figures_checkpoints_and_the_table(mnist_root, tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "COURSE_DATA_DIR": str(mnist_root), "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
    result = subprocess.run(
        [sys.executable, "-m", "course_lib", "train", "--stage", "denoiser", "--mode", "quick", "--out", str(out),
         "--no-progress"],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr

    for name in ("loss.png", "denoised.png"):
        with Image.open(out / "denoiser" / name) as image:
            assert image.format == "PNG" and image.width > 200 and image.height > 100
    quick = budget("denoiser", "quick")
    saved = [epoch for epoch, _ in checkpoints.list_checkpoints(out / "denoiser" / "checkpoints")]
    assert saved == list(range(1, quick.epochs + 1))[-2:], "one checkpoint per epoch, the newest two kept"
    state = checkpoints.load_latest(out / "denoiser" / "checkpoints")
    assert state["epoch"] == quick.epochs
    trained_on = quick.subset_size - round(quick.subset_size * VALIDATION_FRACTION)  # the rest is held out
    assert len(state["losses"]) == quick.epochs * (trained_on // quick.batch_size)
    assert len(state["validation_losses"]) == quick.epochs, "the loss on the held-out digits after every epoch"
    assert torch.isfinite(torch.tensor(state["validation_losses"])).all()

    assert "in 'quick' mode" in result.stdout and str(out) in result.stdout
    header = re.search(r"^stage\s+epochs\s+images/s\s+final loss\s+wall s$", result.stdout, re.MULTILINE)
    assert header, result.stdout
    row = re.search(r"^denoiser\s+(\d+)\s+(\d+)\s+([\d.]+)\s+([\d.]+)$", result.stdout, re.MULTILINE)
    assert row, result.stdout
    epochs, speed, final_loss, wall = row.groups()
    assert int(epochs) == quick.epochs and int(speed) > 0 and float(wall) > 0
    assert float(final_loss) == pytest.approx(state["losses"][-1], abs=5e-5), "the table shows the last step's loss"
    assert torch.isfinite(torch.tensor(state["losses"])).all()


@pytest.mark.parametrize("argv, message", [
    (["train", "--stage", "gan"], "invalid choice: 'gan'"),
    (["train", "--stage", "ddpm", "--mode", "slow"], "invalid choice: 'slow'"),
    (["train"], "the following arguments are required: --stage"),
    ([], "the following arguments are required: command"),
])
def test_bad_arguments_exit_with_a_usage_message(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
