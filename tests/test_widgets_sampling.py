"""The sampling sliders of course_lib.widgets (stages 3, 4 and 7) build, and their callbacks redraw in place."""

from __future__ import annotations

import base64
import time

import pytest
import torch

from course_lib.data import DeviceImages, load_mnist
from course_lib.models import ClassConditionalUNet
from course_lib.noise import DDPMSchedule, q_sample
from course_lib.sampling import cfg_sample, sdedit
from course_lib.widgets import (ImageSlider, edit_guidance_slider, guidance_slider, inpainting_slider, sdedit_slider,
                               top_rows_mask, trajectory_scrubber)


def move(widget: ImageSlider, value) -> bytes:
    """Set the slider as a user would; return the png the Output widget shows afterwards."""
    start = time.perf_counter()
    widget.slider.value = value
    assert time.perf_counter() - start < 1.0, f"redraw at {value} took too long"
    (output,) = widget.output.outputs
    png = base64.b64decode(output["data"]["image/png"])
    assert png == widget.png
    return png


@pytest.fixture(scope="module")
def trajectory(mnist_root) -> torch.Tensor:
    """A trajectory (T + 1, 6, 1, 28, 28) from noise to 6 real test digits: the forward process run backwards."""
    digits, _ = DeviceImages.from_dataset(load_mnist(train=False, root=mnist_root), subset_size=6).first(6)
    schedule = DDPMSchedule(20)
    eps = torch.randn(digits.shape, generator=torch.Generator().manual_seed(0))
    frames = [q_sample(digits, torch.full((6,), t), eps, schedule) for t in reversed(range(20))]
    return torch.stack(frames + [digits])


def test_trajectory_scrubber_moves_through_frames(trajectory):
    widget = trajectory_scrubber(trajectory, ncols=3)
    figure, image = widget.figure, widget.image
    assert widget.slider.min == 0 and widget.slider.max == 20 and widget.slider.value == 20
    noise, middle, clean = move(widget, 0), move(widget, 10), move(widget, 20)
    assert len({noise, middle, clean}) == 3
    assert widget.figure is figure and widget.image is image and len(figure.axes) == 1
    assert widget.axes.get_title() == "after 20 of 20 reverse steps (x_0)"
    shown = torch.from_numpy(widget.image.get_array().data.copy())
    assert shown.shape == (2 * 30 - 2, 3 * 30 - 2)
    # the last frame is the clean digits: mostly black background, so the grid's mean is low
    assert shown[:28, :28].mean() < 0.4
    move(widget, 0)
    assert widget.axes.get_title() == "after 0 of 20 reverse steps (x_20)"


def test_trajectory_scrubber_rejects_a_single_batch():
    with pytest.raises(ValueError, match="trajectory"):
        trajectory_scrubber(torch.zeros(4, 1, 28, 28))


@pytest.fixture(scope="module")
def cfg_model():
    torch.manual_seed(0)
    return ClassConditionalUNet(num_hiddens=4).eval()


def test_guidance_slider_shows_precomputed_samples(cfg_model):
    schedule = DDPMSchedule(8)
    widget = guidance_slider(cfg_model, schedule, guidances=(0.0, 1.0, 5.0), digits=(3, 7), seed=5)
    assert list(widget.slider.options) == [0.0, 1.0, 5.0] and widget.slider.value == 1.0
    shown = [move(widget, g) for g in (0.0, 5.0, 1.0)]
    assert len(set(shown)) == 3
    assert widget.axes.get_title() == "guided samples, gamma = 1"
    # the pictures are cfg_sample's samples on one seed: the same x_T for every gamma
    expected = cfg_sample(cfg_model, schedule, torch.tensor([3, 7]), 1.0, generator=torch.Generator().manual_seed(5))
    assert torch.allclose(widget.render(1.0), expected)


