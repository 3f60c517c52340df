"""The grading pipeline on a class of real (small) submissions, several of them broken or hostile.

The submissions are built from ``tests/submissions/toy/00_toy.ipynb``, a two-TODO nbgrader source notebook graded
with the real checks of stage 1 (``add_noise``: visible test 1 point, hidden test 2 points; ``ddpm_schedule``: a
1-point test; a written answer), each student with one deliberate behaviour. One class is graded once (module fixture, 2 jobs) and the tests read
its table, notebooks and feedback; a second, smaller grading run checks that grading again changes nothing.
"""

from __future__ import annotations

import json
import os
import shutil
import zipfile
from pathlib import Path

import nbformat
import pytest

from autograder.collect import MISSING, SubmissionsError, collect_submissions
from autograder.commands import feedback, grade, release
from autograder.course import REPO_ROOT, nbgrader_config
from autograder.execute.notebook import executed_path
from autograder.execute.options import GradingOptions
from autograder.execute.sandbox import sandbox_unavailable
from autograder.execute.submitted_outputs import SUBMITTED_MARKER
from scoring_helpers import gradebook_scores, graded_copies, rescored, rescored_plainly

TOY_DIR = Path(__file__).parent / "submissions" / "toy"
STAGE = "00_toy"
STAGES = (STAGE,)
MAX_AUTO = 4.0
CELL_TIMEOUT = 20
SANDBOXED = sandbox_unavailable() is None  # else the class is graded --no-sandbox and the snoop is left out
OPTIONS = GradingOptions(jobs=2, cell_timeout=CELL_TIMEOUT, notebook_timeout=240, memory_gb=2, sandbox=SANDBOXED)

pytestmark = pytest.mark.timeout(400)


def _solution() -> nbformat.NotebookNode:
    return nbformat.read(TOY_DIR / f"{STAGE}.ipynb", as_version=4)


def _cell(notebook, grade_id: str) -> nbformat.NotebookNode:
    return next(cell for cell in notebook.cells if cell.metadata.get("nbgrader", {}).get("grade_id") == grade_id)


def _delete(notebook, *grade_ids: str) -> None:
    notebook.cells = [cell for cell in notebook.cells if cell.metadata["nbgrader"]["grade_id"] not in grade_ids]


def _prepend(notebook, grade_id: str, code: str) -> nbformat.NotebookNode:
    _cell(notebook, grade_id).source = code + "\n" + _cell(notebook, grade_id).source
    return notebook


def _add_noise_body(notebook, body: str) -> nbformat.NotebookNode:
    """Replace the solution region of ``add_noise`` by ``body`` (4-space indented lines)."""
    cell = _cell(notebook, "add_noise")
    cell.source = cell.source[: cell.source.index("    ### BEGIN SOLUTION")] + body
    return notebook


def _insert_after(notebook, grade_id: str, code: str) -> nbformat.NotebookNode:
    """Add a cell of the student's own (no nbgrader metadata) after ``grade_id``."""
    position = 1 + notebook.cells.index(_cell(notebook, grade_id))
    notebook.cells.insert(position, nbformat.v4.new_code_cell(code))
    return notebook


SNOOP = """import json, os, sys
course, me = {course!r}, os.getcwd()
attempts = {{
    "source": lambda: open(os.path.join(course, "source/00_toy/00_toy.ipynb")).read(),
    "gradebook": lambda: open(os.path.join(course, "gradebook.db"), "rb").read(),
    "other_student": lambda: open(os.path.join(course, "collected/solution/00_toy/00_toy.ipynb")).read(),
    "solutions": lambda: os.listdir({solutions!r}),
    "write_course": lambda: open(os.path.join(course, "hacked.txt"), "w").write("x"),
    "write_scratch": lambda: open(os.path.join(course, "work/snoop-00_toy/hacked.txt"), "w").write("x"),
}}
seen = {{}}
for name, attempt in attempts.items():
    try:
        attempt()
        seen[name] = "succeeded"
    except Exception as error:
        seen[name] = type(error).__name__
tests = []  # every file it can find that holds a notebook or the hidden test's code (the markers split up here,
marks = ("seed=" + "11", "HIDDEN" + " TESTS")  # so that the kernel's history of this cell does not hold them)
environment = tuple(os.path.realpath(p) for p in {{sys.prefix, sys.base_prefix}})  # read-only, maybe under /tmp
for top in (me, "/run", "/tmp", "/dev/shm"):
    for folder, subfolders, files in os.walk(top):
        subfolders[:] = [d for d in subfolders if not os.path.realpath(os.path.join(folder, d)).startswith(environment)]
        for name in files:
            path = os.path.join(folder, name)
            try:
                if os.path.getsize(path) > 2**20:
                    continue
                text = open(path, errors="replace").read()
            except OSError:
                continue
            if name.endswith(".ipynb") or any(mark in text for mark in marks):
                tests.append(path)
print(json.dumps({{"seen": seen, "files_here": sorted(os.listdir(me)), "home": os.path.expanduser("~"), "cwd": me,
                  "tests": tests}}))"""


