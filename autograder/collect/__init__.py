"""Collect a class's submissions: a filter from what students and LMSs hand in to the notebooks that are graded.

``collect_submissions(source, root, stages)`` reads ``source`` (a folder, a ``.zip``, or a course folder's own
``submitted/``) as data (:mod:`.sources`), tells whose each file is and which stage it is for (:mod:`.attribute`,
:mod:`.names`), picks one notebook per student and stage (:mod:`.choose`), and writes only those, as regular files
of this user (mode 0600), into a fresh ``<root>/collected/<student id>/<stage>/<stage>.ipynb`` (with a checked
``timestamp.txt`` when one was handed in) plus the roster ``<root>/collected/students.json``. nbgrader reads its
submissions there (:func:`autograder.course.nbgrader_config`). The old ``collected/`` is replaced only once the new
one is complete.

Refused, one line each for their student and never copied: symbolic links, hard links to a file outside the
student's submission, devices and pipes, folders named like notebooks, archive members with an absolute or climbing
path, files over the size or compression-ratio limits (:class:`.sources.Limits`), and files that are not valid
notebooks. A problem costs its student's stage, never the class.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import zipfile
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

from ..course import SUBMITTED
from .attribute import NOTEBOOK, TIMESTAMP, Item, attribute
from .choose import Candidate, choose, read_candidate, solution_sources
from .names import Student
from .sources import Limits, Refused, folder_entries, zip_entries

MISSING = "missing"
SUBMITTED_IN_COURSE = "submitted"  # a course folder's own hand-in folder, collected from like any other
ROSTER = "students.json"
__all__ = ["MISSING", "ROSTER", "Collection", "Limits", "SubmissionsError", "collect_submissions"]


class SubmissionsError(ValueError):
    """The ``submissions`` argument cannot be read as a class's hand-ins; nothing was changed."""


@dataclass
class Collection:
    """What collecting found.

    Attributes:
        students: every student seen, by id.
        problems: per (student id, stage), why it is not graded (:data:`MISSING`, a clash, an invalid notebook).
        notes: per (student id, stage; ``""`` for no stage), what was refused, replaced or chosen, one line each.
        unowned: a line for each file no student owns.
    """

    students: list[Student] = field(default_factory=list)
    problems: dict[tuple[str, str], str] = field(default_factory=dict)
    notes: dict[tuple[str, str], list[str]] = field(default_factory=dict)
    unowned: list[str] = field(default_factory=list)

    def note(self, student: str, stage: str | None, line: str) -> None:
        self.notes.setdefault((student, stage or ""), []).append(line)


@contextmanager
def _entries(source: Path, limits: Limits):
    """The entries of ``source``; :class:`SubmissionsError` naming the ``submissions`` argument when it is neither
    a folder nor a readable zip."""
    if not source.exists():
        raise SubmissionsError(f"`submissions`: no such file or folder: {source}")
    if source.is_dir():
        inner = source / SUBMITTED_IN_COURSE
        with folder_entries(inner if inner.is_dir() and not inner.is_symlink() else source, limits) as entries:
            yield entries
        return
    try:
        archive = zipfile.ZipFile(source)
    except (zipfile.BadZipFile, OSError) as error:
        raise SubmissionsError(f"`submissions` must be a folder or a readable .zip file; {source} is not "
                               f"({error})") from None
    with archive:
        yield zip_entries(archive, limits)


def _unique_students(items: list[Item]) -> None:
    """Give two different students (another name, LMS or participant id) that share an id different ids."""
    owners: dict[str, Student] = {}
    for item in items:
        owner = owners.setdefault(item.student.id, item.student)
        if owner != item.student:
            key = f"{item.student.lms}/{item.student.participant}/{item.student.name}"
            suffix = hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()[:6]
            item.student = replace(item.student, id=f"{item.student.id}-{suffix}")
            owners.setdefault(item.student.id, item.student)


def _notebook_folder(item: Item) -> str | None:
    """The path of the outermost folder named like a notebook that ``item`` is or lies in, or None."""
    parts = item.entry.parts if item.entry.kind == "folder" else item.entry.parts[:-1]
    inside = next((i for i, part in enumerate(parts) if part.lower().endswith(NOTEBOOK)), None)
    return None if inside is None else "/".join(parts[:inside + 1])


