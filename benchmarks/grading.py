"""How fast the autograder grades a class: seconds per student with ``--jobs 1`` and ``--jobs 2``.

Grades ``--copies`` copies of the three built-in demo submissions (solutions, untouched, deliberate mistakes;
see ``autograder.demo``) in quick mode on the CPU and prints one row per job count: wall time, seconds per
student (wall / students) and the mean time one student's five notebooks took to run, added up (what a single
student costs on one process).

    python benchmarks/grading.py --copies 2            # 6 students, all five stages
    python benchmarks/grading.py --stages 01_noising   # one stage only
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from autograder.commands import grade, release  # noqa: E402
from autograder.course import SOLUTIONS_DIR, STAGES  # noqa: E402
from autograder.demo import write_demo_submissions  # noqa: E402
from autograder.grading import GradingOptions  # noqa: E402


def class_of_copies(root: Path, out: Path, stages, solutions: Path, copies: int) -> Path:
    """``copies`` copies of each demo student, named ``<student>-<k>``, in nbgrader's layout."""
    demo = write_demo_submissions(root, root / "demo_submissions", stages, solutions)
    for student in sorted(p.name for p in demo.iterdir()):
        for k in range(copies):
            shutil.copytree(demo / student, out / f"{student}-{k}")
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--copies", type=int, default=1, help="copies of the three demo students (default 1)")
    parser.add_argument("--jobs", type=int, nargs="+", default=[1, 2], help="job counts to compare (default 1 2)")
    parser.add_argument("--stages", nargs="+", default=list(STAGES))
    parser.add_argument("--solutions", type=Path, default=SOLUTIONS_DIR)
    args = parser.parse_args(argv)
    if args.copies < 1:
        parser.error(f"--copies must be >= 1, got {args.copies}")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "course"
        release(root, args.stages, args.solutions, notebooks_dir=None)
        submissions = class_of_copies(root, Path(tmp) / "class", args.stages, args.solutions, args.copies)
        students = 3 * args.copies
        print(f"{students} students x {len(args.stages)} notebooks, quick mode, CPU")
        print(f"{'jobs':>4}  {'wall s':>7}  {'s/student':>9}  {'run s/student':>13}")
        for jobs in args.jobs:
            started = time.perf_counter()
            _, runs = grade(submissions, root, args.stages, GradingOptions(jobs=jobs), args.solutions)
            wall = time.perf_counter() - started
            alone = sum(run["seconds"] for run in runs) / len(runs)
            print(f"{jobs:>4}  {wall:>7.1f}  {wall / students:>9.1f}  {alone:>13.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