def _hardcoded_visible_answer() -> str:
    """An ``add_noise`` that returns the visible check's expected numbers, copied as a student would."""
    from course_lib.stages.noising.checks import check_add_noise

    _, expected = check_add_noise.check.reference(**check_add_noise.check.defaults)
    return f"    return torch.tensor({expected['z'].tolist()})"


WRONG = "    return x + sigma**2 * torch.randn(x.shape, generator=generator, dtype=x.dtype)"
# Students who attack the verdict itself, each with a wrong add_noise (so a point for it would be stolen):
REBIND = ("check_add_noise = lambda *args, **kwargs: print('✓ add_noise passed')\n"
          "import course_lib.checks.protocol as protocol\nprotocol.record = lambda cell, calls: None")
PATCH_TORCH = ("import torch\ntorch.equal = lambda *args: True\ntorch.allclose = lambda *args, **kwargs: True\n"
               "torch.Tensor.__sub__ = lambda self, other: torch.zeros_like(self)")
FORGE = """import base64, io, torch
import course_lib.checks.protocol as protocol
real = protocol.show_record
def forged(payload):
    shape = (4, 1, 28, 28)
    fake = {"z": torch.zeros(shape), "again": torch.zeros(shape), "x_after": torch.zeros(shape)}
    buffer = io.BytesIO()
    torch.save([fake, fake], buffer)
    real(base64.b64encode(buffer.getvalue()).decode())
protocol.show_record = forged"""
CODE_OBJECT = """try:
    import course_lib.stages.noising.answers as answers
    add_noise.__code__ = answers.add_noise.__code__
except ImportError as error:
    print("no reference here:", error)"""
DETACHED = """import os, time
marker = {marker!r}
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        import signal
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        time.sleep(3)
        open(marker, "w").write("I outlived the grading")
    os._exit(0)"""
FILL_DISK = """written = 0
try:
    with open("filler.bin", "wb") as handle:
        while written < 64 * 2**30:
            handle.write(b"x" * 2**24)
            written += 2**24
except OSError as error:
    print("disk full after", written // 2**20, "MiB:", error.strerror)"""


ACTIVE_HTML = """from IPython.display import HTML, Javascript, display
display(HTML("<script>document.title = 'pwned-by-script'</script>"
             "<img src=x onerror=\\"document.title = 'pwned-by-img'\\"><b>bold text stays</b>"))
display(Javascript("document.title = 'pwned-by-js'"))"""
ACTIVE_MARKDOWN = ("<script>document.title = 'pwned-by-markdown'</script>"
                   "<img src=x onerror=\"alert('pwned-by-md-img')\"> So that a check can draw the same noise, "
                   "<a href=\"javascript:alert('pwned-by-link')\">see</a>.")
COLAB_USER = {"displayName": "Jane Q. Studentname", "userId": "10938475610293847561",
              "photoUrl": "https://lh3.googleusercontent.com/a/photo-of-jane"}
COLAB_SECRETS = ("Jane Q. Studentname", "10938475610293847561", "photo-of-jane", "ABX9TyAuthorshipTag",
                 "1AbCdEfGhIjKlMnOpQrStUvWxYz", "5f1e0c3a-aaaa-bbbb-cccc")
# a 1x1 PNG: the figure a student saved with a demo cell
SAVED_FIGURE = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR4nGNgAAACAAEA4iG8MwAAAABJRU5ErkJggg=="


def _from_colab(notebook) -> nbformat.NotebookNode:
    """What Colab saves: the Drive provenance and authorship tag, and on every cell the user who ran it."""
    notebook.metadata["colab"] = {"provenance": [{"file_id": "1AbCdEfGhIjKlMnOpQrStUvWxYz",
                                                  "timestamp": 1700000000000}],
                                  "authorship_tag": "ABX9TyAuthorshipTag", "name": "Copy of 00_toy.ipynb"}
    for position, cell in enumerate(notebook.cells):
        cell.metadata.update({"colab": {"base_uri": "https://localhost:8080/"}, "id": f"cell{position}",
                              "outputId": f"5f1e0c3a-aaaa-bbbb-cccc-{position:012d}",
                              "executionInfo": {"status": "ok", "elapsed": 12, "user_tz": -60,
                                                "timestamp": 1700000000000, "user": COLAB_USER}})
    return notebook


