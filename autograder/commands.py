"""What the command line does: release, grade, feedback and demo, as functions the tests call directly."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from .collect import Limits, collect_submissions
from .course import (NOTEBOOKS_DIR, SOLUTIONS_DIR, STAGES, generate_student_notebooks, nbgrader_config, quiet_nbgrader,
                     run_nbgrader_app, write_course_config)
from .demo import start_demo_gradebook_afresh, write_demo_submissions
from .execute.options import GradingOptions
from .execute.pool import execute_all
from .execute.resume import EXECUTED, INDEX
from .execute.sandbox import SandboxUnavailableError, sandbox_unavailable
from .score.gradebook import score_all, scoring_processes
from .score.report import GradeTable, read_grade_table
from .score.run_record import read_run_record, with_earlier_rows, write_run_record


def release(root: Path, stages=STAGES, solutions_dir: Path = SOLUTIONS_DIR,
            notebooks_dir: Path | None = NOTEBOOKS_DIR) -> list[Path]:
    """``nbgrader generate_assignment`` for every stage into ``root`` (and ``notebooks_dir`` unless None), and the
    course folder's own ``nbgrader_config.py`` (:func:`~autograder.course.write_course_config`), so that
    ``jupyter lab`` started in ``root`` opens formgrader on the same gradebook."""
    written = generate_student_notebooks(root, notebooks_dir, stages, solutions_dir)
    write_course_config(root)
    return written


def is_released(root: Path, stages) -> bool:
    """True when the gradebook of ``root`` knows every stage (grading needs it to restore cells)."""
    from nbgrader.api import Gradebook, MissingEntry

    if not (Path(root) / "gradebook.db").exists():
        return False
    with Gradebook(nbgrader_config(Path(root)).CourseDirectory.db_url) as gradebook:
        try:
            for stage in stages:
                gradebook.find_assignment(stage)
        except MissingEntry:
            return False
    return True


def check_sandbox(options: GradingOptions) -> None:
    """Raise :class:`SandboxUnavailableError` with a one-paragraph explanation when ``options.sandbox`` asks for
    a sandbox that this machine cannot make."""
    reason = sandbox_unavailable() if options.sandbox else None
    if reason:
        raise SandboxUnavailableError(
            "Nothing was graded: student notebooks run in a bubblewrap sandbox, so that one student can neither "
            "read the hidden tests or the other submissions nor harm this machine, and no sandbox can be made "
            f"here: {reason}. Fix that, or grade without the sandbox with --no-sandbox "
            "(GradingOptions(sandbox=False)), only for notebooks you trust.")


def _execute(root: Path, work: dict[str, tuple[str, ...]], options: GradingOptions, dask,
             progress: Callable[[dict], None] | None) -> tuple[list[dict], dict[tuple[str, str], float]]:
    """Phase 1 of ``work`` on ``options.jobs`` processes or on ``dask``; the runs and each notebook's seconds."""
    seconds: dict[tuple[str, str], float] = {}

    def timed(result: dict) -> None:
        seconds[result["student"], result["stage"]] = result["seconds"]
        if progress is not None:
            progress(result)

    if dask:
        from .distributed.cluster import execute_all_dask

        return execute_all_dask(root, work, options, dask, timed), seconds
    return execute_all(root, work, options, timed), seconds


