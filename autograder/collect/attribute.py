"""Whose each entry of a source is, and what it is for: the layout of a class's submissions, read from names.

Two layouts (the first entries decide; :func:`attribute` reads the whole source one way):

- **nbgrader's**: ``<student>/<stage>/<file>`` (a stage folder per student), also ``<student>/<file>``;
- **LMS downloads**: files (or Moodle's one folder per student) at the top, named as :mod:`.names` describes.

A source that holds one folder around everything (``class/...``, a zip of a folder) is read below that folder.
Every entry becomes an :class:`Item` of a student, or a line that no student owns (a file whose name names no one).
"""

from __future__ import annotations

from dataclasses import dataclass

from .names import Download, Student, from_download, from_folder, stage_in_name
from .sources import Entry

NOTEBOOK = ".ipynb"
TIMESTAMP = "timestamp.txt"


@dataclass
class Item:
    """An entry of one student's submission.

    Attributes:
        student: whose it is.
        entry: the entry itself (its ``parts``: the path inside the source).
        name: the name the student gave it (an LMS's prefix removed).
        stage: the stage its folders or its name give; None when they give none (its content may).
        submission: the LMS's submission number (Canvas), 0 elsewhere.
    """

    student: Student
    entry: Entry
    name: str
    stage: str | None
    submission: int = 0

    @property
    def shown_path(self) -> str:
        return "/".join(self.entry.parts)

    @property
    def is_notebook(self) -> bool:
        return self.name.lower().endswith(NOTEBOOK)


def _without_wrapper(entries: list[Entry], stages) -> list[Entry]:
    """``entries`` below their one common top folder, when they share one that is neither a student's folder in
    nbgrader's layout (it holds stage folders) nor an LMS name."""
    tops = {entry.parts[0] for entry in entries}
    if len(tops) != 1 or not all(len(entry.parts) > 1 or entry.kind == "folder" for entry in entries):
        return entries
    top = tops.pop()
    if from_download(top, stages) is not None or is_nbgrader_layout(entries, stages):
        return entries
    inner = [Entry(entry.parts[1:], entry.kind, entry.mtime, entry.inode, entry.reader)
             for entry in entries if len(entry.parts) > 1]
    return _without_wrapper(inner, stages) if inner else entries


def is_nbgrader_layout(entries: list[Entry], stages) -> bool:
    """True when some entry lies in a ``<student>/<stage>/`` folder."""
    return any(len(entry.parts) >= 2 and entry.parts[1] in stages and (len(entry.parts) > 2 or entry.kind == "folder")
               for entry in entries)


def _from_nbgrader(entry: Entry, stages) -> Item | str:
    if len(entry.parts) == 1:
        if entry.kind == "folder":
            return Item(from_folder(entry.name), entry, "", None)
        return f"`{entry.name}` lies beside the students' folders, in none of them: not collected"
    student = from_folder(entry.parts[0])
    in_stage = entry.parts[1] if len(entry.parts) > 2 and entry.parts[1] in stages else None
    return Item(student, entry, entry.name, in_stage or stage_in_name(entry.name, stages))


def _from_lms(entry: Entry, stages) -> Item | str:
    download: Download | None = from_download(entry.parts[0], stages)
    if download is None:
        if entry.kind == "unsafe":
            return f"`{'/'.join(entry.parts)}`: an absolute path or one that climbs out of the archive: not collected"
        if entry.kind == "folder" and len(entry.parts) == 1:
            return ""  # a folder with no student's name: what lies in it says so itself
        return f"`{'/'.join(entry.parts)}`: its name names no student (an LMS download's name begins with one)"
    name = download.rest if len(entry.parts) == 1 else entry.name
    folders = " ".join(entry.parts[1:-1] if len(entry.parts) > 1 else ())
    stage = stage_in_name(name, stages) or stage_in_name(folders, stages)
    if len(entry.parts) == 1 and entry.kind == "folder":
        name = ""  # Moodle's folder of a student's files: the folder itself is no file of theirs
    return Item(download.student, entry, name, stage, download.submission)


def attribute(entries: list[Entry], stages) -> tuple[list[Item], list[str]]:
    """Every entry as an :class:`Item` of its student, and a line for each one that no student owns."""
    entries = _without_wrapper(entries, stages)
    reader = _from_nbgrader if is_nbgrader_layout(entries, stages) else _from_lms
    items, unowned = [], []
    for entry in entries:
        found = reader(entry, stages)
        if isinstance(found, Item):
            items.append(found)
        elif found:
            unowned.append(found)
    return items, unowned
