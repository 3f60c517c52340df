"""Collecting a class's hand-ins (``autograder/collect/``) without running them: LMS names, the choice among a
student's notebooks, what is refused, the limits on archives, and the text-safety of names. The same promises
through the real command line, with grading: tests/test_class_input.py."""

from __future__ import annotations

import json
import os
import stat
import struct
import zipfile
from pathlib import Path

import pytest

from autograder.collect import MISSING, SubmissionsError, collect_submissions
from autograder.collect.names import from_download, resubmission, safe_id, stage_in_name
from autograder.collect.sources import Limits, Refused, zip_entries
from autograder.commands import release
from autograder.safe_text import csv_cell, shown

TOY_DIR = Path(__file__).parent / "submissions" / "toy"
STAGE = "00_toy"
STAGES = (STAGE,)


@pytest.fixture(scope="module")
def course(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("course")
    release(root, STAGES, TOY_DIR, notebooks_dir=None)
    return root


@pytest.fixture(scope="module")
def answered(course) -> bytes:
    """The toy solution: every answer cell filled in."""
    return (TOY_DIR / f"{STAGE}.ipynb").read_bytes()


@pytest.fixture(scope="module")
def untouched(course) -> bytes:
    """The released notebook, as a student receives it."""
    return (course / "release" / STAGE / f"{STAGE}.ipynb").read_bytes()


def _ids(collection) -> list[str]:
    return [student.id for student in collection.students]


def test_lms_names_keep_the_participant_id_and_the_name_as_written():
    moodle = from_download("Jane Smith_123456_assignsubmission_file_Copy of 00_toy.ipynb", STAGES)
    assert (moodle.student.id, moodle.student.name, moodle.student.participant, moodle.rest) == (
        "jane-smith_123456", "Jane Smith", "123456", "Copy of 00_toy.ipynb")
    canvas = from_download("smithjane_LATE_12345_67890_00_toy-1.ipynb", STAGES)
    assert (canvas.student.id, canvas.student.lms, canvas.submission, canvas.rest) == (
        "smithjane_12345", "canvas", 67890, "00_toy-1.ipynb")
    assert from_download("00_toy.ipynb", STAGES) is None  # a stage's name is nobody's
    assert from_download("bob_00_toy.ipynb", STAGES).student.id == "bob"
    assert resubmission("00_toy-2.ipynb") == ("00_toy.ipynb", 2)
    assert resubmission("00_toy (3).ipynb") == ("00_toy.ipynb", 3)
    assert resubmission("00_toy.ipynb") == ("00_toy.ipynb", 0)
    assert stage_in_name("Copy of 00_toy (2).ipynb", STAGES) == STAGE
    for unsafe in ("../x", "=cmd|' /C calc'!A0", "a\x1b[2Jb", "x.ipynb", "students.json", ""):
        made = safe_id(unsafe)
        assert made != unsafe and made[0].isalnum() and "/" not in made and "\x1b" not in made
    assert safe_id("a/b") != safe_id("a_b")  # two raw names never share an id


def test_names_are_shown_escaped_and_written_to_csv_as_text():
    assert shown("Eve\x1b[2J\u202eevil\n") == "Eve\\x1b[2J\\u202eevil\\x0a"
    for formula in ("=1+1", "+1", "-1", "@SUM(A1)", "\t=1", "\r=1"):
        assert csv_cell(formula).startswith("'")
    assert csv_cell("jane-smith_1") == "jane-smith_1"


def test_two_students_with_one_name_resubmissions_and_copies(course, tmp_path, answered, untouched):
    archive = tmp_path / "moodle.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as handle:
        handle.writestr("Jane Smith_101_assignsubmission_file_00_toy.ipynb", answered)
        handle.writestr("Jane Smith_102_assignsubmission_file_00_toy.ipynb", untouched)
        handle.writestr("Ann Lee_103_assignsubmission_file_00_toy.ipynb", answered)
        handle.writestr("Ann Lee_103_assignsubmission_file_00_toy-1.ipynb", untouched)  # the later one wins
        handle.writestr("Bob Ray_104_assignsubmission_file_/00_toy.ipynb", untouched)
        handle.writestr("Bob Ray_104_assignsubmission_file_/Copy of 00_toy.ipynb", answered)
        handle.writestr("Cy Ng_105_assignsubmission_file_/a.ipynb", answered)
        handle.writestr("Cy Ng_105_assignsubmission_file_/b.ipynb", answered)  # the same bytes: one notebook
    collection = collect_submissions(archive, course, STAGES)
    assert _ids(collection) == ["ann-lee_103", "bob-ray_104", "cy-ng_105", "jane-smith_101", "jane-smith_102"]
    assert collection.problems == {}
    collected = course / "collected"
    assert (collected / "ann-lee_103" / STAGE / f"{STAGE}.ipynb").read_bytes() == untouched
    assert (collected / "bob-ray_104" / STAGE / f"{STAGE}.ipynb").read_bytes() == answered
    assert collection.notes[("ann-lee_103", STAGE)] == [
        "`Ann Lee_103_assignsubmission_file_00_toy-1.ipynb` is a resubmission and replaces "
        "`Ann Lee_103_assignsubmission_file_00_toy.ipynb`"]
    assert collection.notes[("bob-ray_104", STAGE)] == [
        "graded `Bob Ray_104_assignsubmission_file_/Copy of 00_toy.ipynb` (3 answers), the most answers; not "
        "`Bob Ray_104_assignsubmission_file_/00_toy.ipynb` (0 answers)"]
    assert ("cy-ng_105", STAGE) not in collection.notes
    roster = json.loads((collected / "students.json").read_text())
    assert roster["jane-smith_102"] == {"name": "Jane Smith", "lms": "moodle", "participant": "102"}


def test_an_unresolvable_clash_is_one_line_for_that_student(course, tmp_path, answered):
    other = json.loads(answered)
    other["cells"][0]["source"] = "my own notes"
    folder = tmp_path / "class" / "dana" / STAGE
    folder.mkdir(parents=True)
    for name, data in (("a.ipynb", answered), ("b.ipynb", json.dumps(other).encode())):
        (folder / name).write_bytes(data)
        os.utime(folder / name, (1_700_000_000, 1_700_000_000))
    (tmp_path / "class" / "eli" / STAGE).mkdir(parents=True)
    (tmp_path / "class" / "eli" / STAGE / f"{STAGE}.ipynb").write_bytes(answered)
    collection = collect_submissions(tmp_path / "class", course, STAGES)
    assert collection.problems == {("dana", STAGE): "several different notebooks for this stage "
                                   f"(`dana/{STAGE}/a.ipynb`, `dana/{STAGE}/b.ipynb`), equally answered and equally "
                                   "new: which one to grade cannot be told; hand in one"}
    assert (course / "collected" / "eli" / STAGE / f"{STAGE}.ipynb").exists()  # the class goes on


def test_links_devices_and_notebook_named_folders_are_refused_and_never_copied(course, tmp_path, answered):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.ipynb").write_bytes(answered)
    students = tmp_path / "class"
    for student in ("ok", "soft", "hard", "pipe", "folder"):
        (students / student / STAGE).mkdir(parents=True)
    (students / "ok" / STAGE / f"{STAGE}.ipynb").write_bytes(answered)
    (students / "ok" / STAGE / "timestamp.txt").write_text("2026-12-01 10:00:00.000000 UTC")
    (students / "soft" / STAGE / f"{STAGE}.ipynb").symlink_to(outside / "secret.ipynb")
    os.link(outside / "secret.ipynb", students / "hard" / STAGE / f"{STAGE}.ipynb")
    os.mkfifo(students / "pipe" / STAGE / f"{STAGE}.ipynb")
    (students / "folder" / STAGE / f"{STAGE}.ipynb").mkdir()
    (students / "folder" / STAGE / f"{STAGE}.ipynb" / "inner.ipynb").write_bytes(answered)
    collection = collect_submissions(students, course, STAGES)
    lines = {student: collection.notes[(student, STAGE)] for student in ("soft", "hard", "pipe", "folder")}
    assert lines == {
        "soft": [f"`soft/{STAGE}/{STAGE}.ipynb` is a symbolic link: not collected (hand in the notebook itself)"],
        "hard": [f"`hard/{STAGE}/{STAGE}.ipynb` is a hard link to a file outside this submission: not collected"],
        "pipe": [f"`pipe/{STAGE}/{STAGE}.ipynb` is not a regular file (a device, pipe or socket): not collected"],
        "folder": [f"`folder/{STAGE}/{STAGE}.ipynb` is a folder named like a notebook: not collected"]}
    assert {student: collection.problems.get((student, STAGE)) for student in lines} == dict.fromkeys(
        lines, "nothing gradable handed in (see the notes)")
    collected = course / "collected"
    files = [path for path in collected.rglob("*") if not path.is_dir()]
    assert sorted(str(path.relative_to(collected)) for path in files) == [
        f"ok/{STAGE}/{STAGE}.ipynb", f"ok/{STAGE}/timestamp.txt", "students.json"]
    assert all(stat.S_IMODE(path.lstat().st_mode) == 0o600 and path.is_file() and not path.is_symlink()
               for path in files)


def test_archive_members_that_climb_out_inflate_or_lie_about_their_size_are_refused(tmp_path):
    archive = tmp_path / "a.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as handle:
        handle.writestr("../../escape.ipynb", b"{}")
        handle.writestr("/abs/path.ipynb", b"{}")
        handle.writestr("zeros.ipynb", b"\0" * (20 * 2**20))  # 20 MiB in about 20 KiB
        handle.writestr("big.ipynb", os.urandom(3 * 2**20))  # incompressible, over a 2 MiB limit
        handle.writestr("liar.ipynb", b"\0" * (2 * 2**20))
    _declare_size(archive, "liar.ipynb", 100)
    with zipfile.ZipFile(archive) as handle:
        entries = {"/".join(entry.parts): entry for entry in zip_entries(handle, Limits(notebook_bytes=2 * 2**20))}
        assert entries["escape.ipynb"].kind == "unsafe" and entries["abs/path.ipynb"].kind == "unsafe"
        with pytest.raises(Refused, match="inflates past the 2 MiB limit"):
            entries["big.ipynb"].read()
        with pytest.raises(Refused, match=r"more than 100 times its compressed size \(--max-ratio\)"):
            entries["zeros.ipynb"].read()
        with pytest.raises(Refused, match="could not be read from the archive"):
            entries["liar.ipynb"].read()  # inflating stops at the declared size; the checksum then fails


def _declare_size(archive: Path, member: str, size: int) -> None:
    """Rewrite the uncompressed size that ``archive``'s central directory declares for ``member``."""
    data = bytearray(archive.read_bytes())
    at = data.find(b"PK\x01\x02")
    while at != -1:
        length = struct.unpack("<H", data[at + 28:at + 30])[0]
        if data[at + 46:at + 46 + length] == member.encode():
            data[at + 24:at + 28] = struct.pack("<I", size)
            archive.write_bytes(bytes(data))
            return
        at = data.find(b"PK\x01\x02", at + 46)
    raise AssertionError(f"no {member} in {archive}")


def test_a_bad_source_is_one_clear_error_and_the_last_collection_stays(course, tmp_path, answered):
    folder = tmp_path / "class" / "fay" / STAGE
    folder.mkdir(parents=True)
    (folder / f"{STAGE}.ipynb").write_bytes(answered)
    collect_submissions(tmp_path / "class", course, STAGES)
    kept = course / "collected" / "fay" / STAGE / f"{STAGE}.ipynb"
    (tmp_path / "notes.txt").write_text("not an archive")
    for source, message in ((tmp_path / "nowhere", "`submissions`: no such file or folder"),
                            (tmp_path / "notes.txt", "`submissions` must be a folder or a readable .zip file")):
        with pytest.raises(SubmissionsError, match=message):
            collect_submissions(source, course, STAGES)
        assert kept.read_bytes() == answered
    with pytest.raises(SubmissionsError, match="must not be the folder grading collects into"):
        collect_submissions(course / "collected", course, STAGES)
    (course / "submitted").symlink_to(tmp_path / "class", target_is_directory=True)
    try:  # the course folder itself, its submitted/ a link: its source/ and release/ are nobody's hand-ins
        with pytest.raises(SubmissionsError, match="has no submitted/ folder of its own"):
            collect_submissions(course, course, STAGES)
    finally:
        (course / "submitted").unlink()
    assert kept.read_bytes() == answered
    assert collect_submissions(tmp_path / "class", course, ("00_toy",)).problems == {}
    (folder / f"{STAGE}.ipynb").unlink()
    assert collect_submissions(tmp_path / "class", course, STAGES).problems == {("fay", STAGE): MISSING}
