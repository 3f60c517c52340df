"""How fast the autograder grades a class: seconds per student with ``--jobs 1`` and ``--jobs 2``.

Grades ``--copies`` copies of the three built-in demo submissions (solutions, untouched, deliberate mistakes;
see ``autograder.demo``) in quick mode on the CPU and prints one row per job count: wall time, seconds per
student (wall / students) and the mean time one student's notebooks took to run, added up (what a single
student costs on one process), with the sandbox on (``--no-sandbox``: off). Then, for the first job count: the fixed
cost per notebook (from its arrival at a worker to the start of its first cell: scratch folder, kernel and sandbox
start, imports), every notebook's kernel time by student and stage, phase 2 per notebook, and (unless
``--no-plain``) each solved notebook's grading time against a plain ``jupyter nbconvert --execute`` of it here.
Each worker runs its notebooks in kernels forked from a kernel template that imported torch once per stage
(``autograder.execute.warm_kernels``); ``--cold-kernels`` adds a row graded with kernels started when their notebook
arrives, at the first job count, and its fixed cost.

The ``sandbox s/nb`` column is what the bubblewrap sandbox adds to one notebook: the time to start a kernel,
import torch and matplotlib in it and shut it down, in the sandbox minus without, the median over
``--kernel-starts`` pairs run one after the other (0: not measured). The sandboxed kernel gets the copies of
this machine's caches that grading gives it (``autograder.execute.notebook.home_seed``).

    python benchmarks/grading.py --copies 2            # 6 students, all five stages
    python benchmarks/grading.py --stages 01_noising   # one stage only
    python benchmarks/grading.py --jobs --kernel-starts 10   # the sandbox's cost only
    python benchmarks/grading.py --jobs 2 --dask local:2 --rounds 3   # a Dask LocalCluster against --jobs 2
    python benchmarks/grading.py --jobs 1 --cold-kernels --rounds 2   # warm kernels against cold ones

``--dask local:N`` adds a row graded on a Dask cluster (``autograder.distributed.cluster``; the wall time includes
starting the LocalCluster) and prints its overhead over the ``--jobs N`` row, in total and per notebook, and
checks that both give the same grades. With ``--rounds R`` the modes take turns R times and the medians of
rounds 2 to R are compared. On a shared machine one run's wall time can be off by a third or more, and the
first round was the slowest one in each of the four runs made here, whichever mode went first.
Phase 2 alone (scoring every executed notebook into the gradebook, after phase 1 whatever ran phase 1) is timed per
notebook in one process and on the largest job count's processes (one writer).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from autograder.commands import grade, release  # noqa: E402
from autograder.course import SOLUTIONS_DIR, STAGES  # noqa: E402
from autograder.demo import write_demo_submissions  # noqa: E402
from autograder.execute.options import GradingOptions  # noqa: E402
from autograder.score.gradebook import score_all  # noqa: E402

#: the mode of ``--cold-kernels``: the first job count, kernels started when their notebook arrives
COLD = "cold"
#: the parts of a notebook's fixed cost, as the benchmark names them
PARTS = {"preparing": "preparing (nbgrader, the checks' expected values)",
         "waiting_for_kernel": "waiting for the kernel's template and fork",
         "starting": "the kernel's start (cold) or connection, state resets"}


def class_of_copies(root: Path, out: Path, stages, solutions: Path, copies: int) -> Path:
    """``copies`` copies of each demo student, named ``<student>-<k>``, in nbgrader's layout."""
    demo = write_demo_submissions(root, root / "demo_submissions", stages, solutions)
    for student in sorted(p.name for p in demo.iterdir()):
        for k in range(copies):
            shutil.copytree(demo / student, out / f"{student}-{k}")
    return out


def kernel_seconds(sandboxed: bool) -> float:
    """Seconds to start a kernel (sandboxed or not), import torch and matplotlib in it and shut it down."""
    from jupyter_client.manager import AsyncKernelManager

    from autograder.execute.notebook import home_seed
    from autograder.execute.sandbox import SandboxedKernelManager

    async def run() -> float:
        with tempfile.TemporaryDirectory() as folder:
            km = (SandboxedKernelManager(kernel_name="python3", seed=home_seed()) if sandboxed
                  else AsyncKernelManager(kernel_name="python3"))
            started = time.perf_counter()
            await km.start_kernel(cwd=folder, extra_arguments=["--HistoryManager.hist_file=:memory:"])
            client = km.client()
            client.start_channels()
            try:
                await client.wait_for_ready(timeout=120)
                reply = await client.execute_interactive("import torch, matplotlib.pyplot", timeout=120)
                assert reply["content"]["status"] == "ok", reply["content"]
            finally:
                client.stop_channels()
                await km.shutdown_kernel(now=True)
            return time.perf_counter() - started

    return asyncio.run(run())


