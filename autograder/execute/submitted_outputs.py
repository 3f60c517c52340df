"""The figures a TA grades written answers about: the student's own saved outputs of the demo cells.

Grading clears every output of a submission (a student's saved outputs could pass for the grader's) and does not
run the read-only cells that the source notebook tags ``skip_when_grading`` (long training runs and sampling
demos that no test reads, :class:`autograder.execute.preprocessors.SkipDemoCells`). So the figures that written
questions ask about would be missing from the graded copy in formgrader. :class:`KeepDemoOutputs` replaces
nbgrader's ``ClearOutput`` in the sanitize step: it clears all outputs, except that a demo cell keeps the outputs
the student saved with it, below a first line :data:`SUBMITTED_MARKER`. Never those of a test cell, an answer
cell or any cell the grader runs, whatever the submission's own metadata or tags say (the demo cells are
read from the source notebook, by ``grade_id``), nor of a demo cell whose read-only source the student edited
(its outputs would not be the course's demo). The kept outputs are size-capped later with every other output
(:class:`autograder.execute.preprocessors.CapOutputSize`) and sanitized (:mod:`autograder.execute.privacy`); in
total at most ``max_bytes`` per notebook are kept.
"""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
from nbformat.notebooknode import from_dict
from nbgrader import utils
from traitlets import Integer

from .preprocessors import SKIP_TAG, SkipDemoCells, is_test_cell

SUBMITTED_MARKER = "As submitted by the student (not re-run by the grader)"
EDITED_NOTE = ("The student's saved outputs of this read-only cell were not kept: its code had been edited "
               "(the grader restored it, and does not run it)")


def demo_cells(source: nbformat.NotebookNode) -> dict[str, str]:
    """``grade_id`` -> source of the read-only cells that ``source`` (a source notebook) tags ``skip_when_grading``:
    the cells :class:`~autograder.execute.preprocessors.SkipDemoCells` marks not to run."""
    return {cell.metadata["nbgrader"]["grade_id"]: cell.source for cell in source.cells
            if cell.cell_type == "code" and SKIP_TAG in cell.metadata.get("tags", []) and utils.is_locked(cell)
            and not utils.is_grade(cell) and not utils.is_solution(cell)}


def _stream(text: str):
    return from_dict({"output_type": "stream", "name": "stdout", "text": text + "\n"})


class KeepDemoOutputs(SkipDemoCells):
    """nbgrader's ``ClearOutput``, except for the demo cells of the source notebook (see the module docstring).

    A subclass of :class:`~autograder.execute.preprocessors.SkipDemoCells` only to read the same ``source_root``
    (``config.SkipDemoCells.source_root`` applies to it too); it marks nothing to skip itself.
    """

    max_bytes = Integer(8_000_000, help="Most bytes of saved outputs kept per notebook.").tag(config=True)

    def preprocess(self, nb, resources):
        info = resources["nbgrader"]
        source = nbformat.read(Path(self.source_root) / info["assignment"] / f"{info['notebook']}.ipynb", as_version=4)
        demos = demo_cells(source)
        budget = self.max_bytes
        for cell in nb.cells:
            if cell.cell_type != "code":
                continue
            outputs, cell.outputs, cell.execution_count = cell.get("outputs", []), [], None
            for field in ("collapsed", "scrolled"):  # what ClearOutput also removes
                cell.metadata.pop(field, None)
            grade_id = cell.metadata.get("nbgrader", {}).get("grade_id")
            if not outputs or grade_id not in demos or is_test_cell(cell) or utils.is_solution(cell):
                continue
            if cell.source.strip() != demos[grade_id].strip():
                cell.outputs = [_stream(EDITED_NOTE)]
                continue
            kept = []
            for output in outputs:
                size = len(json.dumps(output))
                if size > budget:
                    kept.append(_stream(f"[{len(outputs) - len(kept)} more saved outputs over the "
                                        f"{self.max_bytes} bytes kept per notebook were dropped]"))
                    break
                budget -= size
                kept.append(output)
            cell.outputs = [_stream(SUBMITTED_MARKER), *kept]
        return nb, resources
