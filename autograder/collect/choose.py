"""Which of a student's notebooks for one stage is graded, and the lines that say why.

A student may hand in several notebooks for one stage. The rule, in this order:

1. **Resubmissions**: notebooks of one name (``01_noising.ipynb``, ``01_noising-1.ipynb``, ``01_noising (2).ipynb``)
   are versions of one file; the latest counts: the highest LMS submission number, then the highest suffix, then
   the newest file time.
2. **Different names** (``01_noising.ipynb`` and ``Copy of 01_noising.ipynb``): the one the student worked on, the
   one with the most answers (solution cells that differ from the released notebook's); among equals, the newest.
3. Copies with the same bytes are one notebook. Two different notebooks that rule 2 cannot order (same answers,
   same time) are a clash: that stage is not graded, and the line asks the student to hand in one.

Every choice among several is said in a line, never made silently.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from .attribute import Item
from .names import resubmission
from .sources import Refused


@dataclass
class Candidate:
    """A readable notebook of one student for one stage.

    Attributes:
        item: where it came from.
        digest: SHA-256 of its bytes.
        answered: its solution cells whose source differs from the released notebook's (0 or more).
    """

    item: Item
    digest: str
    answered: int

    @property
    def version(self) -> tuple[str, tuple[int, int, float]]:
        """Its name without a resubmission suffix, and how late a version of that name it is."""
        base, number = resubmission(self.item.name)
        return base.lower(), (self.item.submission, number, self.item.entry.mtime)

    @property
    def label(self) -> str:
        return f"`{self.item.shown_path}`"


def solution_sources(notebook) -> dict[str, str]:
    """The source of every solution cell of ``notebook`` (an nbformat notebook), by nbgrader grade id."""
    found = {}
    for cell in notebook.cells:
        meta = cell.get("metadata", {}).get("nbgrader", {})
        if meta.get("solution") and meta.get("grade_id"):
            found[meta["grade_id"]] = cell.source.strip()
    return found


def _stage_of_content(grade_ids: frozenset[str], released: dict[str, dict[str, str]]) -> str | None:
    """The stage whose released solution cells share most grade ids with ``grade_ids``; the only stage when there
    is one; None when no stage shares any."""
    if len(released) == 1:
        return next(iter(released))
    shared = {stage: len(grade_ids & set(cells)) for stage, cells in released.items()}
    best = max(shared, key=shared.get, default=None)
    return best if best is not None and shared[best] else None


def read_candidate(item: Item, data: bytes, released: dict[str, dict[str, str]]) -> Candidate:
    """``data`` (the bytes of ``item``) as a :class:`Candidate`; ``released`` maps each stage to
    :func:`solution_sources` of its released notebook. An item whose name gave no stage gets the stage of its
    content. Raises :class:`Refused` when it is not a valid notebook or is for no stage."""
    import nbformat  # here, not at the top: the command line imports this package to parse its arguments

    try:
        notebook = nbformat.reads(data.decode("utf-8"), as_version=4)
        nbformat.validate(notebook)
    except (UnicodeDecodeError, json.JSONDecodeError, nbformat.ValidationError, nbformat.reader.NotJSONError,
            ValueError, KeyError, TypeError, AttributeError) as error:
        reason = (str(error).splitlines() or [type(error).__name__])[0][:120]
        raise Refused(f"not a valid notebook ({reason})") from None
    mine = solution_sources(notebook)
    grade_ids = frozenset(cell.get("metadata", {}).get("nbgrader", {}).get("grade_id", "") for cell in notebook.cells)
    item.stage = item.stage or _stage_of_content(grade_ids - {""}, released)
    if item.stage is None:
        raise Refused("neither its name, its folder nor its cells say which stage it is for")
    answers = released[item.stage]
    answered = sum(1 for grade_id, source in mine.items() if grade_id in answers and source != answers[grade_id])
    return Candidate(item, hashlib.sha256(data).hexdigest(), answered)


def _latest_versions(candidates: list[Candidate]) -> tuple[list[Candidate], list[str]]:
    """The latest version of each name (rule 1), and a line for each version it replaces."""
    by_name: dict[str, list[Candidate]] = {}
    for candidate in candidates:
        by_name.setdefault(candidate.version[0], []).append(candidate)
    latest, lines = [], []
    for versions in by_name.values():
        versions.sort(key=lambda c: c.version[1], reverse=True)
        latest.append(versions[0])
        lines += [f"{versions[0].label} is a resubmission and replaces {older.label}" for older in versions[1:]
                  if older.digest != versions[0].digest]
    return latest, lines


def _describe(candidate: Candidate) -> str:
    return f"{candidate.label} ({candidate.answered} answer{'s' if candidate.answered != 1 else ''})"


def choose(candidates: list[Candidate]) -> tuple[Candidate | None, list[str], str | None]:
    """The notebook to grade among ``candidates`` (one student, one stage, at least one), the lines that say
    what was chosen and replaced, and the problem when no choice can be made (then None is chosen)."""
    latest, lines = _latest_versions(candidates)
    distinct = list({c.digest: c for c in sorted(latest, key=lambda c: c.item.shown_path)}.values())
    if len(distinct) == 1:
        return distinct[0], lines, None
    ranked = sorted(distinct, key=lambda c: (c.answered, c.item.entry.mtime), reverse=True)
    best, runner_up = ranked[0], ranked[1]
    if (best.answered, best.item.entry.mtime) == (runner_up.answered, runner_up.item.entry.mtime):
        tied = ", ".join(c.label for c in ranked if (c.answered, c.item.entry.mtime) ==
                         (best.answered, best.item.entry.mtime))
        return None, lines, (f"several different notebooks for this stage ({tied}), equally answered and equally "
                             "new: which one to grade cannot be told; hand in one")
    reason = "the most answers" if best.answered > runner_up.answered else "the newest of those with most answers"
    others = ", ".join(_describe(c) for c in ranked[1:])
    return best, [*lines, f"graded {_describe(best)}, {reason}; not {others}"], None
