"""How phase 2 divides its work: one process for a small class, several (with one writer) for a large one."""

from __future__ import annotations

import pytest

from autograder.score.gradebook import NOTEBOOKS_PER_SCORING_PROCESS, scoring_processes


@pytest.mark.parametrize("notebooks, jobs, processes", [
    (18, 2, 1),  # the demo: starting a second process costs more than it saves
    (2 * NOTEBOOKS_PER_SCORING_PROCESS - 1, 2, 1),
    (2 * NOTEBOOKS_PER_SCORING_PROCESS, 2, 2),
    (6000, 2, 2),  # never more than the job count
    (6000, 8, 8),
    (6000, 1, 1),
    (0, 4, 1),
])
def test_scoring_uses_several_processes_only_for_a_large_class(notebooks, jobs, processes):
    assert scoring_processes(notebooks, jobs) == processes
