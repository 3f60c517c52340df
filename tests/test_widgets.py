"""The sliders of course_lib.widgets build, and their callbacks redraw the image in place, without a browser."""

from __future__ import annotations

import base64
import io
import time

import numpy as np
import pytest
import torch
from PIL import Image

from course_lib.data import DeviceImages, load_mnist
from course_lib.noise import DDPMSchedule
from course_lib.widgets import ImageSlider, forward_process_slider, noise_slider


@pytest.fixture(scope="module")
def digits(mnist_root) -> DeviceImages:
    return DeviceImages.from_dataset(load_mnist(train=False, root=mnist_root), value_range="unit", subset_size=8)


def shown_png(widget: ImageSlider) -> bytes:
    """The png the Output widget displays now (exactly one output, an image)."""
    (output,) = widget.output.outputs
    assert output["output_type"] == "display_data"
    return base64.b64decode(output["data"]["image/png"])


def pixels(png: bytes) -> torch.Tensor:
    return torch.from_numpy(np.asarray(Image.open(io.BytesIO(png)).convert("L"), dtype=np.float32))


def exercise(widget: ImageSlider, values) -> list[bytes]:
    """Move the slider through ``values`` as a user would; return the png shown after each move."""
    assert widget.children == (widget.slider, widget.output)
    shown = []
    for value in values:
        start = time.perf_counter()
        widget.slider.value = value
        elapsed = time.perf_counter() - start
        assert elapsed < 1.0, f"redraw at {value} took {elapsed:.2f} s"
        assert widget.png == shown_png(widget)
        shown.append(widget.png)
    return shown


def test_noise_slider_redraws_in_place(digits):
    images, _ = digits.first(6)
    widget = noise_slider(images)
    figure, image = widget.figure, widget.image
    shown = exercise(widget, [0.0, 0.3, 1.0])
    assert widget.figure is figure and widget.image is image and len(figure.axes) == 1
    assert len(set(shown)) == 3
    assert "sigma = 1.00" in widget.axes.get_title()
    # more noise spreads the pixel values: grey levels of the rendered image move away from pure black/white
    assert pixels(shown[2]).std() < pixels(shown[0]).std()


def test_noise_slider_uses_the_given_function(digits):
    images, _ = digits.first(2)
    calls = []

    def add_noise_fn(x, sigma, generator):
        calls.append(sigma)
        return x

    widget = noise_slider(images, add_noise_fn=add_noise_fn)
    widget.redraw(0.8)
    assert calls[-1] == pytest.approx(0.8)


def test_forward_process_slider_redraws_in_place(digits):
    images, _ = digits.first(4)
    schedule = DDPMSchedule(50)
    widget = forward_process_slider(images * 2 - 1, schedule)
    assert (widget.slider.min, widget.slider.max) == (0, 49)
    shown = exercise(widget, [0, 10, 49])
    assert len(set(shown)) == 3
    assert f"{float(schedule.alpha_bars[49]):.3f}" in widget.axes.get_title()


def test_sliders_reject_bad_images():
    with pytest.raises(ValueError, match="`images` must have 4 dimensions"):
        noise_slider(torch.zeros(28, 28))
    with pytest.raises(TypeError, match="`x0` must have a floating-point dtype"):
        forward_process_slider(torch.zeros(1, 1, 28, 28, dtype=torch.uint8), DDPMSchedule(10))