def _refusal(item: Item, outside: set[tuple[int, int]]) -> str | None:
    """Why ``item`` is not collected, or None when it is a file to read."""
    path, kind = f"`{item.shown_path}`", item.entry.kind
    if _notebook_folder(item):
        return f"`{_notebook_folder(item)}` is a folder named like a notebook: not collected"
    if kind == "link":
        return f"{path} is a symbolic link: not collected (hand in the notebook itself)"
    if kind == "special":
        return f"{path} is not a regular file (a device, pipe or socket): not collected"
    if kind == "unsafe":
        return f"{path}: an absolute path or one that climbs out of the archive: not collected"
    if item.entry.inode and item.entry.inode[:2] in outside:
        return f"{path} is a hard link to a file outside this submission: not collected"
    return None


def _outside_links(items: list[Item]) -> set[tuple[int, int]]:
    """The (device, inode) of files with more hard links than this student's submission holds."""
    seen = Counter(item.entry.inode[:2] for item in items if item.entry.inode)
    return {item.entry.inode[:2] for item in items
            if item.entry.inode and item.entry.inode[2] > seen[item.entry.inode[:2]]}


def _timestamp(data: bytes) -> bytes | None:
    """``data`` when it is a short, printable date nbgrader can read; else None."""
    from dateutil.parser import parse

    try:
        text = data.decode("ascii").strip()
        if len(text) > 64 or not text.isprintable():
            return None
        parse(text)
    except (UnicodeDecodeError, ValueError, OverflowError):
        return None
    return text.encode()


