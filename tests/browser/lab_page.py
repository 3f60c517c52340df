"""What the browser tests do in a JupyterLab page, with Playwright's sync API.

The page is a real JupyterLab 4 opened by :class:`lab_server.LabServer`, which exposes the application as
``window.jupyterapp`` (``LabApp.expose_app_in_browser``, as JupyterLab's own Galata tests do): commands run
through it and cell outputs are read from the notebook model; sliders and images are found in the DOM.
Every script finds its notebook by path, never as "the current tab".
"""

from __future__ import annotations

import io
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, ImageChops

# The notebook panel open at `path` (undefined while JupyterLab has not opened it).
JS_PANEL = "[...window.jupyterapp.shell.widgets('main')].find(w => w.context && w.context.path === path)"

# The notebook is shown with a live kernel that is idle (the page has finished loading it).
JS_NOTEBOOK_READY = f"""(path) => {{
  const panel = window.jupyterapp && {JS_PANEL};
  const kernel = panel && panel.sessionContext.session && panel.sessionContext.session.kernel;
  return Boolean(panel && panel.content.model && kernel && kernel.status === 'idle');
}}"""

# Make the notebook the current tab and give it the panel's DOM id.
JS_ACTIVATE = f"""(path) => {{
  const panel = {JS_PANEL};
  window.jupyterapp.shell.activateById(panel.id);
  return panel.id;
}}"""

# Run All has finished: the kernel is idle, no cell waits or runs ("[*]" prompt), and every code cell ran
# or one of them stopped the run with an error.
JS_RUN_FINISHED = f"""(path) => {{
  const panel = {JS_PANEL};
  const kernel = panel.sessionContext.session && panel.sessionContext.session.kernel;
  const prompts = [...panel.node.querySelectorAll('.jp-InputPrompt')].map(p => p.textContent);
  const cells = [...panel.content.model.cells].filter(c => c.type === 'code');
  const ran = cells.every(c => c.executionCount !== null);
  const failed = cells.some(c => c.outputs.toJSON().some(o => o.output_type === 'error'));
  return Boolean(kernel && kernel.status === 'idle' && !prompts.some(p => p.includes('*')) && (ran || failed));
}}"""

# Scroll the first cell that waits or runs into view and describe it ("cell 18: 'source...'").
JS_SHOW_RUNNING_CELL = f"""(path) => {{
  const notebook = {JS_PANEL}.content;
  const index = notebook.widgets.findIndex(
    cell => (cell.node.querySelector('.jp-InputPrompt') || {{textContent: ''}}).textContent.includes('*'));
  if (index < 0) return 'no cell (the kernel is busy)';
  notebook.widgets[index].node.scrollIntoView();
  return `cell ${{index}}: ${{JSON.stringify(notebook.widgets[index].model.sharedModel.getSource().slice(0, 80))}}`;
}}"""

# One entry per code cell: its tags, execution count, errors and outputs (model), and what the page shows of them:
# images (<img>, widgets' included) and widget views.
JS_CODE_CELLS = f"""(path) => {{
  const notebook = {JS_PANEL}.content;
  const cells = notebook.model.cells;
  const found = [];
  for (let index = 0; index < cells.length; index++) {{
    const cell = cells.get(index);
    if (cell.type !== 'code') continue;
    const outputs = cell.outputs.toJSON();
    const area = notebook.widgets[index].node.querySelector('.jp-Cell-outputArea');
    found.push({{
      index,
      source: cell.sharedModel.getSource().slice(0, 80),
      tags: cell.getMetadata('tags') || [],
      executionCount: cell.executionCount,
      shownImages: area ? area.querySelectorAll('img').length : 0,
      shownWidgets: area ? area.querySelectorAll('.jupyter-widgets').length : 0,
      errors: outputs.filter(o => o.output_type === 'error').map(o => `${{o.ename}}: ${{o.evalue}}`),
      outputs: outputs.map(o => ({{
        type: o.output_type,
        mimes: Object.keys(o.data || {{}}),
        text: String((o.data && o.data['text/plain']) || o.text || '').slice(0, 200),
      }})),
    }});
  }}
  return found;
}}"""

