"""Which students' TODO cells look alike: a lead for the instructor, never a verdict.

Compared with ``copydetect`` (a maintained MOSS-like tool: winnowed fingerprints of the token stream in which every
name becomes ``V`` and comments and blank space are gone), so renamed variables and added comments hide no copy.
The stage's given code and each TODO's starter lines, as released, are boilerplate and never count. Pairs are
compared per TODO cell and per notebook (all TODO cells of a student together); a cell whose tokens match the
reference solution's is flagged as such and left out of that TODO's pairs (the whole notebooks still compare).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path

import nbformat
import numpy as np
from copydetect import CodeFingerprint, compare_files
from copydetect.utils import highlight_overlap

#: tokens a shared run must hold to count (copydetect's noise threshold; one window, so every such run counts)
TOKENS = 12
#: pairs shown per TODO and per notebook, and the least similarity shown
SHOWN = 10
LEAST = 0.5
#: a cell that shares this much with the reference solution is flagged
LIKE_REFERENCE = 0.9


@dataclass
class Pair:
    """Two students whose code for ``what`` (a TODO's grade id, or ``"whole notebook"``) looks alike.

    Attributes:
        similarity: the larger of the two shares of each one's tokens found in the other's (0 to 1).
        shared: each student's code as escaped HTML, the shared runs between ``<mark>`` and ``</mark>``.
    """

    what: str
    first: str
    second: str
    similarity: float
    shared: tuple[str, str]


def _solution_cells(notebook: Path) -> dict[str, str]:
    """The source of each solution code cell of ``notebook``, by grade id."""
    cells = {}
    for cell in nbformat.read(notebook, as_version=4).cells:
        meta = cell.get("metadata", {}).get("nbgrader", {})
        if cell.cell_type == "code" and meta.get("solution") and meta.get("grade_id"):
            cells[meta["grade_id"]] = cell.source
    return cells


def _given_code(release: Path) -> str:
    """Every code cell of the released notebook: its given code and its TODOs' starter lines."""
    return "\n".join(cell.source for cell in nbformat.read(release, as_version=4).cells if cell.cell_type == "code")


def _fingerprint(code: str, boilerplate: np.ndarray) -> CodeFingerprint:
    return CodeFingerprint("cell.py", TOKENS, 1, boilerplate=boilerplate, fp=io.StringIO(code), language="python")


def _compare(what: str, codes: dict[str, str], boilerplate: np.ndarray) -> list[Pair]:
    """The most alike pairs of ``codes`` (student id -> code), best first."""
    prints = {student: _fingerprint(code, boilerplate) for student, code in codes.items() if code.strip()}
    pairs = []
    for first, second in combinations(sorted(prints), 2):
        overlap, (share1, share2), (slices1, slices2) = compare_files(prints[first], prints[second])
        similarity = float(max(share1, share2)) if overlap else 0.0
        if similarity >= LEAST:
            shared = (highlight_overlap(codes[first], slices1, "<mark>", "</mark>", escape_html=True)[0],
                      highlight_overlap(codes[second], slices2, "<mark>", "</mark>", escape_html=True)[0])
            pairs.append(Pair(what, first, second, similarity, shared))
    return sorted(pairs, key=lambda pair: -pair.similarity)[:SHOWN]


def like_reference(code: str, reference: str, boilerplate: np.ndarray) -> bool:
    """Whether ``code`` shares at least :data:`LIKE_REFERENCE` of its tokens with ``reference``."""
    if not code.strip():
        return False
    overlap, (share, _), _ = compare_files(_fingerprint(code, boilerplate), _fingerprint(reference, boilerplate))
    return bool(overlap) and share >= LIKE_REFERENCE


def stage_similarity(root: Path, stage: str, students: list[str]) -> tuple[list[Pair], dict[str, list[str]]]:
    """The alike pairs of ``stage`` over ``students`` (per TODO, then per whole notebook), and per TODO the
    students whose cell matches the reference solution."""
    release = root / "release" / stage / f"{stage}.ipynb"
    boilerplate = np.array(sorted(_fingerprint(_given_code(release), np.array([])).hashes))
    reference = _solution_cells(root / "source" / stage / f"{stage}.ipynb")
    cells = {student: _solution_cells(root / "collected" / student / stage / f"{stage}.ipynb")
             for student in students if (root / "collected" / student / stage / f"{stage}.ipynb").is_file()}
    pairs, copied_reference = [], {}
    for todo in reference:
        codes = {student: mine.get(todo, "") for student, mine in cells.items()}
        copied_reference[todo] = [student for student, code in codes.items()
                                  if like_reference(code, reference[todo], boilerplate)]
        own = {student: code for student, code in codes.items() if student not in copied_reference[todo]}
        pairs += _compare(todo, own, boilerplate)  # the reference's copies are listed apart, not as pairs
    whole = {student: "\n\n".join(mine.get(todo, "") for todo in reference) for student, mine in cells.items()}
    pairs += _compare("whole notebook", whole, boilerplate)
    return pairs, copied_reference
