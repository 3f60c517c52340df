"""The solution notebooks in a real JupyterLab, driven by headless Chromium: run every cell in quick mode,
then move each slider with the keyboard and watch the image it controls change.

Each test works on a copy of its notebook (``solutions/`` is never modified) and keeps a screenshot of every
step in its temporary folder; a failure lists their paths.
"""

from __future__ import annotations

import re
import shutil

import pytest

import lab_page as lab
from lab_server import REPO_ROOT

SOLUTIONS = REPO_ROOT / "solutions"
# Run all cells in quick mode: 30 to 60 s for 04_cfg alone, over 100 s while the other test process grades a class
# (pytest runs on two processes); the limit only stops a notebook that hangs.
RUN_TIMEOUT_S = 240

# Slider descriptions as course_lib.widgets writes them, matched on the whole label.
SIGMA = re.compile(r"^\s*sigma\s*$")
TIMESTEP = re.compile(r"^\s*t\s*$")
GUIDANCE = re.compile(r"^\s*gamma\s*$")

pytestmark = [pytest.mark.browser, pytest.mark.timeout(330)]


def run_notebook(page, lab_server, screenshots, stage: str) -> lab.LabNotebook:
    """Copy ``solutions/<stage>.ipynb`` into the server's folder, open it, run all cells, check every cell."""
    source = SOLUTIONS / f"{stage}.ipynb"
    assert source.is_file(), f"missing solution notebook {source}"
    shutil.copy(source, lab_server.notebook_dir / source.name)
    notebook = lab.LabNotebook.open(page, lab_server.url(source.name), source.name)
    screenshots.take("opened", page)
    try:
        notebook.run_all_cells(timeout_s=RUN_TIMEOUT_S)
    finally:
        screenshots.take("ran-all-cells", page)
    cells = notebook.code_cells()
    problems = lab.problems_in_cells(cells)
    assert not problems, "\n".join(problems)
    assert sum(cell["shownImages"] for cell in cells) > 0, "the notebook shows no image at all"
    return notebook


def check_slider_redraws(notebook: lab.LabNotebook, screenshots, label: re.Pattern, name: str) -> None:
    """Move the slider labelled ``label`` with the arrow keys; its image must change."""
    slider = notebook.slider(label)
    image = lab.controlled_image(slider)
    image.scroll_into_view_if_needed()
    before = screenshots.take(f"{name}-before", image)
    old_value, new_value = lab.press_until_readout_changes(slider)
    after, changed = lab.wait_for_new_image(image, before)
    screenshots.save(f"{name}-after", after)
    screenshots.take(f"{name}-widget-after", slider.locator(lab.XPATH_CONTROLLED))
    assert changed > 0.001, f"{name} {old_value} -> {new_value} changed only {changed:.2%} of the image's pixels"


def test_noising_sliders_redraw_their_images(page, lab_server, screenshots):
    notebook = run_notebook(page, lab_server, screenshots, "01_noising")
    check_slider_redraws(notebook, screenshots, SIGMA, "sigma")
    check_slider_redraws(notebook, screenshots, TIMESTEP, "t")


def test_guidance_slider_redraws_its_samples(page, lab_server, screenshots):
    notebook = run_notebook(page, lab_server, screenshots, "04_cfg")
    check_slider_redraws(notebook, screenshots, GUIDANCE, "guidance")
