"""course_lib.plots: every figure has a title and labelled axes; the grid places each image; GIFs have their frames."""

from __future__ import annotations

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from PIL import Image, ImageSequence

from course_lib import plots
from course_lib.noise import DDPMSchedule, euler_maruyama


@pytest.fixture(autouse=True)
def headless_figures():
    """Draw without a display; close every figure after each test."""
    matplotlib.use("Agg")
    yield
    plt.close("all")


def random_images(count: int, seed: int = 0, size: int = 28) -> torch.Tensor:
    return torch.rand(count, 1, size, size, generator=torch.Generator().manual_seed(seed))


def tick_labels(axis) -> list[str]:
    return [label.get_text() for label in axis.get_ticklabels()]


# ----------------------------------------------------------------------------- image grids

def test_image_grid_places_each_image_row_by_row():
    images = torch.arange(5, dtype=torch.float32).view(5, 1, 1, 1).expand(5, 1, 3, 4) / 10
    grid = plots.image_grid(images, ncols=2, pad=1)
    assert grid.shape == (3 * 4 - 1, 2 * 5 - 1)
    for i in range(5):
        row, col = divmod(i, 2)
        cell = grid[row * 4: row * 4 + 3, col * 5: col * 5 + 4]
        assert torch.allclose(cell, torch.full((3, 4), i / 10))
    assert torch.all(grid[3, :] == 1.0), "padding is white"
    assert torch.all(grid[8:, 5:] == 1.0), "the missing sixth cell is white"


def test_image_grid_maps_signed_images_to_unit():
    images = torch.tensor([-1.0, 0.0, 1.0, 3.0]).view(4, 1, 1, 1)
    assert plots.image_grid(images, 4, "signed", pad=0).tolist() == [[0.0, 0.5, 1.0, 1.0]]
    assert plots.image_grid(images, 4, "unit", pad=0).tolist() == [[0.0, 0.0, 1.0, 1.0]]
    with pytest.raises(ValueError, match="`value_range`"):
        plots.image_grid(images, 4, "0-255")
    with pytest.raises(ValueError, match="`images`"):
        plots.image_grid(images[:, 0], 4)


def test_show_images_title_and_labels():
    fig = plots.show_images(random_images(6), "Six digits", ncols=3, row_labels=["a", "b"],
                            col_labels=["x", "y", "z"])
    ax, = fig.axes
    assert isinstance(fig, plt.Figure) and ax.get_title() == "Six digits"
    assert tick_labels(ax.xaxis) == ["x", "y", "z"] and tick_labels(ax.yaxis) == ["a", "b"]
    assert ax.images[0].get_array().shape == (2 * 30 - 2, 3 * 30 - 2)


def test_noising_figure_has_one_column_per_sigma():
    fig = plots.plot_noising(random_images(2), generator=torch.Generator().manual_seed(0))
    ax, = fig.axes
    assert ax.get_title()
    assert tick_labels(ax.xaxis) == [f"sigma={s:g}" for s in plots.DEFAULT_SIGMAS]
    assert ax.images[0].get_array().shape == (2 * 30 - 2, len(plots.DEFAULT_SIGMAS) * 30 - 2)


def test_forward_process_figure_has_one_column_per_timestep():
    fig = plots.plot_forward_process(random_images(2) * 2 - 1, DDPMSchedule(300), [0, 50, 299],
                                     generator=torch.Generator().manual_seed(0))
    ax, = fig.axes
    assert ax.get_title() and tick_labels(ax.xaxis) == ["t=0", "t=50", "t=299"]


def test_digit_samples_figure_has_one_column_per_digit():
    labels = torch.arange(10).repeat(4)
    fig = plots.plot_digit_samples(random_images(40) * 2 - 1, labels, "Guided samples")
    ax, = fig.axes
    assert ax.get_title() == "Guided samples" and ax.get_xlabel() == "digit asked for" and ax.get_ylabel() == "sample"
    assert tick_labels(ax.xaxis) == [str(d) for d in range(10)]
    assert ax.images[0].get_array().shape == (4 * 30 - 2, 10 * 30 - 2)


