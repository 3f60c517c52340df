"""What a real class hands in, graded by the real command line (``python -m autograder grade``) on the toy course:
a Moodle zip (two students with one name, resubmissions, a ``Copy of`` beside the untouched notebook, a folder named
like a notebook, a link, members that climb out or inflate, formula-like and escape-sequence names), once with
``--jobs`` and once on a local Dask cluster; and a course folder's own ``submitted/`` graded in place, with links to
the solutions, a classmate, the gradebook and a file outside, a hard link outside, and a cell that hunts for the
hidden tests.

After each run: every student's grade and line, honest students' full marks, no file outside the course folder
changed, nothing refused on disk in the course folder, and the peak memory of the largest process of the run
(``ru_maxrss`` of the command and every process it waited for) under :data:`PEAK_MIB`.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import zipfile
from pathlib import Path

import nbformat
import pytest

from autograder.execute.sandbox import sandbox_unavailable

TOY_DIR = Path(__file__).parent / "submissions" / "toy"
STAGE = "00_toy"
SANDBOXED = sandbox_unavailable() is None
#: the largest process of a grading run (a kernel or a worker with torch, or the collector) stays under this (MiB)
PEAK_MIB = 1536
MOODLE = "_assignsubmission_file_"
#: a cell that looks for a notebook or the hidden test anywhere it can read, and prints what it finds
HUNT = """import os, sys
found = []
environment = tuple(os.path.realpath(p) for p in {sys.prefix, sys.base_prefix})  # read-only, maybe under /tmp
for top in (os.getcwd(), "/run", "/tmp", "/dev/shm"):
    for folder, subfolders, files in os.walk(top):
        subfolders[:] = [d for d in subfolders if not os.path.realpath(os.path.join(folder, d)).startswith(environment)]
        for name in files:
            try:
                if os.path.getsize(os.path.join(folder, name)) > 2**20:
                    continue
                text = open(os.path.join(folder, name), errors="replace").read()
            except OSError:
                continue
            if name.endswith(".ipynb") or ("HIDDEN" + " TESTS") in text or ("seed=" + "11") in text:
                found.append(os.path.join(folder, name))
