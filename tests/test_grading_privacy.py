"""What graded copies and feedback keep of a submission, preprocessor by preprocessor (no kernel, no grading run):
no live student HTML (:mod:`autograder.execute.privacy`), no editor's personal metadata, the demo cells' saved outputs
(:mod:`autograder.execute.submitted_outputs`), and atomic writes (:mod:`autograder.atomic`). The whole pipeline on a
class of submissions is in ``tests/test_autograder.py``."""

from __future__ import annotations

import shutil
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_output

from autograder.atomic import atomic_write_text
from autograder.execute.privacy import REMOVED_JAVASCRIPT, SanitizeOutputs, ScrubPersonalData, clean_html
from autograder.score.report import GradeTable, StudentGrades
from autograder.execute.submitted_outputs import EDITED_NOTE, SUBMITTED_MARKER, KeepDemoOutputs
from course_lib.checks.protocol import RECORD_MIME

TOY = Path(__file__).parent / "submissions" / "toy" / "00_toy.ipynb"


def _cell(notebook, grade_id):
    return next(cell for cell in notebook.cells if cell.metadata.get("nbgrader", {}).get("grade_id") == grade_id)


@pytest.mark.parametrize("html, gone, kept", [
    ("<script>alert('x')</script><b>bold</b>", "<script", "&lt;script&gt;alert('x')&lt;/script&gt;<b>bold</b>"),
    ("<img src=x onerror=\"alert('x')\">", "onerror", '<img src="x">'),
    ('<a href="javascript:alert(1)">a</a><a href=" JaVa&#x09;script:alert(1)">b</a>', "javascript", "<a>a</a>"),
    ('<a href="data:text/html,<script>alert(1)</script>">d</a>', "data:", "<a>d</a>"),
    ('<svg onload="alert(1)"><script>alert(1)</script></svg>', "<svg", "&lt;svg"),
    ('<iframe src="https://example.org"></iframe><style>body {}</style>', "<iframe", "&lt;iframe"),
    ('<p style="background: url(x)" onclick="alert(1)">p</p>', "style", "<p>p</p>"),
])
def test_clean_html_leaves_no_live_markup_and_keeps_the_text(html, gone, kept):
    cleaned = clean_html(html)
    assert gone not in cleaned.lower() and kept in cleaned


def test_clean_html_keeps_tables_figures_and_links():
    table = '<table border="1" class="dataframe"><thead><tr><th>a</th></tr></thead><tbody><tr><td>1</td></tr></tbody>' \
            "</table>"
    figure = '<img src="data:image/png;base64,iVBORw0KGgo=" alt="loss"><a href="https://example.org">link</a>'
    assert clean_html(table) == table and clean_html(figure) == figure


def _colab_notebook() -> nbformat.NotebookNode:
    notebook = nbformat.read(TOY, as_version=4)
    notebook.metadata.update(colab={"provenance": [{"file_id": "1DriveFileId"}], "authorship_tag": "ABX9TyTag"},
                             widgets={"application/vnd.jupyter.widget-state+json": {"state": {}}})
    for cell in notebook.cells:
        cell.metadata.update(executionInfo={"user": {"displayName": "Jane Doe", "userId": "1234567"}},
                             outputId="abc-def", colab={"height": 100}, autograder_injected=True,
                             tags=["mine"])
    code = _cell(notebook, "setup")
    code.outputs = [new_output("display_data", data={"application/javascript": "alert(1)",
                                                     "text/plain": "<Javascript object>"}),
                    new_output("display_data", data={"text/html": "<script>alert(2)</script>", "text/plain": "x"},
                               metadata={"colab": {"x": 1}, "image/png": {"width": 3}, "filenames": {"a": "b"}})]
    return notebook


def test_scrub_personal_data_keeps_only_allow_listed_metadata():
    notebook, _ = ScrubPersonalData().preprocess(_colab_notebook(), {})
    text = nbformat.writes(notebook)
    for secret in ("Jane Doe", "1234567", "1DriveFileId", "ABX9TyTag", "abc-def", "widget-state", "autograder_"):
        assert secret not in text, secret
    assert set(notebook.metadata) == {"kernelspec", "language_info"}
    setup = _cell(notebook, "setup")
    assert set(setup.metadata) == {"nbgrader", "tags"} and setup.metadata["nbgrader"]["grade_id"] == "setup"
    assert setup.outputs[0].data == {"text/plain": REMOVED_JAVASCRIPT}
    assert setup.outputs[1].metadata == {"image/png": {"width": 3}}
    assert setup.outputs[1].data["text/html"] == "&lt;script&gt;alert(2)&lt;/script&gt;"