def grade(submissions: Path, root: Path, stages=STAGES, options: GradingOptions = GradingOptions(),
          solutions_dir: Path = SOLUTIONS_DIR, csv_path: Path | None = None,
          progress: Callable[[dict], None] | None = None, dask=None, limits: Limits = Limits(),
          students: tuple[str, ...] = ()) -> tuple[GradeTable, list[dict]]:
    """Collect (:mod:`autograder.collect`, within ``limits``), execute (on ``options.jobs`` processes, or on a
    Dask cluster when ``dask`` is given: ``"local:N"``, ``"tcp://HOST:8786"`` or a ``distributed.Client``;
    :mod:`autograder.distributed.cluster`), score; write the CSV (default ``<root>/grades.csv``).

    Releases first when the course folder has not been released. Returns the table and, per student,
    what :func:`~autograder.execute.pool.execute_all` returns (seconds and problems); ``progress`` gets each
    notebook's result as it finishes. ``students`` (ids): grade only these again, in a class graded before
    (late or regraded work); every other student's collected notebooks, graded copies, gradebook entries, CSV row
    and record stay as the last run left them.

    The order is a guarantee: phase 1 returns only when every notebook's kernel is gone (and, with ``jobs``, the
    worker processes too); only then does this process write: the gradebook and the graded copies (phase 2,
    :func:`~autograder.score.gradebook.score_all`, here or, for a large class, converted on ``jobs`` processes with
    this one alone writing the gradebook; a failure costs only that notebook, which then scores 0 whatever an earlier
    run left in the gradebook), then the CSV and the run's record
    (:mod:`autograder.score.run_record`, for ``report`` and ``export``), atomically.

    Raises:
        SandboxUnavailableError: ``options.sandbox`` and no sandbox can be made here (before anything runs).
        SubmissionsError: ``submissions`` is neither a folder nor a readable zip, or lacks a student of
            ``students`` (before anything runs).
        NoGradingRun: ``students`` given, and ``root`` holds no earlier grading run.
    """
    check_sandbox(options)
    root = Path(root).resolve()
    earlier = read_run_record(root) if students else None
    quiet_nbgrader()
    if not is_released(root, stages):
        release(root, stages, solutions_dir, notebooks_dir=None)
    collection = collect_submissions(submissions, root, stages, limits, frozenset(students) or None)
    problems = dict(collection.problems)
    not_run = set(problems)
    work = {student.id: tuple(s for s in stages if (student.id, s) not in not_run) for student in collection.students}
    runs, seconds = _execute(root, work, options, dask, progress)
    for run in runs:
        problems.update({(run["student"], stage): reason for stage, reason in run["problems"].items()})
    notebooks = sum(len(stages_of) for stages_of in work.values())
    not_scored = score_all(root, stages, list(work) if students else None,
                           jobs=scoring_processes(notebooks, options.jobs))
    problems.update(not_scored)
    table = read_grade_table(root, stages, collection, problems, not_run | set(not_scored), sandboxed=options.sandbox)
    if earlier is not None:
        table = with_earlier_rows(table, earlier)
    table.write_csv(csv_path or root / "grades.csv")
    write_run_record(root, table, collection, not_run, seconds, earlier)
    return table, runs


def feedback(root: Path, stages=STAGES, students: tuple[str, ...] = ()) -> list[Path]:
    """HTML feedback for every graded student (or only ``students``, ids) in
    ``<root>/feedback/<student>/<stage>/<stage>.html``; the others' pages stay as they are.

    nbgrader's feedback with :class:`~autograder.execute.preprocessors.HideHiddenTests` added: failed checks show
    their message, never the hidden tests' code. No student HTML or JavaScript is live in a page, no editor's
    personal metadata is in it, and each page replaces the old one atomically (:mod:`autograder.feedback.pages`).
    """
    from .feedback.pages import AtomicGenerateFeedback, feedback_config

    root = Path(root).resolve()
    quiet_nbgrader()
    config = feedback_config(root)
    for stage in stages:
        if not any((root / "autograded").glob(f"*/{stage}/{stage}.ipynb")):
            continue
        for student in students or ("*",):
            run_nbgrader_app(AtomicGenerateFeedback, config, stage, student)
    return sorted((root / "feedback").glob("*/*/*.html"))


def demo(root: Path, stages=STAGES, options: GradingOptions = GradingOptions(), solutions_dir: Path = SOLUTIONS_DIR,
         mistakes=None, progress: Callable[[dict], None] | None = None, dask=None) -> tuple[GradeTable, list[dict]]:
    """Release into ``root`` (not into ``notebooks/``), then grade the three built-in submissions (``dask``: as
    :func:`grade`), every notebook executed afresh: the demo shows a whole grading run, so it keeps nothing an
    earlier demo executed (:mod:`autograder.execute.resume`), from a new gradebook
    (:func:`~autograder.demo.start_demo_gradebook_afresh`: a folder with other students' grades is refused)."""
    check_sandbox(options)
    root = Path(root).resolve()
    start_demo_gradebook_afresh(root)
    (root / EXECUTED / INDEX).unlink(missing_ok=True)
    release(root, stages, solutions_dir, notebooks_dir=None)
    submissions = write_demo_submissions(root, root / "demo_submissions", stages, solutions_dir, mistakes)
    return grade(submissions, root, stages, options, solutions_dir, progress=progress, dask=dask)