def _with_saved_outputs(notebook) -> nbformat.NotebookNode:
    """The solution saved after a run: a figure under the demo cell, and outputs of its own under an answer cell
    and a test cell (which the grader runs, so they must not survive)."""
    stream = nbformat.v4.new_output
    _cell(notebook, "slow_demo").outputs = [stream("stream", name="stdout", text="final loss 0.123\n"),
                                            stream("display_data", data={"image/png": SAVED_FIGURE,
                                                                         "text/plain": "<Figure size 1x1>"})]
    _cell(notebook, "add_noise").outputs = [stream("stream", name="stdout", text="saved answer output\n")]
    _cell(notebook, "test_add_noise").outputs = [stream("stream", name="stdout", text="✓ saved fake pass\n")]
    return notebook


def _students(released: Path) -> dict[str, nbformat.NotebookNode | str | None]:
    """Each student's notebook (a string: the raw file; None: no notebook at all)."""
    course = released.parents[2]
    snoop = _insert_after(_solution(), "setup",
                          SNOOP.format(course=str(course), solutions=str(REPO_ROOT / "solutions")))
    tampered_tests = "pass  # my tests now pass"
    tamper_right = _solution()
    _cell(tamper_right, "test_add_noise").source = tampered_tests
    _delete(tamper_right, "test_add_noise_hidden", "setup")
    tamper_wrong = _add_noise_body(_solution(), "    return x")
    _cell(tamper_wrong, "test_add_noise").source = tampered_tests
    _delete(tamper_wrong, "test_add_noise_hidden")
    messy = _prepend(_solution(), "ddpm_schedule",
                     "import os, sys, tempfile\nprint('x' * 5_000_000)\nprint('a warning of mine', file=sys.stderr)\n"
                     "os.chdir(tempfile.gettempdir())\ntorch.set_default_dtype(torch.float64)\n"
                     "torch.set_num_threads(1)\ntorch.use_deterministic_algorithms(True)")
    active_html = _insert_after(_solution(), "add_noise", ACTIVE_HTML)
    _cell(active_html, "why_generator").source = ACTIVE_MARKDOWN
    colab = _from_colab(_insert_after(_solution(), "setup", "print('my own cell stays')"))
    colab.cells[2].metadata["autograder_injected"] = True  # would remove it from the graded copy
    messy = _add_noise_body(messy, "    import sys\n    print('add_noise was called', file=sys.stderr)\n"
                               "    return x + sigma * torch.randn(x.shape, generator=generator, dtype=x.dtype,\n"
                               "                                   device=x.device)")
    students = {
        "solution": _solution(),
        "untouched": nbformat.read(released, as_version=4),
        "loops": _prepend(_solution(), "ddpm_schedule", "while True:\n    pass"),
        "exits": _prepend(_solution(), "ddpm_schedule", "import os\nos._exit(1)"),
        "segfault": _prepend(_solution(), "ddpm_schedule", "import ctypes\nctypes.string_at(0)"),
        "hog": _prepend(_solution(), "ddpm_schedule", "hog = torch.ones(3 * 2**28)  # 3 GiB written: over the cap"),
        "tamper_right": tamper_right,
        "tamper_wrong": tamper_wrong,
        "reference": _add_noise_body(_solution(), "    from course_lib.noise import add_noise as reference\n"
                                              "    return reference(x, sigma, generator)"),
        "hardcoded": _add_noise_body(_solution(), _hardcoded_visible_answer()),
        "messy": messy,
        "broken": '{"cells": [ this is not JSON',
        "absent": None,
        # a cell of its own that ignores SIGINT and loops, between `add_noise` and its tests
        "stuck": _insert_after(_solution(), "add_noise", "import signal\nsignal.signal(signal.SIGINT, "
                                                        "signal.SIG_IGN)\nwhile True:\n    pass"),
        "rebinds": _insert_after(_add_noise_body(_solution(), WRONG), "add_noise", REBIND),
        "patches_torch": _insert_after(_add_noise_body(_solution(), WRONG), "add_noise", PATCH_TORCH),
        "forges": _insert_after(_add_noise_body(_solution(), WRONG), "add_noise", FORGE),
        "code_object": _insert_after(_add_noise_body(_solution(), WRONG), "add_noise", CODE_OBJECT),
        "detached": _insert_after(_solution(), "setup", DETACHED.format(marker=str(course / "outlived.txt"))),
        "fills_disk": _insert_after(_solution(), "setup", FILL_DISK),
        "active_html": active_html,
        "colab": colab,
        "saved_figure": _with_saved_outputs(_solution()),
        "garbled": _solution(),  # its executed notebook becomes garbage before scoring (_garble)
    }
    if SANDBOXED:  # tries to read the hidden tests and the others' work, and to write outside its folder
        students["snoop"] = snoop
    return students


