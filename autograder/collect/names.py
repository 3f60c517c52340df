"""Who handed a file in and which stage it is for, read from the names LMSs and folders give submissions.

- Moodle: ``Jane Smith_123456_assignsubmission_file_01_noising.ipynb`` (or a folder of that name ending in ``_``).
- Canvas: ``smithjane_12345_67890_01_noising.ipynb`` (user id, then submission id; ``smithjane_LATE_12345_...``).
- Any other download: ``<student>_<anything>.ipynb``, the student being the part before the first underscore.
- nbgrader's layout: the folder ``<student>/``.

A :class:`Student` keeps the LMS's participant id, so two students with one name are two students. Its ``id`` is
safe as a folder name and as an nbgrader student id; its ``name`` is data, to be escaped wherever it is shown.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from dataclasses import dataclass

MOODLE = re.compile(r"^(?P<name>.+?)_(?P<participant>\d{1,20})_assignsubmission_[a-z]+_(?P<rest>.*)$", re.S)
CANVAS = re.compile(r"^(?P<name>[^_]+)_(?:LATE_)?(?P<participant>\d{1,20})_(?P<submission>\d{1,20})_(?P<rest>.+)$",
                    re.S)
OTHER = re.compile(r"^(?P<name>[^_]+)_(?P<rest>.+)$", re.S)
SAFE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@+-]{0,63}")
#: a resubmission's suffix before ``.ipynb``: Canvas's ``-1``, a browser's `` (1)``
RESUBMISSION = re.compile(r"(?:-(\d{1,3})| \((\d{1,3})\))$")


@dataclass(frozen=True)
class Student:
    """A student as the submissions name them.

    Attributes:
        id: the course folder's name for them (letters, digits and ``._@+-``; at most 73 characters).
        name: as the LMS or the folder wrote it (any text: escape it where it is shown).
        lms: ``"moodle"``, ``"canvas"``, ``"download"`` (another LMS name) or ``"folder"`` (nbgrader's layout).
        participant: the LMS's id of the student (Moodle participant, Canvas user id); ``""`` when none.
    """

    id: str
    name: str
    lms: str
    participant: str = ""


@dataclass(frozen=True)
class Download:
    """What an LMS file or folder name says: whose it is, the name the student gave the file (``rest``), and the
    LMS's submission number (Canvas; 0 elsewhere), higher for a later submission."""

    student: Student
    rest: str
    submission: int = 0


def slug(text: str) -> str:
    """``text`` in lower-case ASCII letters and digits joined by ``-`` (accents dropped), at most 40 characters."""
    folded = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode().lower()
    return re.sub(r"[^a-z0-9]+", "-", folded).strip("-")[:40].strip("-")


def safe_id(raw: str) -> str:
    """``raw`` itself when it is already a safe id, else its :func:`slug` and a short hash of it (so two raw
    names never share an id)."""
    if SAFE_ID.fullmatch(raw) and not raw.lower().endswith((".ipynb", ".json")):  # no notebook, no roster name
        return raw
    digest = hashlib.sha256(raw.encode("utf-8", "surrogateescape")).hexdigest()[:8]
    return f"{slug(raw) or 'student'}-{digest}"


def from_folder(name: str) -> Student:
    """The student of nbgrader's ``<student>/`` folder."""
    return Student(safe_id(name), name, "folder")


def from_download(name: str, stages) -> Download | None:
    """The student and file of an LMS download's name (a file's, or a Moodle folder's); None when it names no one
    (``01_noising.ipynb``: a stage's name is not a student's)."""
    for lms, pattern in (("moodle", MOODLE), ("canvas", CANVAS)):
        match = pattern.match(name)
        if match:
            person = match["name"]
            student = Student(f"{slug(person) or 'student'}_{match['participant']}", person, lms, match["participant"])
            submission = int(match["submission"]) if lms == "canvas" else 0
            return Download(student, match["rest"], submission)
    match = OTHER.match(name)
    if match and not any(name.lower().startswith(stage.lower()) for stage in stages):
        return Download(Student(safe_id(match["name"]), match["name"], "download"), match["rest"])
    return None


def stage_in_name(name: str, stages) -> str | None:
    """The stage whose key the file name holds (``Copy of 01_noising (2).ipynb``: ``01_noising``); the longest
    when several do; None when none does."""
    found = [stage for stage in stages if stage.lower() in name.lower()]
    return max(found, key=len) if found else None


def resubmission(name: str) -> tuple[str, int]:
    """A notebook's name without its resubmission suffix, and the suffix's number (0 without one):
    ``01_noising-2.ipynb`` gives ``("01_noising.ipynb", 2)``."""
    stem = name[:-len(".ipynb")] if name.lower().endswith(".ipynb") else name
    match = RESUBMISSION.search(stem)
    if not match:
        return name, 0
    return stem[:match.start()] + name[len(stem):], int(match.group(1) or match.group(2))