def test_digit_samples_columns_hold_their_digit():
    """Sample i of digit d sits at row i, column d: give every sample the value of its digit and read the grid."""
    labels = torch.tensor([2, 0, 1, 0, 2, 1])
    samples = (labels.float() / 2).view(6, 1, 1, 1).expand(6, 1, 28, 28) * 2 - 1
    grid = plots.plot_digit_samples(samples, labels, "t").axes[0].images[0].get_array()
    for column, digit in enumerate([0, 1, 2]):
        for row in range(2):
            assert float(grid[row * 30 + 5, column * 30 + 5]) == pytest.approx(digit / 2)


# ----------------------------------------------------------------------------- line plots

def axis_labels(fig) -> tuple[str, str, str]:
    ax, = fig.axes
    return ax.get_title(), ax.get_xlabel(), ax.get_ylabel()


def test_loss_plot_labels_and_epoch_lines():
    losses = [1.0 / (1 + i) for i in range(100)]
    fig = plots.plot_losses(losses, "Denoiser loss", steps_per_epoch=25)
    title, xlabel, ylabel = axis_labels(fig)
    assert title == "Denoiser loss" and xlabel == "optimizer step" and "loss" in ylabel.lower()
    ax = fig.axes[0]
    assert ax.get_yscale() == "log"
    assert [line.get_xdata()[0] for line in ax.lines if line.get_linestyle() == "--"] == [25, 50, 75]
    assert list(ax.lines[0].get_ydata()) == pytest.approx(losses)
    with pytest.raises(ValueError, match="`losses`"):
        plots.plot_losses([])


def test_loss_plot_draws_the_validation_loss_at_the_end_of_every_epoch_with_a_legend():
    losses = [1.0 / (1 + i) for i in range(100)]
    validation = [0.5, 0.3, 0.2, 0.15]
    ax = plots.plot_losses(losses, "Denoiser loss", steps_per_epoch=25, validation=validation).axes[0]
    curves = {line.get_label(): line for line in ax.lines if not line.get_label().startswith("_")}
    assert list(curves["validation, per epoch"].get_xdata()) == [25, 50, 75, 100]
    assert list(curves["validation, per epoch"].get_ydata()) == validation
    assert list(curves["training, per step"].get_ydata()) == pytest.approx(losses)
    legend = [text.get_text() for text in ax.get_legend().get_texts()]
    assert "validation, per epoch" in legend and "training, per step" in legend
    without = plots.plot_losses(losses, steps_per_epoch=25).axes[0]
    assert not any("validation" in line.get_label() for line in without.lines)


def test_loss_plot_takes_both_curves_from_the_history_train_returns():
    from course_lib.training import LossHistory

    history = LossHistory([1.0, 0.8, 0.7, 0.5, 0.45, 0.4], validation=[0.75, 0.42], steps_per_epoch=3)
    ax = plots.plot_losses(history, "Both curves").axes[0]
    validation = next(line for line in ax.lines if line.get_label() == "validation, per epoch")
    assert list(validation.get_xdata()) == [3, 6] and list(validation.get_ydata()) == [0.75, 0.42]
    assert [line.get_xdata()[0] for line in ax.lines if line.get_linestyle() == "--"] == [3]
    unequal = plots.plot_losses([1.0] * 10, validation=[0.5, 0.4]).axes[0]  # no epoch length: equal epochs
    assert list(next(line for line in unequal.lines if "validation" in line.get_label()).get_xdata()) == [5, 10]


def test_loss_plot_moving_average():
    losses = [float(i % 2) for i in range(40)]  # alternating 0, 1: an 8-step mean is exactly 0.5
    ax = plots.plot_losses(losses, log_scale=False, smooth=8).axes[0]
    assert ax.get_yscale() == "linear"
    average = ax.lines[1]
    assert list(average.get_xdata()) == list(range(7, 40))
    assert list(average.get_ydata()) == pytest.approx([0.5] * 33)


