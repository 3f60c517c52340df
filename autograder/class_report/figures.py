"""The class report's figures, drawn with matplotlib (no screen needed) and returned as PNG bytes."""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - after the backend is chosen


def _png(figure) -> bytes:
    buffer = io.BytesIO()
    figure.tight_layout()
    figure.savefig(buffer, format="png", dpi=90)
    plt.close(figure)
    return buffer.getvalue()


def score_histograms(points: dict[str, list[float]], max_points: dict[str, float]) -> bytes:
    """One histogram per stage of the auto-graded points of the students who handed it in.

    ``points``: stage -> each such student's points (0 to ``max_points[stage]``)."""
    stages = list(points)
    figure, axes = plt.subplots(1, max(len(stages), 1), figsize=(3.2 * max(len(stages), 1), 2.8), squeeze=False)
    for axis, stage in zip(axes[0], stages):
        top = max(max_points[stage], 1.0)
        axis.hist(points[stage], bins=min(20, int(top) + 1), range=(0, top), color="#4477aa")
        axis.set_title(f"{stage} (of {max_points[stage]:g})")
        axis.set_xlabel("points")
        axis.set_ylabel("students")
    return _png(figure)


def points_lost(lost: dict[str, float]) -> bytes:
    """A bar per TODO (``"stage / todo"``) of the points the class lost on it, on average per student who handed
    the stage in."""
    names = list(lost)[::-1]
    figure, axis = plt.subplots(figsize=(7, 0.35 * len(names) + 1.2))
    axis.barh(names, [lost[name] for name in names], color="#cc6677")
    axis.set_title("Points lost per TODO")
    axis.set_xlabel("mean points lost per student who handed the stage in")
    return _png(figure)


def problem_kinds(counts: dict[str, int]) -> bytes:
    """A bar per kind of problem (time limit, memory cap, dead kernel, ...) of how many notebooks had it."""
    names = sorted(counts, key=counts.get)
    figure, axis = plt.subplots(figsize=(7, 0.35 * len(names) + 1.2))
    axis.barh(names, [counts[name] for name in names], color="#ddaa33")
    axis.set_title("Notebooks not graded normally, by kind of problem")
    axis.set_xlabel("notebooks")
    return _png(figure)


def kernel_times(seconds: dict[str, list[float]]) -> bytes:
    """A box per stage of the seconds its notebooks ran in the grader."""
    stages = list(seconds)
    figure, axis = plt.subplots(figsize=(1.3 * len(stages) + 2.5, 3.2))
    axis.boxplot([seconds[stage] for stage in stages])
    axis.set_xticks(range(1, len(stages) + 1), stages, rotation=20)
    axis.set_title("Kernel time per notebook")
    axis.set_ylabel("seconds")
    return _png(figure)
