"""The class report and the LMS export (``python -m autograder report`` and ``export``) of a Canvas class of the toy
course graded by the real command line: known mistakes give known counts, a copied notebook with renamed names and
added comments ranks first among similar pairs while two honest solutions do not show, the Canvas and Moodle files
have their LMS's headers, and the page holds no live student HTML and renders its figures in Chromium."""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from autograder.class_report.gather import gather_stage
from autograder.score.lms_export import CANVAS_FIXED, MOODLE_HEADER, export_grades
from autograder.score.run_record import RUN_RECORD
from autograder.execute.sandbox import sandbox_unavailable
from test_autograder import _live_html

TOY_DIR = Path(__file__).parent / "submissions" / "toy"
STAGE = "00_toy"
CHROMIUM = Path("/usr/bin/chromium")
pytestmark = pytest.mark.timeout(600)

WRONG_A = "    return x"  # the noise left out
WRONG_B = "    return x + sigma**2 * torch.randn(x.shape, generator=generator, dtype=x.dtype)"
LOOPS = """    betas = []
    step = (beta_end - beta_start) / (num_steps - 1)
    for index in range(num_steps):
        betas.append(beta_start + index * step)
    betas = torch.tensor(betas)
    alphas = 1.0 - betas
    alpha_bars = torch.ones(num_steps)
    running = 1.0
    for index in range(num_steps):
        running = running * alphas[index]
        alpha_bars[index] = running
    return betas, alphas, alpha_bars"""
#: LOOPS copied: names changed, comments added (one of them HTML that must stay text on the page)
COPIED = """    # my own schedule </pre><script>alert("copied")</script><img src=x onerror=alert(1)>
    b = []
    delta = (beta_end - beta_start) / (num_steps - 1)  # spacing
    for i in range(num_steps):
        b.append(beta_start + i * delta)
    b = torch.tensor(b)
    a = 1.0 - b
    bars = torch.ones(num_steps)
    acc = 1.0
    for i in range(num_steps):
        acc = acc * a[i]  # product so far
        bars[i] = acc
    return b, a, bars"""
HONEST_1 = """    grid = torch.arange(num_steps, dtype=torch.float32) / max(num_steps - 1, 1)
    betas = beta_start + (beta_end - beta_start) * grid
    return betas, 1 - betas, torch.exp(torch.cumsum(torch.log(1 - betas), 0))"""
HONEST_2 = """    span = beta_end - beta_start
    betas = torch.tensor([beta_start + span * k / (num_steps - 1) for k in range(num_steps)])
    alphas = torch.ones_like(betas).sub(betas)
    return betas, alphas, alphas.cumprod(0)"""


def _notebook(add_noise: str | None = None, schedule: str | None = None) -> str:
    notebook = nbformat.read(TOY_DIR / f"{STAGE}.ipynb", as_version=4)
    for grade_id, body in (("add_noise", add_noise), ("ddpm_schedule", schedule)):
        cell = next(c for c in notebook.cells if c.metadata.get("nbgrader", {}).get("grade_id") == grade_id)
        if body is not None:
            cell.source = cell.source[: cell.source.index("    ### BEGIN SOLUTION")] + body
    return nbformat.writes(notebook)


@pytest.fixture(scope="module")
def graded(tmp_path_factory) -> Path:
    """A Canvas download of nine students, graded by the command line; the course folder."""
    folder = tmp_path_factory.mktemp("class")
    downloads = folder / "canvas"
    downloads.mkdir()
    for name, text in {"ann_1001_5001": _notebook(), "cat_1002_5002": _notebook(WRONG_A, LOOPS),
                       "dan_1003_5003": _notebook(WRONG_A, COPIED), "eve_1004_5004": _notebook(WRONG_A, HONEST_1),
                       "fay_1005_5005": _notebook(WRONG_B, HONEST_2), "=SUM(1+1)_1008_5008": _notebook(),
                       "hal_1009_5009": _notebook(WRONG_A, "    return None")}.items():
        (downloads / f"{name}_{STAGE}.ipynb").write_text(text)
    (downloads / "gus_1007_5007_notes.txt").write_text("I could not finish")
    course = folder / "course"
    subprocess.run([sys.executable, "-m", "autograder", "grade", str(downloads), "--course", str(course), "--stages",
                    STAGE, "--solutions", str(TOY_DIR), "--jobs", "2",
                    *([] if sandbox_unavailable() is None else ["--no-sandbox"])],
                   check=True, capture_output=True, timeout=500, env={**os.environ, "COURSE_MODE": "quick"})
    return course