def test_schedule_plot():
    fig = plots.plot_schedules({"linear": DDPMSchedule(300), "cosine": DDPMSchedule(300, kind="cosine")})
    title, xlabel, ylabel = axis_labels(fig)
    assert title and xlabel == "timestep t" and ylabel == "alpha_bar_t"
    assert [text.get_text() for text in fig.axes[0].get_legend().get_texts()] == ["linear", "cosine"]


def test_sde_paths_plot():
    times, paths = euler_maruyama(lambda x, t: -x, lambda t: 0.5, torch.zeros(4), 1.0, 20,
                                  torch.Generator().manual_seed(0))
    fig = plots.plot_paths(times, paths, "Ornstein-Uhlenbeck paths")
    title, xlabel, ylabel = axis_labels(fig)
    assert title == "Ornstein-Uhlenbeck paths" and xlabel and ylabel
    assert len(fig.axes[0].lines) == 4


def test_trajectory_strip_has_a_row_per_sample_and_a_column_per_frame():
    """Frame k of the trajectory is uniformly grey level k / 10 (after the signed-to-unit map): read the grid."""
    trajectory = torch.linspace(-1, 1, 11).view(11, 1, 1, 1, 1).expand(11, 5, 1, 28, 28)
    fig = plots.show_trajectory(trajectory, "Reverse process", num_frames=3, num_samples=2,
                                frame_label=lambda k: f"{k} steps", xlabel="reverse steps done")
    ax, = fig.axes
    assert (ax.get_title(), ax.get_xlabel(), ax.get_ylabel()) == ("Reverse process", "reverse steps done", "sample")
    assert tick_labels(ax.xaxis) == ["0 steps", "5 steps", "10 steps"]
    grid = ax.images[0].get_array()
    assert grid.shape == (2 * 30 - 2, 3 * 30 - 2)
    for column, frame in enumerate([0, 5, 10]):
        for row in range(2):
            assert float(grid[row * 30 + 5, column * 30 + 5]) == pytest.approx(frame / 10)


def test_trajectory_strip_of_a_short_trajectory_shows_each_frame_once():
    trajectory = torch.zeros(3, 2, 1, 8, 8)
    ax, = plots.show_trajectory(trajectory, "Two steps").axes
    assert tick_labels(ax.xaxis) == ["0", "1", "2"] and ax.get_xlabel() and ax.get_ylabel() == "sample"
    with pytest.raises(ValueError, match="`trajectory`"):
        plots.show_trajectory(trajectory[0], "bad")


# ----------------------------------------------------------------------------- GIF

def read_gif(path) -> list[torch.Tensor]:
    with Image.open(path) as gif:
        return [torch.from_numpy(np.array(frame.convert("L"))) for frame in ImageSequence.Iterator(gif)]


def test_save_gif_writes_the_requested_frames(tmp_path):
    trajectory = torch.rand(31, 4, 1, 8, 8, generator=torch.Generator().manual_seed(1)) * 2 - 1
    path = plots.save_gif(trajectory, tmp_path / "sub" / "trajectory.gif", ncols=2, num_frames=6, scale=3)
    frames = read_gif(path)
    grid_h, grid_w = 2 * 10 - 2, 2 * 10 - 2
    assert len(frames) == 6 and frames[0].shape == (3 * grid_h, 3 * grid_w)
    last = (plots.image_grid(trajectory[-1], 2, "signed") * 255).round().to(torch.uint8)
    assert torch.equal(frames[-1][::3, ::3], last), "the last frame is the final samples"
    first = (plots.image_grid(trajectory[0], 2, "signed") * 255).round().to(torch.uint8)
    assert torch.equal(frames[0][::3, ::3], first), "the first frame is the starting noise"


def test_save_gif_never_repeats_frames_of_a_short_trajectory(tmp_path):
    trajectory = torch.rand(4, 2, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    assert len(read_gif(plots.save_gif(trajectory, tmp_path / "short.gif", num_frames=60))) == 4
    with pytest.raises(ValueError, match="`trajectory`"):
        plots.save_gif(trajectory[0], tmp_path / "bad.gif")
