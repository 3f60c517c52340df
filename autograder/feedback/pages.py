"""HTML feedback pages: nbgrader's ``GenerateFeedback``, written atomically, with no live student HTML.

- :class:`AtomicGenerateFeedback` writes each page to a temporary file beside it and ``os.replace``s it onto the old
  one (:mod:`autograder.atomic`), instead of nbgrader's "delete the student's feedback folder, then write": a
  reader sees the old page or the whole new one, and a student whose page fails keeps nothing half written.
- :func:`feedback_config` renders with the template ``autograder/feedback/templates/autograder_feedback``
  (nbgrader's ``feedback`` with every Markdown cell and HTML output passed through
  :func:`autograder.execute.privacy.clean_html`) and nbconvert's ``HTMLExporter.sanitize_html`` (no JavaScript
  output, no widget state), after the preprocessors :class:`~autograder.execute.preprocessors.HideHiddenTests` and
  :class:`~autograder.execute.privacy.ScrubPersonalData`.
"""

from __future__ import annotations

import os
from pathlib import Path

from nbgrader.converters import GenerateFeedback

from ..atomic import atomic_write_bytes
from ..course import nbgrader_config

TEMPLATES = Path(__file__).with_name("templates")
TEMPLATE = "autograder_feedback"


class AtomicGenerateFeedback(GenerateFeedback):
    """``GenerateFeedback`` whose pages replace the old ones atomically (see the module docstring)."""

    def init_destination(self, assignment_id: str, student_id: str) -> bool:
        """Always process (as ``--force``), but never delete the old pages first: each is replaced when written."""
        excluded = self.coursedir.student_id_exclude.split(",") if self.coursedir.student_id_exclude else []
        return student_id not in excluded

    def write_single_notebook(self, output, resources) -> None:
        folder = Path(self._format_dest(resources["nbgrader"]["assignment"], resources["nbgrader"]["student"]))
        name = resources["unique_key"] + resources.get("output_extension", self.exporter.file_extension)
        atomic_write_bytes(folder / name, output.encode("utf-8") if isinstance(output, str) else output)
        for filename, data in resources.get("outputs", {}).items():  # extracted files (none for embedded HTML)
            atomic_write_bytes(folder / filename, data if isinstance(data, bytes) else str(data).encode("utf-8"))


def feedback_config(root: Path):
    """The nbgrader config of :func:`autograder.commands.feedback` for the course folder ``root``."""
    from nbconvert.preprocessors import CSSHTMLHeaderPreprocessor
    from nbgrader.preprocessors import GetGrades

    from ..execute.preprocessors import HideHiddenTests
    from ..execute.privacy import ScrubPersonalData

    import nbgrader.server_extensions.formgrader as formgrader

    config = nbgrader_config(Path(root))
    config.GenerateFeedback.preprocessors = [GetGrades, HideHiddenTests, ScrubPersonalData, CSSHTMLHeaderPreprocessor]
    config.HTMLExporter.template_name = TEMPLATE
    config.HTMLExporter.template_file = f"{TEMPLATE}.html.j2"  # extends index.html.j2, nbgrader's feedback page
    config.HTMLExporter.extra_template_basedirs = [str(TEMPLATES),
                                                   os.path.join(os.path.dirname(formgrader.__file__), "templates")]
    config.HTMLExporter.filters = {"clean_student_html": "autograder.execute.privacy.clean_html"}
    config.HTMLExporter.sanitize_html = True
    return config
