"""The browser checks catch what they must: a notebook with planted faults, run in the same real JupyterLab.

Without this, a check in ``lab_page`` that never fires would let the slider tests pass on a broken notebook.
"""

from __future__ import annotations

import re

import nbformat
import pytest

import lab_page as lab

pytestmark = [pytest.mark.browser, pytest.mark.timeout(180)]  # includes starting JupyterLab and Chromium when run first

FIGURE_AS_TEXT = 'display({"text/plain": "<Figure size 640x480 with 1 Axes>"}, raw=True)'
FROZEN_SLIDER = """\
import io
import ipywidgets as widgets
import matplotlib.pyplot as plt
from IPython.display import Image

figure, axes = plt.subplots(figsize=(1, 1))
axes.imshow([[0, 1], [1, 0]], cmap="gray")
buffer = io.BytesIO()
figure.savefig(buffer, format="png")
plt.close(figure)
output = widgets.Output()
with output:
    display(Image(data=buffer.getvalue()))
widgets.VBox([widgets.FloatSlider(description="frozen"), output])  # the slider redraws nothing
"""


def faulty_notebook() -> nbformat.NotebookNode:
    """A figure shown as text, a slider that redraws nothing, an error, and a cell the error keeps from running."""
    cell = nbformat.v4.new_code_cell
    notebook = nbformat.v4.new_notebook(cells=[
        cell(FIGURE_AS_TEXT, metadata={"tags": ["figure"]}),
        cell(FROZEN_SLIDER, metadata={"tags": ["widget"]}),
        cell('raise ValueError("planted error")'),
        cell("1 + 1"),
    ])
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    return notebook


def test_checks_report_planted_faults(page, lab_server, screenshots):
    nbformat.write(faulty_notebook(), lab_server.notebook_dir / "faulty.ipynb")
    notebook = lab.LabNotebook.open(page, lab_server.url("faulty.ipynb"), "faulty.ipynb")
    notebook.run_all_cells(timeout_s=60)  # a few seconds, more while the other test process grades
    screenshots.take("ran-all-cells", page)

    problems = lab.problems_in_cells(notebook.code_cells())
    expected = [
        r"cell 0 .* shows a figure as text",
        r"cell 0 .* is tagged 'figure' but shows no image",
        r"cell 2 .* raised ValueError: planted error",
        r"cell 3 .* did not run",
    ]
    assert len(problems) == len(expected), problems
    for pattern, problem in zip(expected, problems):
        assert re.match(pattern, problem), (pattern, problem)

    slider = notebook.slider(re.compile(r"^frozen$"))
    image = lab.controlled_image(slider)
    before = screenshots.take("frozen-before", image)
    lab.press_until_readout_changes(slider)
    with pytest.raises(AssertionError, match="did not change"):
        lab.wait_for_new_image(image, before, timeout_s=2)