def test_guidance_slider_uses_the_given_sampler(cfg_model):
    calls = []

    def sampler(model, schedule, labels, guidance, generator):
        calls.append(guidance)
        return torch.full((len(labels), 1, 28, 28), guidance / 5 - 1)

    widget = guidance_slider(cfg_model, DDPMSchedule(4), guidances=(0, 5), digits=range(4), sample_fn=sampler)
    assert calls == [0.0, 5.0]
    dark = move(widget, 0.0)
    assert float(widget.image.get_array()[0, 0]) == 0.0  # -1 in [-1, 1] is black
    grey = move(widget, 5.0)
    assert grey != dark and float(widget.image.get_array()[0, 0]) == 0.5


def test_guidance_slider_needs_guidances(cfg_model):
    with pytest.raises(ValueError, match="guidances"):
        guidance_slider(cfg_model, DDPMSchedule(4), guidances=())


def test_sdedit_slider_shows_inputs_above_their_edits(cfg_model):
    schedule = DDPMSchedule(10)
    x0 = torch.rand((3, 1, 28, 28), generator=torch.Generator().manual_seed(0)) * 2 - 1
    widget = sdedit_slider(cfg_model, schedule, x0, strengths=(0, 5, 10), seed=2)
    assert list(widget.slider.options) == [0, 5, 10] and widget.slider.value == 5
    untouched, strong = move(widget, 0), move(widget, 10)
    assert untouched != strong
    assert widget.axes.get_title() == ("SDEdit: noised to step 9, then 10 of T = 10 reverse steps "
                                       "(top: input, bottom: edit)")
    assert torch.equal(widget.render(0), torch.cat([x0, x0]))
    edited = sdedit(cfg_model, schedule, x0, 5, generator=torch.Generator().manual_seed(2))
    assert torch.allclose(widget.render(5), torch.cat([x0, edited]))


def test_sdedit_slider_offers_strengths_up_to_t_by_default(cfg_model):
    calls = []

    def edit(model, schedule, x0, steps, generator):
        calls.append(steps)
        return x0

    widget = sdedit_slider(cfg_model, DDPMSchedule(50), torch.zeros(2, 1, 28, 28), edit_fn=edit)
    assert calls == [5, 10, 20, 30, 40, 50] and list(widget.slider.options) == calls


def test_inpainting_slider_shows_the_known_rows_and_the_completed_digits(cfg_model):
    schedule = DDPMSchedule(6)
    x0 = torch.ones(2, 1, 28, 28)
    widget = inpainting_slider(cfg_model, schedule, x0, known_rows=(7, 14), seed=1)
    assert list(widget.slider.options) == [7, 14] and widget.slider.value == 14
    given, completed = widget.render(7).chunk(2)
    assert torch.equal(given[..., :7, :], x0[..., :7, :]) and not given[..., 7:, :].any()
    assert torch.equal(completed[..., :7, :], x0[..., :7, :])
    assert move(widget, 7) != move(widget, 14)
    assert widget.axes.get_title() == "Inpainting: the top 14 of 28 rows known (top: given, bottom: completed)"
    assert torch.equal(top_rows_mask(x0, 3)[0, 0, :, 0], (torch.arange(28) < 3).float())


def test_edit_guidance_slider_passes_labels_steps_and_gamma(cfg_model):
    calls = []

    def edit(model, schedule, x0, labels, steps, guidance, generator):
        calls.append((labels.tolist(), steps, guidance))
        return x0 + guidance / 10

    x0 = torch.zeros(2, 1, 28, 28)
    widget = edit_guidance_slider(cfg_model, DDPMSchedule(8), x0, torch.tensor([4, 9]), 6, guidances=(0, 2, 4),
                                  edit_fn=edit)
    assert calls == [([4, 9], 6, 0.0), ([4, 9], 6, 2.0), ([4, 9], 6, 4.0)] and widget.slider.value == 2.0
    assert torch.equal(widget.render(4.0)[2:], torch.full((2, 1, 28, 28), 0.4))
    with pytest.raises(ValueError, match="guidances"):
        edit_guidance_slider(cfg_model, DDPMSchedule(8), x0, torch.tensor([4, 9]), 6, guidances=())