def _write_class(folder: Path, students: dict) -> Path:
    """nbgrader's layout: ``<folder>/<student>/<stage>/<stage>.ipynb``."""
    for student, notebook in students.items():
        target = folder / student / STAGE
        target.mkdir(parents=True)
        if isinstance(notebook, str):
            (target / f"{STAGE}.ipynb").write_text(notebook)
        elif notebook is not None:
            nbformat.write(notebook, target / f"{STAGE}.ipynb")
    return folder


@pytest.fixture(scope="module")
def course(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("course")
    release(root, STAGES, TOY_DIR, notebooks_dir=None)
    return root


def _garble(course: Path):
    """A progress callback that replaces the executed notebook of "garbled" by garbage as soon as phase 1 has run
    it, so that scoring it (phase 2) fails."""
    def progress(result):
        if result["student"] == "garbled":
            executed_path(course, "garbled", STAGE).write_text('{"cells": [ garbage')
    return progress


@pytest.fixture(scope="module")
def graded(course, tmp_path_factory):
    submissions = _write_class(tmp_path_factory.mktemp("submissions"), _students(course / "release" / STAGE /
                                                                                   f"{STAGE}.ipynb"))
    table, runs = grade(submissions, course, STAGES, OPTIONS, TOY_DIR, progress=_garble(course))
    return course, submissions, table, {row.student: row for row in table.rows}, runs


def _points(rows, student) -> float:
    return rows[student].points[STAGE]


def test_reference_and_untouched_submissions_get_full_and_zero_marks(graded):
    _, _, table, rows, _ = graded
    assert table.max_points == {STAGE: MAX_AUTO}
    assert _points(rows, "solution") == MAX_AUTO and not rows["solution"].problems
    assert _points(rows, "untouched") == 0.0
    assert STAGE in rows["solution"].manual_pending  # the written answer waits for the instructor


def test_endless_loop_is_interrupted_and_keeps_the_points_of_what_ran(graded):
    _, _, _, rows, _ = graded
    assert _points(rows, "loops") == MAX_AUTO - 1  # add_noise's 3 points; ddpm_schedule never got defined
    assert f"interrupted after {CELL_TIMEOUT} s in ddpm_schedule" in rows["loops"].problems[STAGE]


@pytest.mark.parametrize("student", ["exits", "segfault"])
def test_dead_kernel_keeps_earlier_points_and_says_why(graded, student):
    course, _, _, rows, _ = graded
    assert _points(rows, student) == MAX_AUTO - 1
    assert "the kernel died in ddpm_schedule" in rows[student].problems[STAGE]
    executed = nbformat.read(executed_path(course, student, STAGE), as_version=4)
    last_test = _cell(executed, "test_ddpm_schedule")
    assert last_test.outputs[0].ename == "NotRun"


def test_memory_cap_stops_the_kernel_in_that_cell_and_keeps_the_points_before(graded):
    course, _, _, rows, _ = graded
    assert _points(rows, "hog") == MAX_AUTO - 1  # add_noise's 3 points; ddpm_schedule never got defined
    assert (f"GiB together, over the {OPTIONS.memory_gb:g} GiB memory cap (--memory-gb); the kernel was stopped in "
            "ddpm_schedule; later cells did not run") in rows["hog"].problems[STAGE]
    executed = nbformat.read(executed_path(course, "hog", STAGE), as_version=4)
    assert _cell(executed, "ddpm_schedule").outputs[-1].ename == "LimitExceeded"
    assert _cell(executed, "test_ddpm_schedule").outputs[0].ename == "NotRun"


def test_edited_and_deleted_cells_are_restored_and_the_students_code_still_graded(graded):
    course, _, _, rows, _ = graded
    assert _points(rows, "tamper_right") == MAX_AUTO  # set-up and hidden test restored, own code passes
    assert _points(rows, "tamper_wrong") == 1.0  # restored tests catch the wrong add_noise; ddpm_schedule passes
    autograded = nbformat.read(course / "autograded" / "tamper_wrong" / STAGE / f"{STAGE}.ipynb", as_version=4)
    assert "check_add_noise(add_noise)" in _cell(autograded, "test_add_noise").source
    assert "BEGIN HIDDEN TESTS" in _cell(autograded, "test_add_noise_hidden").source


def test_calling_the_reference_earns_nothing_it_is_not_in_the_grading_kernel(graded):
    course, _, _, rows, _ = graded
    assert _points(rows, "reference") == 1.0  # only ddpm_schedule's point
    executed = nbformat.read(executed_path(course, "reference", STAGE), as_version=4)
    assert "leaves out the reference answers of stage 'noising'" in _cell(executed, "test_add_noise").outputs[-1].evalue


def test_copying_the_visible_expected_values_earns_no_hidden_points(graded):
    _, _, _, rows, _ = graded
    assert _points(rows, "hardcoded") == 2.0  # the visible 1 point and ddpm_schedule's 1 point, not the hidden 2


@pytest.mark.parametrize("student, points", [("rebinds", 0.0), ("patches_torch", 1.0), ("forges", 0.0),
                                             ("code_object", 1.0)])
def test_attacking_the_verdict_in_the_kernel_earns_nothing(graded, student, points):
    """Rebinding the check and silencing the recorder, patching torch's comparisons, showing a forged record, or
    taking the reference's code object: the wrong add_noise earns none of its 3 points (the silenced recorder and
    the forged records also cost the ddpm_schedule test its point: 0)."""
    course, _, _, rows, _ = graded
    assert _points(rows, student) == points, rows[student]
    executed = nbformat.read(executed_path(course, student, STAGE), as_version=4)
    assert _cell(executed, "test_add_noise").outputs[-1].ename == "CheckFailed"


def test_a_detached_process_ends_with_the_kernel_and_a_disk_filler_costs_nothing(graded):
    import time

    course, _, _, rows, _ = graded
    assert _points(rows, "detached") == MAX_AUTO and _points(rows, "fills_disk") == MAX_AUTO
    time.sleep(4)  # the detached process would have written by now
    assert not (course / "outlived.txt").exists()
    executed = nbformat.read(executed_path(course, "fills_disk", STAGE), as_version=4)
    assert "disk full after" in executed.cells[2].outputs[0].text


def test_output_floods_stderr_and_global_settings_do_not_change_the_grade(graded):
    course, _, _, rows, _ = graded
    assert _points(rows, "messy") == MAX_AUTO and not rows["messy"].problems
    autograded = course / "autograded" / "messy" / STAGE / f"{STAGE}.ipynb"
    assert autograded.stat().st_size < 200_000  # 5 MB of prints capped


def test_broken_and_missing_notebooks_get_a_clear_line(graded):
    course, _, table, rows, _ = graded
    assert _points(rows, "broken") == 0.0 and rows["broken"].problems[STAGE].startswith("not a valid notebook")
    assert _points(rows, "absent") == 0.0 and rows["absent"].problems[STAGE] == MISSING
    text = table.format()
    assert "broken / 00_toy: not a valid notebook" in text and "absent / 00_toy: missing" in text
    csv_lines = (course / "grades.csv").read_text().splitlines()
    assert csv_lines[0] == f"student,name,{STAGE},total,max_total,problems,notes" and len(csv_lines) == 1 + len(rows)
    assert any(line.startswith("garbled,garbled,0,0,") and "could not be scored" in line for line in csv_lines)


@pytest.fixture(scope="module")
def pages(graded) -> list[Path]:
    """The class's HTML feedback, generated once."""
    return feedback(graded[0], STAGES)


def test_feedback_explains_failures_without_showing_hidden_tests(graded, pages):
    course, _, _, _, _ = graded
    assert {page.parent.parent.name for page in pages} >= {"solution", "reference", "tamper_wrong"}
    html = (course / "feedback" / "reference" / STAGE / f"{STAGE}.html").read_text()
    assert "leaves out the reference answers" in html  # why the tests failed
    for secret in ("HIDDEN TESTS", "seed=11", "shape (4, 1, 5, 5)"):
        assert secret not in html


def test_grading_again_gives_the_same_grades(graded, tmp_path):
    course, submissions, _, rows, _ = graded
    again = ["solution", "reference", "messy", "broken"]
    subset = tmp_path / "again"
    for student in again:
        shutil.copytree(submissions / student, subset / student)
    table, _ = grade(subset, course, STAGES, GradingOptions(jobs=1, cell_timeout=CELL_TIMEOUT, memory_gb=6,
                                                            sandbox=SANDBOXED), TOY_DIR)
    assert {row.student: (row.points, row.problems) for row in table.rows} == {
        student: (rows[student].points, rows[student].problems) for student in again}


def test_lms_downloads_flat_or_zipped_are_collected_per_student(course, tmp_path):
    notebook = nbformat.writes(_solution())
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    names = {"smithjane_12345_67890_00_toy.ipynb": "smithjane", "bob_00_toy-1.ipynb": "bob",
             "carol_Copy of 00_toy.ipynb": "carol", "dave_notes.txt": None}
    for name in names:
        (downloads / name).write_text(notebook)
    archive = tmp_path / "downloads.zip"
    with zipfile.ZipFile(archive, "w") as handle:
        for name in names:
            handle.write(downloads / name, name)
    for source in (downloads, archive):
        collection = collect_submissions(source, course, STAGES)
        assert [student.id for student in collection.students] == ["bob", "carol", "dave", "smithjane_12345"]
        assert collection.problems == {("dave", STAGE): MISSING}
        assert collection.notes[("dave", "")] == ["not notebooks, not graded: `dave_notes.txt`"]
        assert json.loads((course / "collected" / "carol" / STAGE / f"{STAGE}.ipynb").read_text())["cells"]


def test_nbgrader_layout_accepts_a_renamed_notebook(course, tmp_path):
    folder = tmp_path / "class" / "submitted" / "erin" / STAGE
    folder.mkdir(parents=True)
    nbformat.write(_solution(), folder / f"Copy of {STAGE}.ipynb")
    collection = collect_submissions(tmp_path / "class", course, STAGES)
    assert [student.id for student in collection.students] == ["erin"] and collection.problems == {}
    assert (course / "collected" / "erin" / STAGE / f"{STAGE}.ipynb").exists()


def test_missing_submissions_folder_is_named_in_the_error(course, tmp_path):
    with pytest.raises(SubmissionsError, match="`submissions`: no such file or folder"):
        collect_submissions(tmp_path / "nowhere", course, STAGES)


def test_kernel_state_restore_undoes_a_notebooks_global_changes(tmp_path, monkeypatch):
    import builtins
    import sys
    import warnings

    import torch

    from autograder.execute import kernel_state

    original_print = builtins.print
    monkeypatch.setattr(kernel_state, "_saved", {})
    before = (os.getcwd(), torch.get_default_dtype(), torch.get_num_threads(), torch.is_grad_enabled(),
              sys.stderr, len(warnings.filters))
    kernel_state.capture()
    try:
        os.chdir(tmp_path)
        torch.set_default_dtype(torch.float64)
        torch.set_num_threads(1)
        torch.set_grad_enabled(False)
        torch.use_deterministic_algorithms(True)
        sys.stderr = sys.stdout
        warnings.simplefilter("error")
        builtins.print = None
    finally:
        kernel_state.restore()
    assert (os.getcwd(), torch.get_default_dtype(), torch.get_num_threads(), torch.is_grad_enabled(),
            sys.stderr, len(warnings.filters)) == before
    assert not torch.are_deterministic_algorithms_enabled() and builtins.print is original_print


def test_grading_options_reject_bad_values():
    with pytest.raises(ValueError, match="jobs"):
        GradingOptions(jobs=0)
    with pytest.raises(ValueError, match="memory_gb"):
        GradingOptions(memory_gb=-1)


def test_cells_the_source_tags_skip_when_grading_are_not_run(graded):
    course, _, _, rows, _ = graded
    executed = nbformat.read(executed_path(course, "solution", STAGE), as_version=4)
    assert _cell(executed, "slow_demo").execution_count is None and not rows["solution"].problems


def test_a_cell_that_ignores_interrupts_costs_only_itself(graded):
    course, _, table, rows, _ = graded
    assert _points(rows, "stuck") == MAX_AUTO  # earlier cells run again in a new kernel, later tests pass
    problem = rows["stuck"].problems[STAGE]
    assert problem.startswith("stopped cell 4 after") and "SIGINT ignored" in problem
    assert "stuck / 00_toy: stopped cell 4" in table.format()
    executed = nbformat.read(executed_path(course, "stuck", STAGE), as_version=4)
    record = executed.metadata["autograder"]
    assert [stop["cell"] for stop in record["stopped"]] == ["cell 4"] and record["problem"] is None
    stuck = executed.cells[3]
    assert stuck.outputs[-1].ename == "CellStopped" and "stopped after" in stuck.outputs[-1].evalue
    last_test = next(cell for cell in executed.cells
                     if cell.metadata.get("nbgrader", {}).get("grade_id") == "test_ddpm_schedule")
    assert last_test.outputs[-1].text.startswith("✓")


@pytest.mark.skipif(not SANDBOXED, reason=f"no sandbox here: {sandbox_unavailable()}")
def test_the_kernel_sees_only_its_own_submission_and_can_write_nowhere_else(graded):
    course, _, _, rows, _ = graded
    assert _points(rows, "snoop") == MAX_AUTO and not rows["snoop"].problems
    executed = nbformat.read(executed_path(course, "snoop", STAGE), as_version=4)
    report = json.loads(executed.cells[2].outputs[0].text)
    seen = report["seen"]
    for secret in ("source", "gradebook", "other_student", "solutions"):
        assert seen[secret] == "FileNotFoundError", secret
    # under /tmp a write may land in the sandbox's own /tmp; it never reaches the course folder
    assert not (course / "hacked.txt").exists() and not list(course.glob("work/*/hacked.txt"))
    course_folders = {"gradebook.db", "source", "release", "submitted", "collected", "autograded"}
    assert not course_folders & set(report["files_here"])
    assert report["home"] == report["cwd"]  # HOME is its own folder (a warm kernel's, or autograded/snoop/00_toy)
    assert report["tests"] == []  # no notebook, and no file with the hidden test, anywhere it can read


def _live_html(page: str) -> dict[str, list[str]]:
    """What a browser would run or follow in ``page``: the text of its scripts, its event-handler attributes and
    its ``javascript:`` links."""
    from html.parser import HTMLParser

    found = {"scripts": [], "handlers": [], "links": []}

    class Parser(HTMLParser):
        in_script = False

        def handle_starttag(self, tag, attrs):
            self.in_script = tag == "script"
            for name, value in attrs:
                if name.startswith("on"):
                    found["handlers"].append(f"{tag} {name}={value}")
                if name in ("href", "src", "action") and (value or "").strip().lower().startswith("javascript"):
                    found["links"].append(f"{tag} {name}={value}")

        def handle_endtag(self, tag):
            self.in_script = False

        def handle_data(self, data):
            if self.in_script:
                found["scripts"].append(data)

    Parser().feed(page)
    return found


def test_student_html_and_javascript_are_not_live_in_feedback_or_graded_copies(graded, pages):
    course, _, _, rows, _ = graded
    assert _points(rows, "active_html") == MAX_AUTO
    page = (course / "feedback" / "active_html" / STAGE / f"{STAGE}.html").read_text()
    live = _live_html(page)
    assert not [script for script in live["scripts"] if "pwned" in script], live["scripts"]
    assert not live["handlers"] and not live["links"], live
    assert "bold text stays" in page  # harmless markup survives; the rest is shown as escaped text
    assert "&lt;script&gt;document.title = 'pwned-by-script'" in page
    assert "&lt;script&gt;document.title = 'pwned-by-markdown'" in page  # the written answer, as text
    for kind in ("executed", "autograded"):
        notebook = nbformat.read(course / kind / "active_html" / STAGE / f"{STAGE}.ipynb", as_version=4)
        outputs = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs]
        assert not [output for output in outputs if "application/javascript" in output.get("data", {})]
        shown = [output.data["text/html"] for output in outputs if "text/html" in output.get("data", {})]
        assert shown and all("<script" not in html and "onerror" not in html for html in shown), shown


