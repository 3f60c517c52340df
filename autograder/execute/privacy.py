"""What a graded copy and a feedback page keep of a submission: no editor's personal metadata, no live student HTML.

A submitted notebook carries more than the student's work. Colab writes the student's display name, user id and
photo address into every executed cell (``executionInfo``), output ids (``outputId``), layout (``colab``) and,
at the notebook level, the Drive file ids it was copied from (``colab.provenance``, ``authorship_tag``); other
editors add their own (``vscode``, ``ExecuteTime``, widget state). And a cell can print HTML or JavaScript
(``IPython.display.HTML("<script>...")``, ``<img onerror=...>``, ``IPython.display.Javascript``) that would run
in the browser of whoever opens the graded copy in formgrader or the HTML feedback.

- :class:`ScrubPersonalData` (phase 1's sanitize step, before anything is written under ``autograded/``, and
  phase 2's): keeps only allow-listed metadata (notebook: ``kernelspec``, ``language_info``; cell: ``nbgrader``,
  ``tags``, ``deletable``, ``editable``, ``jupyter``; output: per-MIME-type entries), then does what
  :class:`SanitizeOutputs` does. Keys the autograder itself writes into cell metadata (``autograder_...``) are
  dropped too: a submission cannot mark its own cells as injected (which removes them from the graded copy) or
  skipped.
- :class:`SanitizeOutputs` (after execution, and on the way to feedback): removes JavaScript outputs and passes
  HTML and Markdown outputs through :func:`clean_html`.
- :func:`clean_html`: bleach with an allow-list wide enough for tables, figures and formatted text, and no
  scripts, event handlers, styles, frames, forms or ``javascript:`` links; what is not allowed is escaped, so
  the student's text stays readable. The feedback template (``autograder/feedback/templates/autograder_feedback``) uses
  it on every rendered Markdown cell, which nbgrader's own feedback template leaves unsanitized even with
  nbconvert's ``HTMLExporter.sanitize_html``.
"""

from __future__ import annotations

from urllib.parse import urlsplit

import bleach
from nbformat.notebooknode import from_dict
from nbgrader.preprocessors import NbGraderPreprocessor
from traitlets import List, Unicode

JAVASCRIPT_MIMES = frozenset({"application/javascript", "text/javascript", "application/x-javascript",
                              "application/ecmascript", "text/ecmascript"})
HTML_MIMES = ("text/html", "text/markdown")
REMOVED_JAVASCRIPT = "[a JavaScript output was removed by the autograder]"

ALLOWED_TAGS = frozenset(bleach.ALLOWED_TAGS) | {
    "p", "div", "span", "pre", "br", "hr", "h1", "h2", "h3", "h4", "h5", "h6", "img", "figure", "figcaption",
    "table", "thead", "tbody", "tfoot", "tr", "th", "td", "caption", "colgroup", "col", "sup", "sub", "del", "s",
    "ins", "u", "mark", "small", "kbd", "samp", "var", "q", "cite", "dl", "dt", "dd", "details", "summary",
}
ALLOWED_ATTRIBUTES = {
    "*": ["class", "title", "align"],
    "a": ["href", "title", "class"],
    "img": ["src", "alt", "title", "width", "height", "class"],
    "table": ["border", "class"],
    "th": ["colspan", "rowspan", "class", "align"],
    "td": ["colspan", "rowspan", "class", "align"],
    "col": ["span"],
    "colgroup": ["span"],
    "abbr": ["title"],
    "acronym": ["title"],
    "ol": ["start", "type"],
    "details": ["open"],
}
_LINK_SCHEMES = {"", "http", "https", "mailto"}
_IMAGE_SCHEMES = {"", "http", "https"}


def _allowed_attribute(tag: str, name: str, value: str) -> bool:
    if name not in ALLOWED_ATTRIBUTES.get(tag, ()) and name not in ALLOWED_ATTRIBUTES["*"]:
        return False
    if name in ("href", "src"):
        scheme = urlsplit(value.strip()).scheme.lower()
        if tag == "img" and scheme == "data":  # embedded pictures, never an HTML or SVG document
            return value.strip().lower().startswith(("data:image/png", "data:image/jpeg", "data:image/gif"))
        return scheme in (_IMAGE_SCHEMES if name == "src" else _LINK_SCHEMES)
    return True


def clean_html(html) -> str:
    """``html`` with only inert markup left: allowed tags and attributes kept, every other tag escaped (shown as
    text), comments dropped. No ``<script>``, ``<style>``, ``<iframe>``, event handler, ``style`` attribute or
    ``javascript:``/``data:`` link survives. Also a Jinja filter of the feedback template."""
    html = html.decode() if isinstance(html, bytes) else str(html)
    return bleach.clean(html, tags=ALLOWED_TAGS, attributes=_allowed_attribute,
                        protocols={"http", "https", "mailto", "data"}, strip=False, strip_comments=True)


class SanitizeOutputs(NbGraderPreprocessor):
    """Remove JavaScript outputs (a ``text/plain`` note stays in their place) and clean HTML and Markdown outputs
    with :func:`clean_html`; every other output (text, images, the checks' records) is left as it is."""

    def preprocess_cell(self, cell, resources, index):
        if cell.cell_type != "code":
            return cell, resources
        for output in cell.get("outputs", []):
            if output.get("output_type") not in ("display_data", "execute_result"):
                continue
            data = output.get("data", {})
            if JAVASCRIPT_MIMES & set(data):
                for mime in JAVASCRIPT_MIMES & set(data):
                    del data[mime]
                data["text/plain"] = REMOVED_JAVASCRIPT
            for mime in HTML_MIMES:
                if mime in data:
                    data[mime] = clean_html("".join(data[mime]) if isinstance(data[mime], list) else data[mime])
        return cell, resources


class ScrubPersonalData(SanitizeOutputs):
    """Keep only the allow-listed metadata of the notebook, its cells and their outputs (Colab's ``executionInfo``
    with the student's name and user id, ``outputId``, ``colab`` and the like go), then sanitize the outputs."""

    notebook_metadata = List(Unicode(), ["kernelspec", "language_info"],
                             help="Notebook metadata keys kept.").tag(config=True)
    cell_metadata = List(Unicode(), ["nbgrader", "tags", "deletable", "editable", "jupyter"],
                         help="Cell metadata keys kept.").tag(config=True)

    def preprocess(self, nb, resources):
        nb.metadata = from_dict({key: value for key, value in nb.metadata.items() if key in self.notebook_metadata})
        return super().preprocess(nb, resources)

    def preprocess_cell(self, cell, resources, index):
        cell.metadata = from_dict({key: value for key, value in cell.metadata.items() if key in self.cell_metadata})
        for output in cell.get("outputs", []):
            if "metadata" in output:  # per-MIME-type entries (image size, isolated HTML); no editor's fields
                output.metadata = from_dict({key: value for key, value in output.metadata.items()
                                             if "/" in key or key == "needs_background"})
        return super().preprocess_cell(cell, resources, index)
