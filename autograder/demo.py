"""The three built-in submissions of ``python -m autograder demo``.

- ``solutions``: the instructor's solution notebooks, handed in as they are (full marks).
- ``untouched``: the student notebooks straight from the release (no auto-graded points).
- ``mistakes``: the solutions after :data:`MISTAKES`, a short list of single-line edits that plant the errors
  students typically make (partial marks). Each edit names the exact solution line it replaces, so when a
  notebook changes the demo fails loudly instead of silently grading an unchanged copy.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import nbformat
from nbgrader import utils

from .course import SOLUTIONS_DIR

#: stage -> [(solution line, replacement)]; each solution line must occur exactly once in that stage's
#: solution cells (compared without leading and trailing spaces; the replacement keeps the indentation).
MISTAKES: dict[str, list[tuple[str, str]]] = {
    # a cumulative sum instead of a cumulative product
    "01_noising": [("alpha_bars = torch.cumprod(alphas, dim=0)", "alpha_bars = torch.cumsum(alphas, dim=0)")],
    # the loss compares the output with the noisy input instead of the clean image
    "02_denoiser": [("return F.mse_loss(model(z), x)", "return F.mse_loss(model(z), z)")],
    # the variance beta_t used where its square root belongs
    "03_ddpm": [("return mean + beta.sqrt() * z", "return mean + beta * z")],
    # guidance pushes away from the conditional prediction's own starting point
    "04_cfg": [("return eps_uncond + guidance * (eps_cond - eps_uncond)",
                "return eps_cond + guidance * (eps_cond - eps_uncond)")],
    # the velocity with the wrong sign
    "05_flow": [("return F.mse_loss(model(x_t, t), eps - x0)", "return F.mse_loss(model(x_t, t), x0 - eps)")],
    # inpainting keeps the known pixels clean where they should be noised to the step's level
    "07_editing": [("x = mask * known + (1 - mask) * x", "x = mask * x0 + (1 - mask) * x")],
}

DEMO_STUDENTS = ("solutions", "untouched", "mistakes")


class DemoFolderError(ValueError):
    """The demo's ``--course`` folder holds the grades of students other than the demo's."""


def start_demo_gradebook_afresh(root: Path) -> None:
    """Remove the gradebook an earlier demo left in ``root``: nbgrader refuses to release a notebook whose cells
    changed once it has submissions, and the demo grades the solutions as they are now. A gradebook holding any
    student besides :data:`DEMO_STUDENTS` is a real class: :class:`DemoFolderError`, and nothing is touched."""
    from nbgrader.api import Gradebook

    from .course import nbgrader_config

    gradebook = Path(root) / "gradebook.db"
    if not gradebook.exists():
        return
    with Gradebook(nbgrader_config(Path(root)).CourseDirectory.db_url) as book:
        others = sorted(student.id for student in book.students if student.id not in DEMO_STUDENTS)
    if others:
        raise DemoFolderError(
            f"`--course {root}` holds the grades of {len(others)} other student{'s' * (len(others) != 1)} than "
            "the demo's, so the demo did not run there (it starts its gradebook afresh). Give the demo a folder of "
            "its own, for example --course build/demo.")
    gradebook.unlink()


def plant_mistakes(notebook: nbformat.NotebookNode, replacements: list[tuple[str, str]]) -> nbformat.NotebookNode:
    """Return a copy of ``notebook`` with each ``(line, replacement)`` applied to its solution cells.

    Raises:
        ValueError: a line is not found exactly once in the solution cells (the notebook changed).
    """
    notebook = nbformat.from_dict(notebook)
    for old, new in replacements:
        hits = [(cell, i) for cell in notebook.cells if utils.is_solution(cell)
                for i, line in enumerate(cell.source.split("\n")) if line.strip() == old.strip()]
        if len(hits) != 1:
            raise ValueError(f"mistake line {old!r} occurs {len(hits)} times in the solution cells, expected once: "
                             "update autograder.demo.MISTAKES to the current notebook")
        cell, index = hits[0]
        lines = cell.source.split("\n")
        indent = lines[index][: len(lines[index]) - len(lines[index].lstrip())]
        lines[index] = indent + new.strip()
        cell.source = "\n".join(lines)
    return notebook


def write_demo_submissions(root: Path, out: Path, stages, solutions_dir: Path = SOLUTIONS_DIR,
                           mistakes: dict[str, list[tuple[str, str]]] | None = None) -> Path:
    """Write the three demo students into ``out`` in nbgrader's ``<student>/<stage>/<stage>.ipynb`` layout.

    ``root`` is a released course folder (its ``release/`` gives the untouched notebooks).
    """
    mistakes = MISTAKES if mistakes is None else mistakes
    out = Path(out)
    shutil.rmtree(out, ignore_errors=True)
    for stage in stages:
        name = f"{stage}.ipynb"
        solution = nbformat.read(Path(solutions_dir) / name, as_version=4)
        for student in DEMO_STUDENTS:
            (out / student / stage).mkdir(parents=True)
        nbformat.write(solution, out / "solutions" / stage / name)
        shutil.copy2(Path(root) / "release" / stage / name, out / "untouched" / stage / name)
        nbformat.write(plant_mistakes(solution, mistakes.get(stage, [])), out / "mistakes" / stage / name)
    return out