def test_colab_metadata_with_the_students_name_is_in_no_graded_copy_or_feedback(graded, pages):
    course, _, _, rows, _ = graded
    assert _points(rows, "colab") == MAX_AUTO
    files = [course / kind / "colab" / STAGE / f"{STAGE}.ipynb" for kind in ("executed", "autograded")]
    files.append(course / "feedback" / "colab" / STAGE / f"{STAGE}.html")
    for path in files:
        text = path.read_text()
        leaked = [secret for secret in COLAB_SECRETS if secret in text]
        assert not leaked, (path, leaked)
    autograded = nbformat.read(files[1], as_version=4)
    assert set(autograded.metadata) <= {"kernelspec", "language_info"}
    metadata_keys = {key for cell in autograded.cells for key in cell.metadata}
    assert not {"executionInfo", "outputId", "colab", "id"} & metadata_keys
    assert _cell(autograded, "test_add_noise").metadata["nbgrader"]["points"] == 1  # nbgrader's metadata kept
    assert any(cell.source == "print('my own cell stays')" for cell in autograded.cells)  # not "injected"


def test_a_demo_cells_saved_figure_is_kept_for_the_ta_and_no_other_saved_output(graded, pages):
    course, _, _, rows, _ = graded
    assert _points(rows, "saved_figure") == MAX_AUTO
    for kind in ("executed", "autograded"):
        notebook = nbformat.read(course / kind / "saved_figure" / STAGE / f"{STAGE}.ipynb", as_version=4)
        demo = _cell(notebook, "slow_demo")
        assert demo.execution_count is None and demo.outputs[0].text.startswith(SUBMITTED_MARKER)
        assert demo.outputs[1].text == "final loss 0.123\n" and demo.outputs[2].data["image/png"] == SAVED_FIGURE
        assert _cell(notebook, "add_noise").outputs == []  # the grader ran it: its own outputs only (none)
        test_outputs = json.dumps(_cell(notebook, "test_add_noise").outputs)
        assert "saved fake pass" not in test_outputs and SUBMITTED_MARKER not in test_outputs
        solution = nbformat.read(course / kind / "solution" / STAGE / f"{STAGE}.ipynb", as_version=4)
        assert _cell(solution, "slow_demo").outputs == []  # nothing saved, nothing marked
        assert not [cell for cell in solution.cells if SUBMITTED_MARKER in json.dumps(cell.get("outputs", []))]
    page = (course / "feedback" / "saved_figure" / STAGE / f"{STAGE}.html").read_text()
    assert SUBMITTED_MARKER in page and f"data:image/png;base64,{SAVED_FIGURE}" in page