def _write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to a new file ``path`` that only this user reads, in folders only this user opens."""
    for folder in reversed([path.parent, *path.parent.parents]):
        if not folder.exists():
            folder.mkdir(mode=0o700)
    handle = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(handle, "wb") as file:
        file.write(data)


def _read_timestamp(student: Student, item: Item, collection: Collection) -> bytes | None:
    try:
        stamp = _timestamp(item.entry.read())
    except Refused:
        stamp = None
    if stamp is None:
        collection.note(student.id, item.stage, f"`{item.shown_path}` is not a date: ignored")
    return stamp


def _read_notebook(student: Student, item: Item, released: dict, collection: Collection,
                   invalid: dict[str, str]) -> Candidate | None:
    """``item`` as a candidate, or None with a line (and, when it is no valid notebook, why in ``invalid``)."""
    try:
        data = item.entry.read()
    except Refused as error:
        collection.note(student.id, item.stage, f"`{item.shown_path}` was not collected: {error}")
        return None
    try:
        return read_candidate(item, data, released)
    except Refused as error:
        collection.note(student.id, item.stage, f"`{item.shown_path}` was not collected: {error}")
        invalid.setdefault(item.stage or "", str(error))
        return None


def _read_files(student: Student, items: list[Item], released: dict, collection: Collection):
    """This student's candidates, timestamps and, for the stages with a file that is not a valid notebook, why
    (each by stage); every refusal noted."""
    candidates: dict[str, list[Candidate]] = {}
    timestamps: dict[str, bytes] = {}
    invalid: dict[str, str] = {}
    outside, ignored, refused = _outside_links(items), [], set()
    for item in items:
        reason = _refusal(item, outside)
        if reason and reason not in refused:
            refused.add(reason)
            collection.note(student.id, item.stage, reason)
        if reason or item.entry.kind != "file":
            continue
        if item.name == TIMESTAMP and item.stage and len(item.entry.parts) > 2:
            stamp = _read_timestamp(student, item, collection)
            if stamp is not None:
                timestamps[item.stage] = stamp
        elif not item.is_notebook:
            ignored.append(f"`{item.shown_path}`")
        else:
            candidate = _read_notebook(student, item, released, collection, invalid)
            if candidate is not None:
                candidates.setdefault(item.stage, []).append(candidate)
    if ignored:
        more = f" and {len(ignored) - 3} more" if len(ignored) > 3 else ""
        collection.note(student.id, None, f"not notebooks, not graded: {', '.join(ignored[:3])}{more}")
    return candidates, timestamps, invalid


def _collect_student(student: Student, items: list[Item], stages, released: dict, target: Path,
                     collection: Collection) -> None:
    candidates, timestamps, invalid = _read_files(student, items, released, collection)
    for stage in stages:
        if not candidates.get(stage):
            refused = (student.id, stage) in collection.notes
            collection.problems[student.id, stage] = invalid.get(stage) or (
                "nothing gradable handed in (see the notes)" if refused else MISSING)
            continue
        chosen, lines, problem = choose(candidates[stage])
        for line in lines:
            collection.note(student.id, stage, line)
        if chosen is None:
            collection.problems[student.id, stage] = problem
            continue
        data = chosen.item.entry.read()
        if hashlib.sha256(data).hexdigest() != chosen.digest:
            collection.problems[student.id, stage] = f"{chosen.label} changed while it was collected"
            continue
        _write_private(target / student.id / stage / f"{stage}.ipynb", data)
        if stage in timestamps:
            _write_private(target / student.id / stage / TIMESTAMP, timestamps[stage])


def _released_answers(root: Path, stages) -> dict[str, dict[str, str]]:
    import nbformat  # here, not at the top: the command line imports this package to parse its arguments

    return {stage: solution_sources(nbformat.read(root / "release" / stage / f"{stage}.ipynb", as_version=4))
            for stage in stages}


def _selected(by_student: dict[Student, list[Item]], only: frozenset[str] | None) -> list[Student]:
    """The students to collect: all, or those of ``only`` (ids), each of which must be in the source."""
    found = sorted(by_student, key=lambda s: s.id)
    if only is None:
        return found
    unknown = sorted(only - {student.id for student in found})
    if unknown:
        raise SubmissionsError(f"`--student`: no {', '.join(unknown)} in the submissions (their ids: "
                               f"{', '.join(student.id for student in found[:20])}{' ...' if len(found) > 20 else ''})")
    return [student for student in found if student.id in only]


def _start_from(collected: Path, fresh: Path, only: frozenset[str] | None) -> dict:
    """Fill ``fresh`` with what ``collected`` holds of the students not in ``only`` (nothing when ``only`` is None);
    returns their roster."""
    if only is None or not collected.is_dir():
        return {}
    roster = json.loads((collected / ROSTER).read_text()) if (collected / ROSTER).is_file() else {}
    for folder in collected.iterdir():
        if folder.is_dir() and folder.name not in only:
            shutil.copytree(folder, fresh / folder.name, symlinks=True)
    return {student: entry for student, entry in roster.items() if student not in only}


def collect_submissions(source: Path, root: Path, stages, limits: Limits = Limits(),
                        only: frozenset[str] | None = None) -> Collection:
    """Collect ``source`` into ``<root>/collected`` (see the module's docstring); ``root`` must be released.

    ``only``: the ids of the students to collect again (``grade --student``); what ``collected/`` holds of the
    others stays as it is, and the returned collection lists the selected students only.

    Raises:
        SubmissionsError: ``source`` is neither a folder nor a readable zip, lies in ``<root>/collected``, or lacks
            a student of ``only`` (nothing is changed then).
    """
    source, root = Path(source).absolute(), Path(root).resolve()
    collected = root / SUBMITTED
    if source.resolve() == collected or collected in source.resolve().parents:
        raise SubmissionsError(f"`submissions` must not be the folder grading collects into ({collected})")
    inner = root / SUBMITTED_IN_COURSE
    if source.resolve() == root and not (inner.is_dir() and not inner.is_symlink()):
        raise SubmissionsError(f"`submissions` is the course folder {root}, which has no {SUBMITTED_IN_COURSE}/ "
                               "folder of its own (a link is not followed): its other folders are no hand-ins")
    released = _released_answers(root, stages)
    collection = Collection()
    fresh = root / f"{SUBMITTED}.new"
    shutil.rmtree(fresh, ignore_errors=True)
    fresh.mkdir(mode=0o700)
    try:
        roster = _start_from(collected, fresh, only)
        with _entries(source, limits) as entries:
            items, collection.unowned = attribute(entries, stages)
            _unique_students(items)
            by_student: dict[Student, list[Item]] = {}
            for item in items:
                by_student.setdefault(item.student, []).append(item)
            for student in _selected(by_student, only):
                _collect_student(student, by_student[student], stages, released, fresh, collection)
                collection.students.append(student)
        roster |= {s.id: {"name": s.name, "lms": s.lms, "participant": s.participant} for s in collection.students}
        _write_private(fresh / ROSTER, json.dumps(dict(sorted(roster.items())), indent=1,
                                                  ensure_ascii=False).encode())
    except BaseException:
        shutil.rmtree(fresh, ignore_errors=True)
        raise
    shutil.rmtree(collected, ignore_errors=True)
    fresh.rename(collected)
    return collection