print("found:", found)"""

pytestmark = pytest.mark.timeout(600)


def _notebook(extra_cell: str | None = None, wrong: bool = False) -> bytes:
    """The toy solution (4 points); ``wrong``: ``add_noise`` wrong (1 point); ``extra_cell`` after ``add_noise``."""
    notebook = nbformat.read(TOY_DIR / f"{STAGE}.ipynb", as_version=4)
    index, cell = next((i, c) for i, c in enumerate(notebook.cells)
                       if c.metadata.get("nbgrader", {}).get("grade_id") == "add_noise")
    if wrong:
        cell.source = cell.source[: cell.source.index("    ### BEGIN SOLUTION")] + "    return x"
    if extra_cell is not None:
        notebook.cells.insert(index + 1, nbformat.v4.new_code_cell(extra_cell))
    return nbformat.writes(notebook).encode()


def _grade(source: Path, course: Path, *options: str, timeout: int = 500) -> tuple[subprocess.CompletedProcess, int]:
    """``python -m autograder grade source`` and its peak memory (MiB, the largest process it or any process it
    waited for ever was)."""
    command = [sys.executable, "-m", "autograder", "grade", str(source), "--course", str(course), "--stages", STAGE,
               "--solutions", str(TOY_DIR), "--cell-timeout", "60", *options,
               *([] if SANDBOXED else ["--no-sandbox"])]
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        process = subprocess.Popen(command, stdout=out, stderr=err, env={**os.environ, "COURSE_MODE": "quick"})
        timer = threading.Timer(timeout, process.kill)
        timer.start()
        _, status, usage = os.wait4(process.pid, 0)
        timer.cancel()
        out.seek(0), err.seek(0)
        result = subprocess.CompletedProcess(command, os.waitstatus_to_exitcode(status), out.read(), err.read())
    return result, usage.ru_maxrss // 1024


def _release(course: Path) -> None:
    """``python -m autograder release`` of the toy stage into ``course`` (its student notebook beside it)."""
    subprocess.run([sys.executable, "-m", "autograder", "release", "--course", str(course), "--stages", STAGE,
                    "--solutions", str(TOY_DIR), "--notebooks", str(course.parent / "notebooks")],
                   check=True, capture_output=True, timeout=120)


def _rows(course: Path) -> dict[str, dict]:
    with open(course / "grades.csv", newline="") as handle:
        return {row["student"]: row for row in csv.DictReader(handle)}


def _snapshot(top: Path, skip: Path | None = None) -> dict[str, str]:
    """Hash of every file below ``top`` (links as their targets' text), but not below ``skip``."""
    found = {}
    for folder, subfolders, files in os.walk(top):
        if skip is not None and Path(folder) == skip.parent:
            subfolders[:] = [name for name in subfolders if Path(folder) / name != skip]
        for name in files:
            path = Path(folder) / name
            found[str(path)] = (f"link to {os.readlink(path)}" if path.is_symlink()
                                else hashlib.sha256(path.read_bytes()).hexdigest())
    return found


def _course_files(course: Path) -> list[Path]:
    return [path for path in course.rglob("*") if path.is_file() or path.is_symlink()]


def _moodle_zip(path: Path) -> None:
    untouched = (path.parent / "release.ipynb").read_bytes()
    members = {
        f"Jane Smith_101{MOODLE}{STAGE}.ipynb": _notebook(),
        f"Jane Smith_102{MOODLE}{STAGE}.ipynb": _notebook(wrong=True),  # another Jane Smith
        f"Ann Lee_103{MOODLE}{STAGE}.ipynb": _notebook(wrong=True),
        f"Ann Lee_103{MOODLE}{STAGE}-1.ipynb": _notebook(),  # her resubmission
        f"Bob Ray_104{MOODLE}/{STAGE}.ipynb": untouched,
        f"Bob Ray_104{MOODLE}/Copy of {STAGE}.ipynb": _notebook(),  # Colab's copy, with his answers
        f"Dir Kim_105{MOODLE}/{STAGE}.ipynb/inner.ipynb": _notebook(),
        f"../Up Out_106{MOODLE}{STAGE}.ipynb": _notebook(),
        f"Bomb Ho_107{MOODLE}{STAGE}.ipynb": b"\0" * (200 * 2**20),  # 200 MiB of zeros in 200 KiB
        f'=HYPERLINK("evil")_108{MOODLE}{STAGE}.ipynb': _notebook(),
        f"Esc\x1b[2J\x1b[31mRed_109{MOODLE}{STAGE}.ipynb": _notebook(wrong=True),
        f"Esc\x1b[2J\x1b[31mRed_109{MOODLE}{STAGE}-1.ipynb": _notebook(),  # named in a line on the terminal
        "README.txt": b"downloaded from Moodle",
    }
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
        link = zipfile.ZipInfo(f"Link Lu_110{MOODLE}{STAGE}.ipynb")
        link.external_attr = 0o120777 << 16  # a symbolic link, as `zip --symlinks` stores it
        archive.writestr(link, str(TOY_DIR / f"{STAGE}.ipynb"))


@pytest.mark.parametrize("runner", [["--jobs", "2"], ["--dask", "local:2"]], ids=["jobs", "dask"])
def test_a_moodle_zip_of_a_messy_class_grades_every_student_and_only_their_own_work(tmp_path, runner):
    course = tmp_path / "course"
    _release(course)
    (tmp_path / "release.ipynb").write_bytes((course / "release" / STAGE / f"{STAGE}.ipynb").read_bytes())
    archive = tmp_path / "moodle.zip"
    _moodle_zip(archive)
    before = _outside(tmp_path, course)
    result, peak = _grade(archive, course, *runner)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = _rows(course)
    assert {student: float(row[STAGE]) for student, row in rows.items()} == {
        "jane-smith_101": 4.0, "jane-smith_102": 1.0, "ann-lee_103": 4.0, "bob-ray_104": 4.0, "dir-kim_105": 0.0,
        "up-out_106": 0.0, "bomb-ho_107": 0.0, "hyperlink-evil_108": 4.0, "esc-2j-31mred_109": 4.0,
        "link-lu_110": 0.0}
    notes = {student: row["notes"] for student, row in rows.items()}
    assert notes["ann-lee_103"] == (f"{STAGE}: `Ann Lee_103{MOODLE}{STAGE}-1.ipynb` is a resubmission and replaces "
                                    f"`Ann Lee_103{MOODLE}{STAGE}.ipynb`")
    assert notes["bob-ray_104"].startswith(f"{STAGE}: graded `Bob Ray_104{MOODLE}/Copy of {STAGE}.ipynb` (3 answers)")
    assert notes["dir-kim_105"] == f"{STAGE}: `Dir Kim_105{MOODLE}/{STAGE}.ipynb` is a folder named like a notebook: " \
                                   "not collected"
    assert "an absolute path or one that climbs out of the archive" in notes["up-out_106"]
    assert "inflates more than 100 times its compressed size (--max-ratio)" in notes["bomb-ho_107"]
    assert "is a symbolic link: not collected" in notes["link-lu_110"]
    for refused in ("dir-kim_105", "up-out_106", "bomb-ho_107", "link-lu_110"):
        assert rows[refused]["problems"] == f"{STAGE}: nothing gradable handed in (see the notes)"
    assert rows["hyperlink-evil_108"]["name"] == "'=HYPERLINK(\"evil\")"  # text to a spreadsheet
    assert rows["esc-2j-31mred_109"]["name"] == "Esc\\x1b[2J\\x1b[31mRed"
    assert "\x1b" not in result.stdout, [line for line in result.stdout.splitlines() if "\x1b" in line]
    assert f"`Esc\\x1b[2J\\x1b[31mRed_109{MOODLE}{STAGE}-1.ipynb` is a resubmission" in result.stdout
    assert "`README.txt`: its name names no student" in result.stdout
    assert _outside(tmp_path, course) == before
    _assert_clean(course, peak)
    assert max(path.stat().st_size for path in _course_files(course)) < 2**20  # no bomb on disk


def _outside(tmp_path: Path, course: Path) -> dict[str, str]:
    """What lies outside the course folder: the test's folder and the instructor's solutions."""
    return _snapshot(tmp_path, skip=course) | _snapshot(TOY_DIR)


def _assert_clean(course: Path, peak: int, links_allowed: Path | None = None) -> None:
    """No link in the course folder (but below ``links_allowed``), and the stated peak memory."""
    assert not [path for path in _course_files(course)
                if path.is_symlink() and (links_allowed is None or links_allowed not in path.parents)]
    assert peak < PEAK_MIB, f"peak {peak} MiB"
    print(f"\nthe largest process of the run held {peak} MiB at its peak")


def test_a_course_folders_own_submitted_folder_is_graded_in_place_without_following_links(tmp_path):
    course = tmp_path / "course"
    _release(course)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "shadow").write_text("root:SECRET-HASH:19000:0:99999:7:::\n")
    (outside / "kept.ipynb").write_bytes(_notebook())
    submitted = course / "submitted"
    folders = {student: submitted / student / STAGE for student in (
        "honest", "to_solutions", "to_classmate", "to_gradebook", "to_shadow", "hard_link", "hunter")}
    for folder in folders.values():
        folder.mkdir(parents=True)
    (folders["honest"] / f"{STAGE}.ipynb").write_bytes(_notebook())
    (folders["honest"] / "timestamp.txt").write_text("2026-12-01 10:00:00.000000 UTC")
    (folders["to_solutions"] / f"{STAGE}.ipynb").symlink_to(TOY_DIR / f"{STAGE}.ipynb")
    (folders["to_classmate"] / f"{STAGE}.ipynb").symlink_to(folders["honest"] / f"{STAGE}.ipynb")
    (folders["to_gradebook"] / f"{STAGE}.ipynb").symlink_to(course / "gradebook.db")
    (folders["to_shadow"] / f"{STAGE}.ipynb").write_bytes(_notebook())
    (folders["to_shadow"] / "shadow.txt").symlink_to(outside / "shadow")
    os.link(outside / "kept.ipynb", folders["hard_link"] / f"{STAGE}.ipynb")
    (folders["hunter"] / f"{STAGE}.ipynb").write_bytes(_notebook(HUNT))
    before = _outside(tmp_path, course) | _snapshot(submitted)
    result, peak = _grade(course, course, "--jobs", "2")
    assert result.returncode == 0, result.stderr[-3000:]
    subprocess.run([sys.executable, "-m", "autograder", "feedback", "--course", str(course), "--stages", STAGE],
                   check=True, capture_output=True, timeout=300)
    rows = _rows(course)
    assert {student: float(row[STAGE]) for student, row in rows.items()} == {
        "honest": 4.0, "to_solutions": 0.0, "to_classmate": 0.0, "to_gradebook": 0.0, "to_shadow": 4.0,
        "hard_link": 0.0, "hunter": 4.0}
    link = "is a symbolic link: not collected (hand in the notebook itself)"
    assert {student: rows[student]["notes"] for student in ("to_solutions", "to_classmate", "to_gradebook")} == {
        student: f"{STAGE}: `{student}/{STAGE}/{STAGE}.ipynb` {link}" for student in
        ("to_solutions", "to_classmate", "to_gradebook")}
    assert rows["to_shadow"]["notes"] == f"{STAGE}: `to_shadow/{STAGE}/shadow.txt` {link}"
    assert rows["hard_link"]["notes"] == (f"{STAGE}: `hard_link/{STAGE}/{STAGE}.ipynb` is a hard link to a file "
                                          "outside this submission: not collected")
    hunted = nbformat.read(course / "autograded" / "hunter" / STAGE / f"{STAGE}.ipynb", as_version=4)
    assert "found: []" in json.dumps(hunted.cells[hunted.cells.index(next(
        c for c in hunted.cells if c.source.startswith("import os, sys\nfound")))].outputs)
    for path in _course_files(course):
        if submitted not in path.parents:  # everything grading wrote
            assert b"SECRET-HASH" not in path.read_bytes(), path
    assert (course / "collected" / "honest" / STAGE / "timestamp.txt").exists()
    assert _outside(tmp_path, course) | _snapshot(submitted) == before  # the hand-ins too are as they were
    _assert_clean(course, peak, links_allowed=submitted)