def test_a_notebook_that_cannot_be_scored_costs_only_itself(graded):
    from nbgrader.api import Gradebook

    course, _, table, rows, _ = graded
    assert _points(rows, "garbled") == 0.0
    assert rows["garbled"].problems[STAGE].startswith("could not be scored")
    assert _points(rows, "solution") == MAX_AUTO and _points(rows, "tamper_wrong") == 1.0  # the others as ever
    with Gradebook(nbgrader_config(course.resolve()).CourseDirectory.db_url) as gradebook:  # still opens
        assert gradebook.find_submission(STAGE, "solution").code_score == MAX_AUTO
        assert gradebook.find_submission(STAGE, "colab").code_score == MAX_AUTO
    assert f"garbled / {STAGE}: could not be scored" in table.format()  # and in the CSV (see the broken notebooks)
    assert not list(course.glob(".*.tmp")) and not list((course / "feedback").glob("*/*/.*.tmp"))


def test_release_writes_a_course_config_that_nbgraders_own_apps_read(course, monkeypatch):
    from nbgrader.apps import NbGrader
    from traitlets.config.loader import PyFileConfigLoader

    expected = nbgrader_config(course.resolve())
    loaded = PyFileConfigLoader("nbgrader_config.py", path=str(course)).load_config()
    assert loaded.CourseDirectory.db_url == expected.CourseDirectory.db_url
    assert loaded.CourseDirectory.course_id == expected.CourseDirectory.course_id
    assert loaded.CourseDirectory.submitted_directory == expected.CourseDirectory.submitted_directory == "collected"
    assert loaded.ClearSolutions.code_stub == expected.ClearSolutions.code_stub
    assert loaded.ClearSolutions.text_stub == expected.ClearSolutions.text_stub
    monkeypatch.chdir(course)  # as `jupyter lab` started in the course folder: formgrader loads it so
    app = NbGrader()
    app.load_config_file()
    assert app.config.CourseDirectory.db_url == expected.CourseDirectory.db_url