FIGURE_AS_TEXT = re.compile(r"<(Figure|matplotlib\.[\w.]+) (size|object)")

# The nearest widget box (or the cell's output area) around a slider that holds an image: what the slider redraws.
XPATH_CONTROLLED = (
    "xpath=ancestor::div[(contains(@class, 'jupyter-widgets') or contains(@class, 'jp-OutputArea'))"
    " and (.//div[contains(@class, 'widget-output')]//img or .//img[contains(@class, 'widget-image')])][1]"
)
IMAGE_IN_WIDGET = ".widget-output img, img.widget-image"


@dataclass
class Screenshots:
    """Numbered screenshots of one test's steps, kept in ``folder`` and listed when the test fails."""

    folder: Path
    paths: list[Path] = field(default_factory=list)

    def save(self, name: str, png: bytes) -> Path:
        """Write ``png`` as ``NN-name.png`` and remember its path."""
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / f"{len(self.paths):02d}-{name}.png"
        path.write_bytes(png)
        self.paths.append(path)
        return path

    def take(self, name: str, target) -> bytes:
        """Screenshot ``target`` (a Playwright page or locator), save it and return the png bytes."""
        png = target.screenshot()
        self.save(name, png)
        return png


def wait_until(page, js_condition: str, arg, timeout_s: float, what: str) -> None:
    """Poll ``js_condition(arg)`` in the page until it is true; ``AssertionError(what)`` after ``timeout_s`` s."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeoutError

    try:
        page.wait_for_function(js_condition, arg=arg, timeout=max(timeout_s, 0.1) * 1000, polling=250)
    except PlaywrightTimeoutError as error:
        raise AssertionError(what) from error


@dataclass
class LabNotebook:
    """One notebook open in JupyterLab: ``path`` relative to the server's root, ``panel`` its DOM element."""

    page: object
    path: str
    panel: object

    @classmethod
    def open(cls, page, url: str, path: str, timeout_s: float = 60) -> "LabNotebook":
        """Load ``url`` (which opens ``path``) and wait until the notebook is shown with an idle kernel."""
        page.goto(url)
        wait_until(page, JS_NOTEBOOK_READY, path, timeout_s,
                   f"JupyterLab did not show {path} with an idle kernel within {timeout_s:.0f} s")
        panel_id = page.evaluate(JS_ACTIVATE, path)
        return cls(page, path, page.locator(f"[id='{panel_id}']"))

    def run_all_cells(self, timeout_s: float) -> None:
        """Run JupyterLab's "Run All Cells" command and wait (up to ``timeout_s``) until the run is over.

        On timeout the cell still running is scrolled into view and named in the ``AssertionError``.
        """
        self.page.evaluate(JS_ACTIVATE, self.path)  # the command runs the current notebook
        self.page.evaluate("() => { window.jupyterapp.commands.execute('notebook:run-all-cells'); }")
        deadline = time.monotonic() + timeout_s
        try:
            while True:
                wait_until(self.page, JS_RUN_FINISHED, self.path, deadline - time.monotonic(), "")
                time.sleep(0.5)  # a kernel is briefly idle between two cells: finished must still hold a moment later
                if self.page.evaluate(JS_RUN_FINISHED, self.path):
                    return
        except AssertionError:
            running = self.page.evaluate(JS_SHOW_RUNNING_CELL, self.path)
            raise AssertionError(f"{self.path} did not finish running within {timeout_s:.0f} s; "
                                 f"still running: {running}") from None

    def code_cells(self) -> list[dict]:
        """The notebook's code cells as JupyterLab's model holds them (see ``JS_CODE_CELLS``)."""
        return self.page.evaluate(JS_CODE_CELLS, self.path)

    def slider(self, label: str | re.Pattern):
        """The one ipywidgets slider whose description matches ``label`` (``AssertionError`` if not exactly one)."""
        found = self.panel.locator(".widget-slider").filter(has=self.page.locator(".widget-label", has_text=label))
        found.first.wait_for(state="visible", timeout=30_000)
        labels = self.panel.locator(".widget-slider .widget-label").all_inner_texts()
        assert found.count() == 1, f"expected one slider labelled {label!r}, found {found.count()}; labels: {labels}"
        return found


