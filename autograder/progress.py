"""The progress line of a grading run: notebooks done of all, how many with problems, and the time left.

The time left is the time per notebook so far times the notebooks left (the workers keep running in parallel, so
the wall time per finished notebook already counts them), rounded up to whole minutes.
"""

from __future__ import annotations

import math
import time
from typing import Callable


def duration(seconds: float) -> str:
    """``seconds`` as a person reads a wait: ``"under a minute"``, ``"3 min"``, ``"1 h 05 min"``."""
    if seconds < 60:
        return "under a minute"
    minutes = math.ceil(seconds / 60)
    return f"{minutes} min" if minutes < 60 else f"{minutes // 60} h {minutes % 60:02d} min"


class Progress:
    """Counts the notebooks of a run as they finish; :meth:`record` returns the line for the one just finished."""

    def __init__(self, total: int, clock: Callable[[], float] = time.monotonic):
        self.total, self.done, self.failed = total, 0, 0
        self._clock = clock
        self._started = clock()

    def record(self, result: dict) -> str:
        """Count ``result`` (a notebook's ``{"problem", ...}``) and return the progress line."""
        self.done += 1
        self.failed += bool(result.get("problem"))
        text = f"{self.done}/{self.total} done, {self.failed} with problems"
        left = self.total - self.done
        if left > 0:
            seconds = (self._clock() - self._started) / self.done * left
            text += f", {'about ' if seconds >= 60 else ''}{duration(seconds)} left"
        return text
