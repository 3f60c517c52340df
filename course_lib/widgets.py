"""Interactive sliders for the notebooks (ipywidgets): move a parameter, watch the images change.

Every slider is an :class:`ImageSlider`: a slider above an ``Output`` widget that holds the figure as one
png image. The figure is made once; a move only swaps the pixels of its image (``set_data``), renders the
figure to png and replaces the ``Output``'s content, so redrawing is quick and never stacks figures.
``ImageSlider.redraw(value)`` is the callback the slider calls; tests call it directly, without a browser.

Works with ipywidgets 7.7 (what Colab ships) and 8: it uses only ``VBox``, ``FloatSlider``, ``IntSlider``,
``SelectionSlider``, ``observe`` and the ``Output.outputs`` trait, all alike in both (tests/test_colab.py runs
the slider tests under 7.7.1 too).

Builders: :func:`noise_slider` (sigma of Gaussian noising, stage 1) and :func:`forward_process_slider`
(t of the DDPM forward process, stage 1); :func:`trajectory_scrubber` (a frame slider through a saved
sampling trajectory, stage 3) and :func:`guidance_slider` (the classifier-free guidance scale, stage 4);
:func:`sdedit_slider`, :func:`inpainting_slider` and :func:`edit_guidance_slider` (stage 7's edits: strength, known
rows, guidance). The sampling sliders draw every picture up front (:func:`precomputed_slider`).
"""

from __future__ import annotations

import base64
import io
from typing import Callable

import ipywidgets as widgets
import torch
from matplotlib.figure import Figure

from .noise import DDPMSchedule, add_noise, q_sample
from .plots import image_grid
from .sampling import cfg_sample, device_of, guided_edit, inpaint, sdedit
from .validation import check_tensor

Render = Callable[[float], torch.Tensor]