def sandbox_cost(pairs: int) -> tuple[float, float, float]:
    """Median seconds of :func:`kernel_seconds` in the sandbox and without, and the median of the pairs' differences
    (robust on a shared machine), over ``pairs`` pairs run one after the other."""
    times = {True: [], False: []}
    for _ in range(pairs):
        for sandboxed in (False, True):
            times[sandboxed].append(kernel_seconds(sandboxed))
    cost = statistics.median(a - b for a, b in zip(times[True], times[False]))
    return statistics.median(times[True]), statistics.median(times[False]), cost


def _grades(table) -> dict:
    return {row.student: (row.points, sorted(row.problems)) for row in table.rows}


def parse_args(argv) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--copies", type=int, default=1, help="copies of the three demo students (default 1)")
    parser.add_argument("--jobs", type=int, nargs="*", default=[1, 2],
                        help="job counts to compare (default 1 2; none: only the sandbox's cost)")
    parser.add_argument("--no-sandbox", action="store_true", help="grade without the sandbox")
    parser.add_argument("--kernel-starts", type=int, default=5,
                        help="kernel starts with and without the sandbox for the sandbox s/nb column (default 5)")
    parser.add_argument("--cold-kernels", action="store_true",
                        help="also grade at the first job count with kernels started when their notebook arrives")
    parser.add_argument("--dask", default=None, help="also grade on this Dask cluster (local:N or tcp://...)")
    parser.add_argument("--rounds", type=int, default=1,
                        help="times each mode grades the class, taking turns (default 1; medians are compared)")
    parser.add_argument("--stages", nargs="+", default=list(STAGES))
    parser.add_argument("--solutions", type=Path, default=SOLUTIONS_DIR)
    parser.add_argument("--no-plain", dest="plain", action="store_false",
                        help="skip the comparison with plain `jupyter nbconvert --execute` of the solved notebooks")
    args = parser.parse_args(argv)
    if args.copies < 1 or args.rounds < 1:
        parser.error(f"--copies and --rounds must be >= 1, got {args.copies} and {args.rounds}")
    return args


def grade_rounds(args: argparse.Namespace, root: Path, submissions: Path, students: int,
                 cost: float) -> tuple[dict, dict] | None:
    """Grade the class ``--rounds`` times in each mode (job counts, then the Dask cluster), printing a row per
    grading; the wall times of each mode and the per-notebook results of its last round, or ``None`` after printing
    the tables when two modes' grades differ."""
    modes = [*args.jobs, *([COLD] if args.cold_kernels else []), *([args.dask] if args.dask else [])]
    walls, tables, notebooks = {mode: [] for mode in modes}, {}, {}
    for _ in range(args.rounds):  # the modes take turns, so that a busy spell of the machine hits them alike
        for mode in modes:
            (root / "executed" / "index.json").unlink(missing_ok=True)  # --dask: execute everything again
            options = GradingOptions(jobs=mode if isinstance(mode, int) else args.jobs[0] if mode == COLD else 1,
                                     sandbox=not args.no_sandbox, warm_kernels=mode != COLD)
            notebooks[mode] = []
            started = time.perf_counter()
            table, runs = grade(submissions, root, args.stages, options, args.solutions,
                                dask=None if isinstance(mode, int) or mode == COLD else mode,
                                progress=notebooks[mode].append)
            wall = time.perf_counter() - started
            walls[mode].append(wall)
            alone = sum(run["seconds"] for run in runs) / len(runs)
            print(f"{mode:>4}  {wall:>7.1f}  {wall / students:>9.1f}  {alone:>13.1f}  {cost:>+12.2f}"
                  f"  (run s/notebook {alone / len(args.stages):.2f})", flush=True)
            if tables and _grades(table) != _grades(next(iter(tables.values()))):
                print(f"The grades of {mode} differ:\n{next(iter(tables.values())).format()}\n{table.format()}")
                return None
            tables[mode] = table
    return walls, notebooks