def test_scoring_on_several_processes_gives_what_one_process_gives(graded, tmp_path):
    """Scoring the class's executed notebooks again in one process and on two processes with one writer (each in a
    copy of the course, so that the other tests' changes do not matter) gives the same gradebook, graded copies and
    grades.csv, problems (dead kernels, timeouts, a notebook that cannot be scored) included; and so does nbgrader's
    own scoring, without the speed-ups of phase 2 (one engine per gradebook, one validation per notebook)."""
    from autograder.collect import Limits
    from autograder.score.report import read_grade_table

    course, submissions, _, _, runs = graded
    csv_files = []
    for jobs in (1, 2):
        copy, not_scored = rescored(course, tmp_path / f"jobs-{jobs}", STAGES, jobs=jobs)
        assert set(not_scored) == {("garbled", STAGE)}
        collection = collect_submissions(submissions, copy, STAGES, Limits())
        problems = dict(collection.problems)
        not_run = set(problems)
        for run in runs:
            problems.update({(run["student"], stage): reason for stage, reason in run["problems"].items()})
        problems.update(not_scored)
        table = read_grade_table(copy, STAGES, collection, problems, not_run | set(not_scored), sandboxed=SANDBOXED)
        csv_files.append(table.write_csv(copy / "grades.csv").read_text())
    one, two = tmp_path / "jobs-1", tmp_path / "jobs-2"
    assert gradebook_scores(two) == gradebook_scores(one)
    assert graded_copies(two) == graded_copies(one)
    plain, not_scored = rescored_plainly(course, tmp_path / "plain", STAGES)  # nbgrader without our speed-ups
    assert not_scored == {("garbled", STAGE)}
    assert gradebook_scores(plain) == gradebook_scores(one)
    assert graded_copies(plain) == graded_copies(one)
    assert csv_files[1] == csv_files[0] and "garbled" in csv_files[0]