class ImageSlider(widgets.VBox):
    """A slider and an image grid that follows it.

    Args:
        slider: the ipywidgets slider (its ``value`` is handed to ``render`` and ``title``).
        render: ``render(value) -> images`` (N, 1, H, W) in ``value_range``.
        title: ``title(value) -> str``, the figure's title for that value.
        ncols: images per row of the grid.
        value_range: ``"unit"`` ([0, 1]) or ``"signed"`` ([-1, 1]) images.

    Attributes:
        slider, output: the two child widgets.
        figure, image: the matplotlib Figure (not registered with pyplot) and its AxesImage.
        png: the png bytes shown now.
    """

    def __init__(self, slider: widgets.ValueWidget, render: Render, title: Callable[[float], str],
                 ncols: int = 8, value_range: str = "unit"):
        self.slider = slider
        self.output = widgets.Output()
        self.render = render
        self.title = title
        self.ncols = ncols
        self.value_range = value_range
        grid = self._grid(slider.value)
        height, width = grid.shape
        self.figure = Figure(figsize=(min(10.0, 0.9 + width / 32), 0.6 + height / 32), dpi=80)
        self.axes = self.figure.add_subplot()
        self.image = self.axes.imshow(grid.numpy(), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        self.axes.set_axis_off()
        self.png = b""
        super().__init__([slider, self.output])
        slider.observe(lambda change: self.redraw(change["new"]), names="value")
        self.redraw(slider.value)

    def _grid(self, value) -> torch.Tensor:
        images = self.render(value)
        check_tensor("render(value)", images, ndim=4)
        return image_grid(images, min(self.ncols, len(images)), self.value_range)

    def redraw(self, value) -> None:
        """Show the images for ``value`` (the slider's callback)."""
        self.image.set_data(self._grid(value).numpy())
        self.axes.set_title(self.title(value))
        buffer = io.BytesIO()
        self.figure.savefig(buffer, format="png")
        self.png = buffer.getvalue()
        show_png(self.output, self.png, self.title(value))


def show_png(output: widgets.Output, png: bytes, text: str) -> None:
    """Make ``png`` (the bytes of a png file) the one thing ``output`` shows; ``text`` is its plain-text form.

    ``Output.outputs`` is a synced tuple of nbformat outputs in ipywidgets 7 and 8 alike (it is what
    ``append_display_data`` extends in both). Replacing it whole swaps the image in one message, with no
    running kernel needed, unlike ``clear_output``, which goes through the kernel's display hooks.
    """
    output.outputs = ({
        "output_type": "display_data",
        "data": {"image/png": base64.b64encode(png).decode("ascii"), "text/plain": text},
        "metadata": {},
    },)


def noise_slider(images: torch.Tensor, max_sigma: float = 1.0, step: float = 0.05, seed: int = 0,
                 add_noise_fn: Callable = add_noise) -> ImageSlider:
    """A sigma slider over ``images`` (N, 1, H, W) in [0, 1], noised as ``z = x + sigma * eps``.

    The same eps (drawn with ``seed``, on the CPU, where the images are copied) is used for every sigma, so only
    the noise level changes.
    ``add_noise_fn(x, sigma, generator)`` defaults to :func:`course_lib.noise.add_noise`; pass the
    student's own function to watch it work.
    """
    check_tensor("images", images, ndim=4, floating=True)
    images = images.detach().cpu()
    slider = widgets.FloatSlider(value=0.5, min=0.0, max=max_sigma, step=step, description="sigma",
                                 readout_format=".2f", continuous_update=True)

    def render(sigma: float) -> torch.Tensor:
        return add_noise_fn(images, float(sigma), torch.Generator(images.device).manual_seed(seed))

    return ImageSlider(slider, render, lambda sigma: f"z = x + sigma * eps at sigma = {sigma:.2f}",
                       ncols=min(len(images), 8), value_range="unit")


def forward_process_slider(x0: torch.Tensor, schedule: DDPMSchedule, seed: int = 0,
                           q_sample_fn: Callable = q_sample) -> ImageSlider:
    """A t slider (0..T-1) over the DDPM forward process of ``x0`` (N, 1, H, W) in [-1, 1].

    ``x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) eps`` with one eps (drawn with ``seed`` on the schedule's
    device, where the images are noised) for all t.
    ``q_sample_fn(x0, t, eps, schedule)`` defaults to :func:`course_lib.noise.q_sample`.
    """
    check_tensor("x0", x0, ndim=4, floating=True)
    device = schedule.alpha_bars.device
    x0 = x0.detach().to(device)
    eps = torch.randn(x0.shape, generator=torch.Generator(device).manual_seed(seed), device=device)
    slider = widgets.IntSlider(value=schedule.num_steps // 4, min=0, max=schedule.num_steps - 1, step=1,
                               description="t", continuous_update=True)

    def render(t: int) -> torch.Tensor:
        return q_sample_fn(x0, torch.full((len(x0),), int(t), dtype=torch.long, device=device), eps, schedule)

    def title(t: int) -> str:
        return f"x_t at t = {int(t)} (alpha_bar_t = {float(schedule.alpha_bars[int(t)]):.3f})"

    return ImageSlider(slider, render, title, ncols=min(len(x0), 8), value_range="signed")


def trajectory_scrubber(trajectory: torch.Tensor, ncols: int = 10) -> ImageSlider:
    """A frame slider through a saved sampling trajectory (steps + 1, N, 1, H, W) of images in [-1, 1].

    Frame 0 is the pure noise x_T, frame k the images after k reverse steps, the last frame the samples
    (what :func:`course_lib.sampling.ddpm_sample` returns with ``return_trajectory=True``). Every frame is
    already computed, so moving the slider only swaps pixels.
    """
    check_tensor("trajectory", trajectory, ndim=5, floating=True)
    frames = trajectory.detach().cpu()
    steps = len(frames) - 1
    slider = widgets.IntSlider(value=steps, min=0, max=steps, step=1, description="step", continuous_update=True)

    def title(k: int) -> str:
        return f"after {int(k)} of {steps} reverse steps (x_{steps - int(k)})"

    return ImageSlider(slider, lambda k: frames[int(k)], title, ncols=ncols, value_range="signed")


def guidance_slider(model, schedule: DDPMSchedule, guidances=(0.0, 1.0, 2.0, 3.0, 5.0, 7.5, 10.0),
                    digits=tuple(range(10)), seed: int = 0, sample_fn: Callable = cfg_sample) -> ImageSlider:
    """A slider over the classifier-free guidance scale gamma, showing one sample of each digit in ``digits``.

    The samples of every gamma in ``guidances`` are drawn once, up front, with the same seed (the same x_T
    and the same z at every step), so a move shows instantly and only gamma changes between pictures.
    ``sample_fn(model, schedule, labels, guidance, generator=...)`` returns images (N, 1, 28, 28) in
    [-1, 1]; it defaults to :func:`course_lib.sampling.cfg_sample` (pass the student's own sampler to use it).
    The labels and the generator are made on the model's device, where the samples are drawn.
    """
    device = device_of(model)
    labels = torch.tensor(list(digits), dtype=torch.long, device=device)

    def draw(guidance: float) -> torch.Tensor:
        return sample_fn(model, schedule, labels, guidance, generator=torch.Generator(device=device).manual_seed(seed))

    return precomputed_slider("gamma", "guidances", [float(g) for g in guidances], draw,
                              lambda guidance: f"guided samples, gamma = {float(guidance):g}", ncols=len(labels))


def precomputed_slider(description: str, name: str, values, draw: Render, title: Callable[[float], str],
                       ncols: int) -> ImageSlider:
    """A slider over ``values`` whose images ``draw(value)`` (N, 1, H, W) in [-1, 1] are all made up front, so
    that a move only swaps pictures (a sampling run takes seconds). It starts at the middle value; ``name`` is the
    argument that gave ``values``, for the error when it is empty."""
    if len(values) == 0:
        raise ValueError(f"`{name}` must hold at least one value, got an empty sequence")
    images = {value: draw(value).cpu() for value in values}
    options = list(images)
    slider = widgets.SelectionSlider(options=options, value=options[len(options) // 2], description=description,
                                     continuous_update=True)
    return ImageSlider(slider, lambda value: images[value], title, ncols=ncols, value_range="signed")


def _seeded(device, seed: int) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


def sdedit_slider(model, schedule: DDPMSchedule, x0: torch.Tensor, strengths=None, seed: int = 0,
                  edit_fn: Callable = sdedit) -> ImageSlider:
    """A slider over SDEdit's strength: how many reverse steps follow the noising of ``x0`` (N, 1, 28, 28) in
    [-1, 1]. Each picture shows the inputs (top row) above their edits, all drawn up front with one seed.

    ``strengths``: the step counts offered (default: six from T/10 to T). ``edit_fn(model, schedule, x0, steps,
    generator=...)`` defaults to :func:`course_lib.sampling.sdedit` (pass the student's own to use it).
    """
    device = device_of(model)
    x0 = x0.detach().to(device)
    T = schedule.num_steps
    strengths = [max(1, round(T * k / 10)) for k in (1, 2, 4, 6, 8, 10)] if strengths is None else strengths

    def draw(steps: int) -> torch.Tensor:
        return torch.cat([x0, edit_fn(model, schedule, x0, int(steps), generator=_seeded(device, seed))])

    return precomputed_slider("steps", "strengths", list(dict.fromkeys(int(k) for k in strengths)), draw,
                              lambda steps: f"SDEdit: noised to step {int(steps) - 1}, then {int(steps)} of T = {T} "
                                            "reverse steps (top: input, bottom: edit)", ncols=len(x0))


def top_rows_mask(x0: torch.Tensor, rows: int) -> torch.Tensor:
    """A mask like ``x0`` (N, 1, H, W) that is 1 (known) on the top ``rows`` rows of every image, 0 below."""
    mask = torch.zeros_like(x0)
    mask[..., :rows, :] = 1
    return mask


def inpainting_slider(model, schedule: DDPMSchedule, x0: torch.Tensor, known_rows=(7, 10, 14, 18, 21), seed: int = 0,
                      inpaint_fn: Callable = inpaint) -> ImageSlider:
    """A slider over how many top rows of ``x0`` (N, 1, 28, 28) in [-1, 1] are known. Each picture shows what the
    model is given (the unknown rows grey) above the completed digits, all drawn up front with one seed.

    ``inpaint_fn(model, schedule, x0, mask, generator=...)`` defaults to :func:`course_lib.sampling.inpaint`.
    """
    device = device_of(model)
    x0 = x0.detach().to(device)

    def draw(rows: int) -> torch.Tensor:
        mask = top_rows_mask(x0, int(rows))
        return torch.cat([x0 * mask, inpaint_fn(model, schedule, x0, mask, generator=_seeded(device, seed))])

    return precomputed_slider("known rows", "known_rows", [int(rows) for rows in known_rows], draw,
                              lambda rows: f"Inpainting: the top {int(rows)} of {x0.shape[-2]} rows known "
                                           "(top: given, bottom: completed)", ncols=len(x0))


def edit_guidance_slider(model, schedule: DDPMSchedule, x0: torch.Tensor, labels: torch.Tensor, steps: int,
                         guidances=(0.0, 1.0, 3.0, 5.0, 10.0), seed: int = 0,
                         edit_fn: Callable = guided_edit) -> ImageSlider:
    """A slider over the guidance gamma of class-guided edits of ``x0`` (N, 1, 28, 28) towards the digits ``labels``
    (int64 (N,)), each with ``steps`` reverse steps. Each picture shows the inputs above their edits, all drawn up
    front with one seed. ``edit_fn(model, schedule, x0, labels, steps, guidance, generator=...)`` defaults to
    :func:`course_lib.sampling.guided_edit`.
    """
    device = device_of(model)
    x0, labels = x0.detach().to(device), labels.to(device)

    def draw(guidance: float) -> torch.Tensor:
        edits = edit_fn(model, schedule, x0, labels, steps, guidance, generator=_seeded(device, seed))
        return torch.cat([x0, edits])

    return precomputed_slider("gamma", "guidances", [float(g) for g in guidances], draw,
                              lambda guidance: f"edits towards the digits asked for, gamma = {float(guidance):g}, "
                                               f"{steps} reverse steps (top: input, bottom: edit)", ncols=len(x0))