def print_dask_overhead(args: argparse.Namespace, walls: dict, notebooks: int) -> None:
    """With ``--dask local:N`` and ``N`` among the job counts: the cluster's overhead over ``--jobs N``."""
    workers = int(args.dask.split(":")[1]) if args.dask and args.dask.startswith("local:") else None
    if workers in walls:
        counted = slice(1 if args.rounds > 1 else 0, None)  # round 1 was the slowest in every run here
        dask, jobs = statistics.median(walls[args.dask][counted]), statistics.median(walls[workers][counted])
        extra = dask - jobs
        print(f"Dask overhead over --jobs {workers} (medians of rounds {counted.start + 1} to {args.rounds}): "
              f"{extra:+.1f} s wall ({extra / notebooks:+.2f} s per notebook, {100 * extra / jobs:+.0f} %), "
              "cluster start included")


def _scoring_class(root: Path, copies: int) -> Path:
    """A course folder like ``root`` whose ``executed/`` holds ``copies`` copies of each executed student (phase 2's
    input), to time scoring on more notebooks than the graded class has."""
    target = root.parent / f"scoring-{copies}"
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(root, target, symlinks=True, ignore=shutil.ignore_patterns("autograded", "work"))
    for student in [path for path in (target / "executed").iterdir() if path.is_dir()]:
        for k in range(1, copies):
            shutil.copytree(student, student.with_name(f"{student.name}-copy{k}"))
    return target


def time_scoring(root: Path, stages, jobs: int, copies: tuple[int, int] = (6, 12)) -> None:
    """Phase 2 alone (scoring every executed notebook into the gradebook) in one process and (for ``jobs`` > 1)
    converted on ``jobs`` processes with this one writing, on two class sizes made of copies of the executed
    students: wall seconds per notebook at each size, and from both sizes the start-up (seconds before scoring
    goes at its steady pace) and the steady seconds per notebook."""
    classes = {count: _scoring_class(root, count) for count in copies}
    for processes in sorted({1, jobs}):
        walls = {}
        for count, course in classes.items():
            shutil.rmtree(course / "autograded", ignore_errors=True)
            notebooks = len(list((course / "executed").glob("*/*/*.ipynb")))
            started = time.perf_counter()
            score_all(course, tuple(stages), jobs=processes)
            walls[notebooks] = time.perf_counter() - started
        (small, small_wall), (large, large_wall) = sorted(walls.items())
        steady = (large_wall - small_wall) / (large - small)
        print(f"Phase 2 (scoring into the gradebook) on {processes} process{'es' if processes > 1 else ''}: "
              + ", ".join(f"{wall / count:.3f} s per notebook on {count}" for count, wall in sorted(walls.items()))
              + f"; start-up {small_wall - steady * small:.1f} s, then {steady:.3f} s per notebook")


def spread(values: list[float]) -> str:
    """``median (min to max)`` of ``values``, in seconds."""
    return f"{statistics.median(values):.2f} s ({min(values):.2f} to {max(values):.2f})"


def print_fixed_cost(mode, results: list[dict]) -> None:
    """The fixed cost of a notebook: from its arrival at a worker to the start of its first cell, for the notebooks
    that ran in a warm kernel and for those whose kernel started when they arrived; the median of each of its parts
    (``autograder.execute.notebook.fixed_cost_parts``); then apart, for the notebooks that did not compute checks'
    expected values (which a grading run computes once per case, for the first notebook of each stage that needs
    them: a few of a demo class, almost none of a real one) and for those that did."""
    for warm in (True, False):
        timed = [result for result in results
                 if result.get("first_cell_seconds") is not None and result.get("warm_kernel", False) == warm]
        if not timed:
            continue
        print(f"Fixed cost per notebook (arrival to first cell), jobs {mode}, {'warm' if warm else 'cold'} "
              f"kernels: {spread([result['first_cell_seconds'] for result in timed])} over {len(timed)} notebooks")
        print("  parts (median, max): " + ", ".join(
            f"{PARTS[part]} {statistics.median(values):.2f} s, {max(values):.2f} s"
            for part, values in ((part, [result["fixed_cost_parts"][part] for result in timed]) for part in PARTS)))
        for computed, which in ((False, "reading the checks' expected values"),
                                (True, "computing the checks' expected values (once per run)")):
            fixed = [result["first_cell_seconds"] for result in timed if result["computed_expected_values"] == computed]
            if fixed:
                print(f"  of which {len(fixed)} {which}: {spread(fixed)}")


