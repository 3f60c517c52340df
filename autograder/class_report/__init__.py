"""``python -m autograder report``: what a graded class got wrong, on one self-contained page.

``<course>/report/index.html``, from the last grading run (:mod:`autograder.score.run_record`), the gradebook and the
graded copies (:mod:`.gather`): score distributions, points lost per TODO, the most frequent failing-check messages
per TODO with an example student each (linked to their feedback page), problems by kind, kernel time per stage,
written answers still waiting, and pairs of students whose TODO code looks alike (:mod:`.similarity`, a lead for a
human and never a penalty). Figures: :mod:`.figures`; HTML: :mod:`.page`.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from ..atomic import atomic_write_text
from ..course import nbgrader_config
from ..score.run_record import read_run_record
from . import figures
from .gather import StageFindings, gather_stage, problem_kind
from .page import feedback_link, image, page, table, text
from .similarity import Pair, stage_similarity

REPORT = Path("report") / "index.html"
MISTAKES_SHOWN = 5  # messages per TODO


def _graded(record: dict, stage: str) -> list[str]:
    return [student["id"] for student in record["students"] if stage in student["graded"]]


def _scores_section(record: dict, findings: dict[str, StageFindings]) -> str:
    points = {stage: [s["points"][stage] for s in record["students"] if stage in s["graded"]]
              for stage in record["stages"]}
    lost = {f"{stage} / {todo}": sum(found.lost[todo].values()) / max(len(found.lost[todo]), 1)
            for stage, found in findings.items() for todo in found.todos}
    handed_in = ", ".join(f"{stage}: {len(points[stage])}" for stage in record["stages"])
    parts = [f"<p>{len(record['students'])} students; notebooks graded per stage: {text(handed_in)}.</p>",
             image(figures.score_histograms(points, record["max_points"]), "score distribution per stage")]
    if lost:
        parts.append(image(figures.points_lost(lost), "points lost per TODO"))
    return "\n".join(parts)


def _mistakes_section(findings: dict[str, StageFindings]) -> str:
    rows = []
    for stage, found in findings.items():
        for todo, mistakes in found.mistakes.items():
            ranked = sorted(mistakes.values(), key=lambda mistake: -len(mistake.students))[:MISTAKES_SHOWN]
            rows += [[text(f"{stage} / {todo}"), str(len(mistake.students)), text(mistake.message),
                      f"{feedback_link(mistake.students[0], stage)}: {text(mistake.example)}"] for mistake in ranked]
    if not rows:
        return "<p>No check failed.</p>"
    return table(["stage / TODO", "students", "message (numbers as #)", "for example"], rows)


def _problems_section(record: dict) -> str:
    kinds: Counter = Counter()
    examples: dict[str, str] = {}
    for student in record["students"]:
        for stage, line in student["problems"].items():
            kind = problem_kind(line)
            kinds[kind] += 1
            examples.setdefault(kind, f"{text(student['id'])} / {text(stage)}: {text(line)}")
    if not kinds:
        return "<p>Every notebook was graded normally.</p>"
    rows = [[text(kind), str(count), examples[kind]] for kind, count in kinds.most_common()]
    return image(figures.problem_kinds(dict(kinds)), "problems by kind") + table(["kind", "notebooks", "for example"],
                                                                                  rows)


def _times_section(record: dict) -> str:
    seconds = {stage: [s["seconds"][stage] for s in record["students"] if stage in s["seconds"]]
               for stage in record["stages"]}
    seconds = {stage: values for stage, values in seconds.items() if values}
    if not seconds:
        return "<p>No notebook ran in this grading (all were kept from an earlier run).</p>"
    return image(figures.kernel_times(seconds), "kernel time per stage")


def _pending_section(record: dict) -> str:
    waiting = Counter(stage for student in record["students"] for stage in student["manual_pending"])
    if not waiting:
        return "<p>No written answer is waiting.</p>"
    rows = [[text(stage), str(waiting[stage])] for stage in record["stages"] if waiting[stage]]
    return ("<p>Grade them in nbgrader's formgrader (<code>jupyter lab</code> in the course folder).</p>"
            + table(["stage", "students waiting"], rows))


def _similarity_section(pairs: dict[str, list[Pair]], like_reference: dict[str, dict[str, list[str]]]) -> str:
    parts = ['<p class="lead">Similar code is a lead for a human reader, never a penalty: short answers to the same '
             "question often look alike. The released starter code and given code never count; renamed names and "
             "comments do not hide shared code. Shared runs are marked.</p>"]
    rows = [[text(f"{stage} / {pair.what}"),
             f"{feedback_link(pair.first, stage)}<br>{feedback_link(pair.second, stage)}",
             f"{pair.similarity:.0%}", f"<pre>{pair.shared[0]}</pre>", f"<pre>{pair.shared[1]}</pre>"]
            for stage, found in pairs.items() for pair in found]
    parts.append(table(["stage / TODO", "students", "shared", "first", "second"], rows) if rows
                 else "<p>No pair of students shares half of their code for a TODO.</p>")
    flagged = [[text(f"{stage} / {todo}"), ", ".join(text(student) for student in students)]
               for stage, todos in like_reference.items() for todo, students in todos.items() if students]
    if flagged:
        parts.append("<p>Cells whose code matches the reference solution's:</p>"
                     + table(["stage / TODO", "students"], flagged))
    return "\n".join(parts)


def write_report(root: Path) -> Path:
    """Write ``<root>/report/index.html`` for the last grading run in ``root``; returns its path."""
    from nbgrader.api import Gradebook

    root = Path(root).resolve()
    record = read_run_record(root)
    with Gradebook(nbgrader_config(root).CourseDirectory.db_url) as gradebook:
        findings = {stage: gather_stage(root, stage, _graded(record, stage), gradebook) for stage in record["stages"]}
    similar = {stage: stage_similarity(root, stage, _graded(record, stage)) for stage in record["stages"]}
    sections = [("Scores", _scores_section(record, findings)),
                ("Most frequent mistakes per TODO", _mistakes_section(findings)),
                ("Problems", _problems_section(record)),
                ("Kernel time", _times_section(record)),
                ("Written answers waiting for manual grading", _pending_section(record)),
                ("Similar code", _similarity_section({s: found[0] for s, found in similar.items()},
                                                     {s: found[1] for s, found in similar.items()}))]
    return atomic_write_text(root / REPORT, page("Class report", sections))