def test_sanitize_outputs_touches_no_metadata_and_no_other_output():
    notebook = _colab_notebook()
    record = new_output("display_data", data={RECORD_MIME: "AAAA", "image/png": "iVBO"})  # a check's record
    _cell(notebook, "add_noise").outputs = [record]
    notebook, _ = SanitizeOutputs().preprocess(notebook, {})
    assert "executionInfo" in _cell(notebook, "setup").metadata and "colab" in notebook.metadata
    assert _cell(notebook, "add_noise").outputs == [record]
    assert "application/javascript" not in _cell(notebook, "setup").outputs[0].data


@pytest.fixture
def source_root(tmp_path) -> Path:
    (tmp_path / "00_toy").mkdir()
    shutil.copy2(TOY, tmp_path / "00_toy" / "00_toy.ipynb")
    return tmp_path


def _keep(source_root: Path, notebook, **traits):
    resources = {"nbgrader": {"assignment": "00_toy", "notebook": "00_toy"}}
    return KeepDemoOutputs(source_root=str(source_root), **traits).preprocess(notebook, resources)[0]


def _saved(text: str):
    return new_output("stream", name="stdout", text=text)


def test_only_the_demo_cells_keep_their_saved_outputs_with_the_marker(source_root):
    notebook = nbformat.read(TOY, as_version=4)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [_saved(f"saved by {cell.metadata['nbgrader']['grade_id']}")], 7
    _cell(notebook, "add_noise").metadata["tags"] = ["skip_when_grading"]  # the submission's tags do not count
    notebook = _keep(source_root, notebook)
    for cell in notebook.cells:
        if cell.cell_type != "code":
            continue
        assert cell.execution_count is None
        if cell.metadata["nbgrader"]["grade_id"] == "slow_demo":
            assert [output.text for output in cell.outputs] == [SUBMITTED_MARKER + "\n", "saved by slow_demo"]
        else:
            assert cell.outputs == [], cell.metadata["nbgrader"]["grade_id"]


def test_an_edited_demo_cell_keeps_no_outputs_and_the_kept_ones_are_capped(source_root):
    notebook = nbformat.read(TOY, as_version=4)
    demo = _cell(notebook, "slow_demo")
    demo.source = "print('a figure of my own')"
    demo.outputs = [_saved("a figure of my own")]
    assert [output.text for output in _cell(_keep(source_root, notebook), "slow_demo").outputs] == [EDITED_NOTE + "\n"]
    notebook = nbformat.read(TOY, as_version=4)
    _cell(notebook, "slow_demo").outputs = [_saved("x" * 600), _saved("y" * 600)]
    kept = _cell(_keep(source_root, notebook, max_bytes=1000), "slow_demo").outputs
    assert kept[1].text == "x" * 600 and "1 more saved outputs" in kept[2].text and len(kept) == 3


def test_atomic_writes_leave_the_old_file_whole_on_failure(tmp_path, monkeypatch):
    target = tmp_path / "grades.csv"
    atomic_write_text(target, "old\n")
    table = GradeTable(("00_toy",), {"00_toy": 4.0}, [StudentGrades("ann", {"00_toy": 4.0}), StudentGrades("bob")])
    with pytest.raises(KeyError):  # bob has no points: the table fails half-way through its rows
        table.write_csv(target)
    assert target.read_text() == "old\n"

    def failing_replace(*args):
        raise OSError("disk full")

    monkeypatch.setattr("os.replace", failing_replace)
    with pytest.raises(OSError):
        atomic_write_text(target, "new\n")
    assert target.read_text() == "old\n" and [path.name for path in tmp_path.iterdir()] == ["grades.csv"]
    monkeypatch.undo()
    table.rows.pop()
    table.write_csv(target)
    assert target.read_text().splitlines() == ["student,name,00_toy,total,max_total,problems,notes",
                                                  "ann,,4,4,4,,"]
