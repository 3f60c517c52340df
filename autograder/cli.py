"""``python -m autograder release | grade SUBMISSIONS | feedback | report | export | demo | publish DIR``
(``--help`` on each)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from .collect.sources import Limits
from .course import NOTEBOOKS_DIR, REPO_ROOT, SOLUTIONS_DIR, STAGES
from .execute.options import GradingOptions
from .publish import command as publish
from .safe_text import shown
from .score.lms_export import FORMATS

DEFAULT_COURSE = REPO_ROOT / "build" / "course"


def _running_options() -> argparse.ArgumentParser:
    """The options of a grading run (``grade`` and ``demo``)."""
    running = argparse.ArgumentParser(add_help=False)
    running.add_argument("--jobs", type=int, default=1, help="students graded at the same time (processes)")
    running.add_argument("--dask", metavar="ADDRESS", default=None,
                         help="run the notebooks on a Dask cluster: tcp://HOST:8786 (a running scheduler) or "
                              "local:N (N worker processes on this machine); --jobs is then not used")
    running.add_argument("--cell-timeout", type=int, default=GradingOptions.cell_timeout, help="seconds per cell")
    running.add_argument("--notebook-timeout", type=float, default=GradingOptions.notebook_timeout,
                         help="seconds per notebook")
    running.add_argument("--memory-gb", type=float, default=GradingOptions.memory_gb,
                         help="GiB that all processes of one student's kernel may hold together (shared pages "
                              "counted once); over it the kernel is stopped; 0: no cap")
    running.add_argument("--max-processes", type=int, default=GradingOptions.max_processes,
                         help="processes one student's kernel may run at once; over it the kernel is stopped; "
                              "0: no cap")
    running.add_argument("--no-sandbox", action="store_true",
                         help="run the notebooks without the bubblewrap sandbox, with your rights (trusted "
                              "notebooks only; the table and CSV say so)")
    running.add_argument("--cold-kernels", action="store_true",
                         help="start each notebook's kernel when the notebook arrives, rather than while the one "
                              "before it runs (slower; to measure what warm kernels save)")
    return running


def _add_grade(commands, parents: list) -> None:
    """The ``grade`` command and its own options (``parents``: the shared ones)."""
    grade = commands.add_parser("grade", parents=parents, help="autograde a folder or zip of submissions")
    grade.add_argument("submissions", type=Path,
                       help="nbgrader layout <student>/<stage>/*.ipynb, or a folder or .zip of LMS downloads")
    grade.add_argument("--csv", type=Path, default=None, help="where to write the grades (default <course>/grades.csv)")
    grade.add_argument("--student", action="append", default=[], metavar="ID",
                       help="grade only this student again (repeatable), in a class graded before: late or regraded "
                            "work; everyone else's grades, graded copies and rows stay as they are")
    grade.add_argument("--max-notebook-mb", type=_positive("--max-notebook-mb"), default=Limits.notebook_bytes / 2**20,
                       help="a handed-in notebook larger than this (MiB, measured while reading or inflating) is "
                            "refused, with a line for its student")
    grade.add_argument("--max-ratio", type=_positive("--max-ratio"), default=Limits.ratio,
                       help="an archive member past 1 MiB that inflates more than this many times its compressed "
                            "size is refused (a zip bomb)")


def _add_report_and_export(commands) -> None:
    """The ``report`` and ``export`` commands, which read the last grading run of ``--course``."""
    course_only = argparse.ArgumentParser(add_help=False)
    course_only.add_argument("--course", type=Path, default=DEFAULT_COURSE,
                             help=f"the graded course folder; default {DEFAULT_COURSE}")
    commands.add_parser("report", parents=[course_only],
                        help="the class report of the last grading run: scores, mistakes per TODO, problems, kernel "
                             "time, similar code (<course>/report/index.html)")
    export = commands.add_parser("export", parents=[course_only], help="the last grading run's grades for an LMS")
    export.add_argument("--format", choices=FORMATS, default="csv",
                        help="canvas: gradebook import; moodle: assignment grading worksheet; csv: plain")
    export.add_argument("--stages", nargs="+", default=None, help="the stages to export (default: all graded)")
    export.add_argument("--output", type=Path, default=None, help="default <course>/export-<format>.csv")
    export.add_argument("--missing-as-zero", action="store_true",
                        help="a stage not handed in is 0 (default: an empty cell)")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m autograder", description=__doc__)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--course", type=Path, default=DEFAULT_COURSE,
                        help=f"nbgrader course folder (gradebook, releases, graded copies); default {DEFAULT_COURSE}")
    common.add_argument("--stages", nargs="+", default=list(STAGES), help="assignments (default: every stage)")
    common.add_argument("--solutions", type=Path, default=SOLUTIONS_DIR, help="folder of the source notebooks")
    running = _running_options()
    commands = parser.add_subparsers(dest="command", required=True)
    release = commands.add_parser("release", parents=[common], help="generate the student notebooks")
    release.add_argument("--notebooks", type=Path, default=NOTEBOOKS_DIR, help="where to copy the student notebooks")
    _add_grade(commands, [common, running])
    feedback = commands.add_parser("feedback", parents=[common],
                                   help="HTML feedback per student (hidden tests not shown)")
    feedback.add_argument("--student", action="append", default=[], metavar="ID",
                          help="only this student's pages (repeatable); the others' stay as they are")
    commands.add_parser("demo", parents=[common, running],
                        help="release, grade three built-in submissions, then write the class report")
    _add_report_and_export(commands)
    publish.add_arguments(commands.add_parser(
        "publish", help="write the student-facing folder: notebooks and one course_lib package per stage",
        description="Publish the student notebooks and course_lib packages of the released stages and of the "
                    "current assignment into DIR, ready to push to the repository (or web folder) at --url."))
    return parser


def _positive(option: str):
    """An argparse type: a number > 0, else an error naming ``option``."""
    def number(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = float("nan")
        if not value > 0 or value == float("inf"):
            raise argparse.ArgumentTypeError(f"{option} must be a number > 0, got {text!r}")
        return value

    return number


def _options(args) -> GradingOptions:
    return GradingOptions(jobs=args.jobs, cell_timeout=args.cell_timeout, notebook_timeout=args.notebook_timeout,
                          memory_gb=args.memory_gb, max_processes=args.max_processes, sandbox=not args.no_sandbox,
                          warm_kernels=not args.cold_kernels)


def _print_progress(result: dict) -> None:
    note = f" ({shown(result['problem'])})" if result["problem"] else ""
    counts = f"  [{result['progress']}]" if result.get("progress") else ""
    print(f"  ran {shown(result['student'])} / {result['stage']} in {result['seconds']:.1f} s{note}{counts}",
          flush=True)


def _print_graded(table, runs, started: float, csv_path: Path) -> None:
    print()
    print(table.format())
    print(f"\nGrades written to {csv_path}")
    if runs:
        per_student = sum(run["seconds"] for run in runs) / len(runs)
        print(f"{len(runs)} students in {time.perf_counter() - started:.1f} s "
              f"(one student's notebooks took {per_student:.1f} s to run, on average)")


def main(argv=None) -> int:
    args = _parser().parse_args(argv)  # before the commands' imports (nbgrader, torch): usage errors come at once
    from . import commands
    from .collect import SubmissionsError
    from .course import ReleaseError
    from .demo import DemoFolderError
    from .score.lms_export import ExportError
    from .score.run_record import NoGradingRun
    from .execute.sandbox import SandboxUnavailableError

    try:
        return _run(commands, args)
    except (SandboxUnavailableError, SubmissionsError, NoGradingRun, ExportError, DemoFolderError,
            ReleaseError) as error:
        print(error, file=sys.stderr)
        return 2
    except RuntimeError as error:  # the Dask cluster: workers' environment, scheduler gone
        from .distributed.cluster import SchedulerLostError, WorkerEnvironmentError

        if not isinstance(error, (SchedulerLostError, WorkerEnvironmentError)):
            raise
        print(error, file=sys.stderr)
        return 3


def _report_or_export(args) -> int:
    if args.command == "report":
        from .class_report import write_report

        print(write_report(args.course))
        return 0
    from .score.lms_export import export_grades

    path, left_out = export_grades(args.course, args.format, args.output, args.stages, args.missing_as_zero)
    for line in left_out:
        print(f"left out: {shown(line)}", file=sys.stderr)
    print(path)
    return 0


def _run(commands, args) -> int:
    if args.command == "publish":
        return publish.run(args)
    if args.command in ("report", "export"):
        return _report_or_export(args)
    stages = tuple(args.stages)
    started = time.perf_counter()
    if args.command == "release":
        for path in commands.release(args.course, stages, args.solutions, args.notebooks):
            print(path)
    elif args.command == "grade":
        limits = Limits(notebook_bytes=int(args.max_notebook_mb * 2**20), ratio=args.max_ratio)
        table, runs = commands.grade(args.submissions, args.course, stages, _options(args), args.solutions, args.csv,
                                     _print_progress, dask=args.dask, limits=limits, students=tuple(args.student))
        _print_graded(table, runs, started, args.csv or args.course.resolve() / "grades.csv")
    elif args.command == "feedback":
        for path in commands.feedback(args.course, stages, tuple(args.student)):
            print(path)
    else:
        table, runs = commands.demo(args.course, stages, _options(args), args.solutions, progress=_print_progress,
                                    dask=args.dask)
        _print_graded(table, runs, started, args.course.resolve() / "grades.csv")
        from .class_report import write_report

        print(f"Class report: {write_report(args.course)}")
    return 0