def problems_in_cells(cells: list[dict]) -> list[str]:
    """Readable problems of the cells listed by :meth:`LabNotebook.code_cells`, empty when all is well.

    A cell did not run or raised an error; a figure came out as text (``<Figure size ...>``) instead of a png;
    the page shows fewer images than the cell's png outputs; a cell tagged ``figure`` shows no image, or one
    tagged ``widget`` no widget.
    """
    problems = []
    for cell in cells:
        where = f"cell {cell['index']} ({cell['source']!r})"
        if cell["executionCount"] is None:
            problems.append(f"{where} did not run")
        problems += [f"{where} raised {error}" for error in cell["errors"]]
        for output in cell["outputs"]:
            if FIGURE_AS_TEXT.search(output["text"]) and "image/png" not in output["mimes"]:
                problems.append(f"{where} shows a figure as text: {output['text']!r}")
        pngs = sum("image/png" in output["mimes"] for output in cell["outputs"])
        if cell["shownImages"] < pngs:
            problems.append(f"{where} has {pngs} png outputs but the page shows {cell['shownImages']} images")
        if "figure" in cell["tags"] and cell["shownImages"] == 0:
            problems.append(f"{where} is tagged 'figure' but shows no image")
        if "widget" in cell["tags"] and cell["shownWidgets"] == 0:
            problems.append(f"{where} is tagged 'widget' but shows no widget")
    return problems


def controlled_image(slider_locator):
    """The image that ``slider_locator`` redraws: the one image in its nearest enclosing widget or output area."""
    images = slider_locator.locator(XPATH_CONTROLLED).locator(IMAGE_IN_WIDGET)
    images.first.wait_for(state="visible", timeout=30_000)
    assert images.count() == 1, f"expected one image beside the slider, found {images.count()}"
    return images


def readout(slider_locator) -> str:
    """The value the slider shows beside its track."""
    return slider_locator.locator(".widget-readout").inner_text().strip()


def press_until_readout_changes(slider_locator, timeout_s: float = 5) -> tuple[str, str]:
    """Focus the slider handle and press ArrowRight three times (ArrowLeft if it is at its maximum).

    Returns the readout before and after; ``AssertionError`` if the keyboard does not move the slider.
    """
    handle = slider_locator.locator(".noUi-handle")
    before = readout(slider_locator)
    for key in ("ArrowRight", "ArrowLeft"):
        handle.focus()
        for _ in range(3):
            handle.press(key)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if readout(slider_locator) != before:
                return before, readout(slider_locator)
            time.sleep(0.1)
    raise AssertionError(f"the arrow keys did not move the slider (readout stayed {before!r})")


def pixel_difference(png_a: bytes, png_b: bytes) -> float:
    """The fraction of pixels that differ between two screenshots (1.0 when their sizes differ)."""
    a, b = (Image.open(io.BytesIO(png)).convert("RGB") for png in (png_a, png_b))
    if a.size != b.size:
        return 1.0
    changed = ImageChops.difference(a, b).convert("L").point(lambda v: 255 if v else 0)
    return changed.histogram()[255] / (a.size[0] * a.size[1])


def wait_for_new_image(image_locator, before: bytes, timeout_s: float = 30) -> tuple[bytes, float]:
    """Screenshot ``image_locator`` until it differs from ``before`` and has settled (two equal captures).

    Returns the settled png and the fraction of its pixels that differ from ``before``; ``AssertionError`` when
    the image has not changed, or not stopped changing, within ``timeout_s`` seconds.
    """
    from playwright.sync_api import Error as PlaywrightError

    deadline = time.monotonic() + timeout_s
    previous = before
    while time.monotonic() < deadline:
        try:
            current = image_locator.screenshot(timeout=max(deadline - time.monotonic(), 1) * 1000)
        except PlaywrightError:  # the redraw replaced the <img> while it was being captured
            continue
        changed = pixel_difference(before, current)
        if changed > 0 and pixel_difference(previous, current) == 0:
            return current, changed
        previous = current
        time.sleep(0.25)
    changed = pixel_difference(before, previous)
    state = "did not change" if changed == 0 else "kept changing"
    raise AssertionError(f"the image {state} within {timeout_s:.0f} s of moving the slider")