@pytest.fixture(scope="module")
def report(graded) -> Path:
    run = subprocess.run([sys.executable, "-m", "autograder", "report", "--course", str(graded)],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    return Path(run.stdout.strip())


def test_known_mistakes_give_their_counts_per_message(graded, report):
    from nbgrader.api import Gradebook

    graded_ids = ["ann_1001", "cat_1002", "dan_1003", "eve_1004", "fay_1005", "sum-1-1_1008", "hal_1009"]
    with Gradebook(f"sqlite:///{graded / 'gradebook.db'}") as gradebook:
        findings = gather_stage(graded, STAGE, graded_ids, gradebook)
    counts = sorted((len(m.students), m.message) for m in findings.mistakes["add_noise"].values())
    assert [count for count, _ in counts] == [1, 4], counts
    assert "the noise was not added" in counts[1][1] and "#" in counts[1][1]  # numbers folded into one message
    assert findings.mistakes["add_noise"][counts[0][1]].students == ["fay_1005"]
    assert findings.todos == {"add_noise": 3.0, "ddpm_schedule": 1.0}
    assert sum(findings.lost["add_noise"].values()) == 5 * 3.0
    page = report.read_text()
    assert "<td>4</td>" in page and "the noise was not added" in page
    assert 'href="../feedback/cat_1002/00_toy/00_toy.html"' in page or 'href="../feedback/dan_1003' in page


def _pair_rows(page: str, what: str) -> list[list[str]]:
    """The cells of the similar-pair rows of ``what`` (``"00_toy / ddpm_schedule"``), in the page's order."""
    similar = page[page.index("<h2>Similar code</h2>"):]
    rows = [re.findall(r"<td>(.*?)</td>", row, re.S) for row in similar.split("<tr>")[2:]]
    return [cells for cells in rows if cells and cells[0] == what]


def test_a_copy_with_renamed_names_and_comments_ranks_first_and_honest_work_does_not_show(report):
    page = report.read_text()
    schedule = _pair_rows(page, f"{STAGE} / ddpm_schedule")
    assert schedule, "no similar pair for ddpm_schedule"
    assert "cat_1002" in schedule[0][1] and "dan_1003" in schedule[0][1]
    assert int(schedule[0][2].rstrip("%")) >= 80
    assert not any("eve_1004" in cells[1] and "fay_1005" in cells[1] for cells in schedule)  # honest: not shown
    similar = page[page.index("<h2>Similar code</h2>"):]
    assert "matches the reference solution" in similar and "ann_1001" in similar  # flagged, not paired
    assert "never a penalty" in similar


def test_the_page_holds_no_live_student_html(report):
    page = report.read_text()
    live = _live_html(page)
    assert live == {"scripts": [], "handlers": [], "links": []}, live
    assert "&lt;script&gt;alert(" in page  # the student's comment, as text
    assert "http://" not in page and "https://" not in page  # nothing to fetch


def test_canvas_and_moodle_files_have_their_headers_and_missing_work_is_an_empty_cell(graded, tmp_path):
    path, left_out = export_grades(graded, "canvas", tmp_path / "canvas.csv")
    rows = list(csv.reader(path.open(newline="")))
    assert rows[0] == [*CANVAS_FIXED, STAGE] and rows[1] == ["Points Possible", "", "", "", "", "4"]
    by_id = {row[1]: row for row in rows[2:]}
    assert by_id["1001"][0] == "ann" and by_id["1001"][5] == "4"
    assert by_id["1005"][5] == "1" and by_id["1009"][5] == "0"  # graded 0 points: handed in, so never empty
    assert by_id["1007"][5] == ""  # gus handed in no notebook
    assert by_id["1008"][0] == "'=SUM(1+1)"  # no formula for a spreadsheet
    assert left_out == []
    zeros = export_grades(graded, "canvas", tmp_path / "zeros.csv", missing_as_zero=True)[0]
    assert {row[1]: row[5] for row in list(csv.reader(zeros.open(newline="")))[2:]}["1007"] == "0"
    path, left_out = export_grades(graded, "moodle", tmp_path / "moodle.csv")
    assert list(csv.reader(path.open(newline=""))) == [MOODLE_HEADER]  # a Canvas class: no Moodle participant id
    assert len(left_out) == 8 and left_out[0].endswith("no Moodle id in the names of what they handed in")


def test_a_moodle_worksheet_is_keyed_by_participant(graded, tmp_path):
    record = json.loads((graded / RUN_RECORD).read_text())
    for student in record["students"]:
        student["lms"] = "moodle"
    course = tmp_path / "course"
    course.mkdir()
    (course / RUN_RECORD).write_text(json.dumps(record))
    rows = list(csv.reader(export_grades(course, "moodle")[0].open(newline="")))
    assert rows[0] == ["Identifier", "Full name", "Grade", "Maximum Grade"]
    assert {row[0]: row[2:] for row in rows[1:]}["Participant 1007"] == ["", "4"]
    assert {row[0]: row[2:] for row in rows[1:]}["Participant 1003"] == ["1", "4"]


def test_bad_arguments_are_one_line_errors(graded, tmp_path):
    for arguments, message in ((["export", "--course", str(tmp_path)], "holds no grading run"),
                               (["export", "--course", str(graded), "--stages", "01_noising"],
                                "`--stages`: 01_noising were not graded in this run")):
        run = subprocess.run([sys.executable, "-m", "autograder", *arguments], capture_output=True, text=True,
                             timeout=120)
        assert run.returncode == 2 and message in run.stderr and "Traceback" not in run.stderr


#: what the browser check runs, in a Python of its own (a Playwright session of the browser tests may be open in
#: this one, and Playwright's sync API allows one per process): prints the title, image widths and dialogs as JSON
BROWSE = """import json, sys
from playwright.sync_api import sync_playwright
with sync_playwright() as playwright:
    browser = playwright.chromium.launch(executable_path=sys.argv[1], args=["--headless", "--no-sandbox",
                                                                            "--disable-gpu"])
    page = browser.new_page()
    dialogs = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    page.goto(sys.argv[2])
    widths = page.eval_on_selector_all("img", "images => images.map(i => i.complete ? i.naturalWidth : 0)")
    print(json.dumps({"title": page.title(), "widths": widths, "dialogs": dialogs}))
    browser.close()
"""


@pytest.mark.skipif(not CHROMIUM.is_file() or importlib.util.find_spec("playwright") is None,
                    reason="needs Debian's Chromium and playwright")
def test_the_report_opens_from_a_file_url_and_its_figures_render(report):
    run = subprocess.run([sys.executable, "-c", BROWSE, str(CHROMIUM), report.as_uri()], capture_output=True,
                         text=True, timeout=180)
    assert run.returncode == 0, run.stderr[-2000:]
    seen = json.loads(run.stdout)
    assert seen["title"] == "Class report" and len(seen["widths"]) >= 4 and min(seen["widths"]) > 100, seen
    assert seen["dialogs"] == []  # no student script ran
