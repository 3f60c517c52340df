"""Phase 2 of grading: the one writer of the gradebook.

nbgrader's ``Autograde`` again, with no kernel, reading ``executed/`` (what phase 1,
:mod:`autograder.execute`, left) instead of ``collected/``, with execution switched off: it writes scores into
``<root>/gradebook.db`` and the graded notebooks into ``<root>/autograded/``, exactly as a plain
``nbgrader autograde`` would. It runs only once every kernel of phase 1 has ended. In one process, or converted on
several (``jobs``) while this process alone writes the gradebook (:mod:`autograder.score.parallel`): several
``nbgrader autograde`` processes on one gradebook would write the same SQLite file at once.
"""

from __future__ import annotations

from pathlib import Path

from ..course import quiet_nbgrader
from ..execute.notebook import run_autograde
from ..execute.resume import EXECUTED
from .config import score_config
from .engines import shared_engines


#: notebooks per process from which scoring on several processes pays for their start: two processes start in
#: about 1.2 s (spawning, importing nbgrader; 4 to 7 s while they imported torch) and then score a notebook every
#: 0.034 s where one takes 0.083 s, so two pay off from about 25 notebooks on this project's machine; 30 leaves
#: room for a slower start (benchmarks/README.md, "Phase 2")
NOTEBOOKS_PER_SCORING_PROCESS = 30


def scoring_processes(notebooks: int, jobs: int) -> int:
    """How many processes phase 2 uses for ``notebooks`` with ``jobs`` allowed: 1 for a small class."""
    return max(1, min(jobs, notebooks // NOTEBOOKS_PER_SCORING_PROCESS))


def score_all(root: Path, stages: tuple[str, ...], only: list[str] | None = None,
              jobs: int = 1) -> dict[tuple[str, str], str]:
    """Phase 2: write the scores of every executed notebook (of the students ``only``, when given) into the
    gradebook, in this process or, with ``jobs`` > 1, converted on ``jobs`` processes and written here
    (:mod:`autograder.score.parallel`); returns failures by (student, stage)."""
    quiet_nbgrader()
    executed = Path(root) / EXECUTED
    tasks = [(student, stage) for stage in stages
             for student in sorted(path.parent.parent.name for path in executed.glob(f"*/{stage}/{stage}.ipynb"))
             if only is None or student in only]
    if jobs > 1 and len(tasks) > 1:
        from .parallel import score_in_parallel

        return score_in_parallel(Path(root), tasks, jobs)
    config = score_config(Path(root))
    failures = {}
    with shared_engines():
        for student, stage in tasks:
            try:
                run_autograde(config, stage, student)
            except Exception as error:  # noqa: BLE001 - recorded in the table, the others go on
                failures[student, stage] = f"could not be scored: {type(error).__name__}: {error}"
    return failures