def print_kernel_time_per_stage(mode, results: list[dict], stages) -> None:
    """Seconds each notebook took to run, by student and stage, and each student's total."""
    seconds = {(result["student"], result["stage"]): result["seconds"] for result in results}
    students = sorted({student for student, _ in seconds})
    print(f"Kernel time per notebook (s), jobs {mode}:")
    print(f"  {'student':<14}" + "".join(f"{stage:>18}" for stage in stages) + f"{'total':>8}")
    for student in students:
        row = [seconds.get((student, stage), float("nan")) for stage in stages]
        print(f"  {student:<14}" + "".join(f"{value:>18.1f}" for value in row) + f"{sum(row):>8.1f}")


def plain_seconds(notebook: Path, threads: int) -> float:
    """Seconds ``jupyter nbconvert --to notebook --execute`` takes to run ``notebook`` here: quick mode, no sandbox,
    no grading, ``threads`` torch threads (what a ``--jobs`` kernel gets)."""
    env = {**os.environ, "COURSE_MODE": "quick", "MPLBACKEND": "Agg", "OMP_NUM_THREADS": str(threads),
           "MKL_NUM_THREADS": str(threads)}
    with tempfile.TemporaryDirectory() as folder:
        copy = Path(folder) / notebook.name
        shutil.copy2(notebook, copy)
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "jupyter", "nbconvert", "--to", "notebook", "--execute", "--inplace",
                        "--ExecutePreprocessor.timeout=600", str(copy)], cwd=folder, env=env, check=True,
                       capture_output=True)
        return time.perf_counter() - started


def print_plain_ratio(mode, results: list[dict], submissions: Path, stages) -> None:
    """Grading a solved notebook against running it plainly with ``jupyter nbconvert --execute``, per stage."""
    graded = {result["stage"]: result["seconds"] for result in results if result["student"].startswith("solutions")}
    threads = max(1, (os.cpu_count() or 1) // mode)
    ratios = []
    for stage in stages:
        folder = next(path for path in sorted(submissions.iterdir()) if path.name.startswith("solutions"))
        plain = plain_seconds(folder / stage / f"{stage}.ipynb", threads)
        ratios.append(graded[stage] / plain)
        print(f"  {stage:<18} graded {graded[stage]:>5.1f} s, nbconvert --execute {plain:>5.1f} s: "
              f"{ratios[-1]:.2f}x")
    print(f"Grading / plain execution of the solved notebooks, jobs {mode}: {statistics.median(ratios):.2f}x "
          f"(median over {len(stages)} stages)")


def main(argv=None) -> int:
    args = parse_args(argv)
    nan = float("nan")
    sandboxed, plain, cost = sandbox_cost(args.kernel_starts) if args.kernel_starts > 0 else (nan, nan, nan)
    if not args.jobs:
        print(f"kernel start + import torch, matplotlib + shutdown: {sandboxed:.2f} s sandboxed, {plain:.2f} s without "
              f"(medians of {args.kernel_starts}): the sandbox costs {cost:+.2f} s per notebook (median difference)")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "course"
        release(root, args.stages, args.solutions, notebooks_dir=None)
        submissions = class_of_copies(root, Path(tmp) / "class", args.stages, args.solutions, args.copies)
        students = 3 * args.copies
        print(f"{students} students x {len(args.stages)} notebooks, quick mode, CPU, "
              f"{'no sandbox' if args.no_sandbox else 'sandboxed'}")
        print(f"{'jobs':>4}  {'wall s':>7}  {'s/student':>9}  {'run s/student':>13}  {'sandbox s/nb':>12}")
        graded = grade_rounds(args, root, submissions, students, cost)
        if graded is None:
            return 1
        walls, notebooks = graded
        print_dask_overhead(args, walls, students * len(args.stages))
        mode = args.jobs[0]
        print_fixed_cost(mode, notebooks[mode])
        if args.cold_kernels:
            print_fixed_cost(COLD, notebooks[COLD])
        print_kernel_time_per_stage(mode, notebooks[mode], args.stages)
        time_scoring(root, args.stages, max(args.jobs))
        if args.plain:
            print_plain_ratio(mode, notebooks[mode], submissions, args.stages)
    return 0


if __name__ == "__main__":
    sys.exit(main())
