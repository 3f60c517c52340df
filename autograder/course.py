"""The nbgrader course folder: where sources, releases, submissions and the gradebook live.

Layout (nbgrader's own): ``<root>/source/<stage>/<stage>.ipynb`` (copied from ``solutions/``),
``<root>/release/...``, ``<root>/collected/<student>/<stage>/<stage>.ipynb`` (nbgrader's "submitted" folder:
what grading collected from the hand-ins, :mod:`autograder.collect`; a ``<root>/submitted/`` folder is only one
more source of hand-ins), ``<root>/autograded/...``, ``<root>/feedback/...`` and the gradebook
``<root>/gradebook.db``. One nbgrader assignment per stage.
"""

from __future__ import annotations

import os
import shutil
import sys
import warnings
from pathlib import Path

from course_lib.stages import NOTEBOOKS

REPO_ROOT = Path(__file__).resolve().parent.parent
SOLUTIONS_DIR = REPO_ROOT / "solutions"
NOTEBOOKS_DIR = REPO_ROOT / "notebooks"
STAGES = NOTEBOOKS  # one nbgrader assignment per notebook of the stage registry
#: the folder of ``<root>`` nbgrader reads submissions from: what grading collected (:mod:`autograder.collect`),
#: never what was handed in (``submitted/``, an LMS download) itself
SUBMITTED = "collected"


def put_python_tools_on_path() -> None:
    """Put this Python's ``bin/`` first on ``PATH``: nbgrader runs ``alembic`` and kernels by name.

    Needed when the virtual environment's python is called by its full path without being activated.
    """
    tools = str(Path(sys.executable).parent)
    if os.environ.get("PATH", "").split(os.pathsep)[0] != tools:
        os.environ["PATH"] = os.pathsep.join([tools, os.environ.get("PATH", "")])


def nbgrader_config(root: Path):
    """The traitlets config every nbgrader call of the course uses (and the tools it runs put on ``PATH``)."""
    from traitlets.config import Config

    put_python_tools_on_path()
    config = Config()
    config.CourseDirectory.root = str(root)
    config.CourseDirectory.course_id = "diffusion-course"
    config.CourseDirectory.db_url = f"sqlite:///{root / 'gradebook.db'}"
    config.CourseDirectory.submitted_directory = SUBMITTED
    config.ClearSolutions.code_stub = {"python": "# YOUR CODE HERE\nraise NotImplementedError()"}
    config.ClearSolutions.text_stub = "YOUR ANSWER HERE"
    return config


def run_nbgrader_app(app_class, config, stage: str, student: str = "*") -> None:
    """Run an nbgrader converter (``Autograde``, ``GenerateFeedback``, ...) with ``config`` on one assignment and
    one student (``"*"``: all), overwriting what it wrote before."""
    from nbgrader.coursedir import CourseDirectory

    coursedir = CourseDirectory(config=config)
    coursedir.assignment_id = stage
    coursedir.student_id = student
    app = app_class(coursedir=coursedir, config=config)
    app.force = True
    app.start()


def quiet_nbgrader() -> None:
    """Keep nbgrader's log and SQLAlchemy's warnings out of the table (nbgrader's errors still show)."""
    import logging

    logger = logging.getLogger("traitlets")
    logger.setLevel(logging.ERROR)
    if not logger.handlers:
        logger.addHandler(logging.StreamHandler())
    warnings.filterwarnings("ignore", module="nbgrader")
    warnings.filterwarnings("ignore", module="nbformat")


COURSE_CONFIG = "nbgrader_config.py"


def write_course_config(root: Path) -> Path:
    """Write ``<root>/nbgrader_config.py``: what :func:`nbgrader_config` sets (course id, the gradebook of that
    folder, the ``ClearSolutions`` stubs), for nbgrader's own apps started in ``root`` (``jupyter lab`` there opens
    formgrader on the gradebook that ``grade`` writes). The folder and the gradebook are the file's own folder,
    so the course folder may be moved. Written atomically; returns its path."""
    from .atomic import atomic_write_text

    root = Path(root).resolve()
    config = nbgrader_config(root)
    text = f'''"""nbgrader's configuration of this course folder, written by `python -m autograder release`.

Start `jupyter lab` in this folder and open the Formgrader menu to grade the written answers on the gradebook that
`python -m autograder grade` writes. Edit the course set-up in autograder/course.py, not here: release rewrites
this file.
"""
import os

c = get_config()  # noqa: F821 - defined by traitlets when it loads this file
here = os.path.dirname(os.path.realpath(__file__))
c.CourseDirectory.root = here
c.CourseDirectory.course_id = {config.CourseDirectory.course_id!r}
c.CourseDirectory.db_url = "sqlite:///" + os.path.join(here, "gradebook.db")
c.CourseDirectory.submitted_directory = {SUBMITTED!r}
c.ClearSolutions.code_stub = {dict(config.ClearSolutions.code_stub)!r}
c.ClearSolutions.text_stub = {config.ClearSolutions.text_stub!r}
'''
    return atomic_write_text(root / COURSE_CONFIG, text)


def prepare_course(root: Path, stages=STAGES, solutions_dir: Path = SOLUTIONS_DIR) -> Path:
    """Copy each stage's solution notebook into ``<root>/source/<stage>/`` (fresh copies)."""
    root = Path(root).resolve()
    missing = [stage for stage in stages if not (Path(solutions_dir) / f"{stage}.ipynb").exists()]
    if missing:
        raise FileNotFoundError(f"`stages`: no source notebook {', '.join(f'{s}.ipynb' for s in missing)} "
                                f"in {solutions_dir}")
    for stage in stages:
        source = root / "source" / stage
        source.mkdir(parents=True, exist_ok=True)
        shutil.copy2(Path(solutions_dir) / f"{stage}.ipynb", source / f"{stage}.ipynb")
    return root


class ReleaseError(RuntimeError):
    """A stage cannot be released into this course folder as its source notebook now is."""


def generate_student_notebooks(root: Path, out_dir: Path | None = NOTEBOOKS_DIR, stages=STAGES,
                               solutions_dir: Path = SOLUTIONS_DIR) -> list[Path]:
    """Run ``nbgrader generate_assignment`` for every stage; copy the student notebooks to ``out_dir``.

    Returns the paths of the student notebooks written (in ``out_dir``, or in ``<root>/release`` when
    ``out_dir`` is None). Raises :class:`ReleaseError` when a stage that has graded submissions in ``root`` gained
    or lost graded cells (nbgrader keeps a graded notebook's cells); that stage and the later ones then keep the
    source notebooks they had.
    """
    from nbgrader.apps import NbGraderAPI

    root = Path(root).resolve()
    sources = {stage: root / "source" / stage / f"{stage}.ipynb" for stage in stages}
    earlier = {stage: path.read_bytes() for stage, path in sources.items() if path.exists()}
    prepare_course(root, stages, solutions_dir)
    api = NbGraderAPI(config=nbgrader_config(root))
    written = []
    for position, stage in enumerate(stages):
        result = api.generate_assignment(stage, force=True)
        if not result["success"] and "Cannot add or remove cells" in result["log"] + str(result["error"]):
            for later in (later for later in stages[position:] if later in earlier):
                sources[later].write_bytes(earlier[later])
            raise ReleaseError(
                f"`release`: {stage} has graded submissions in {root / 'gradebook.db'}, and cells were added to or "
                f"removed from {Path(solutions_dir) / f'{stage}.ipynb'} since; nbgrader keeps the cells of a graded "
                f"notebook, so {stage} and the stages after it were left as they were. Release the changed course "
                "into a new --course folder.")
        if not result["success"]:
            raise RuntimeError(f"nbgrader generate_assignment failed for {stage}:\n{result['log']}\n{result['error']}")
        released = root / "release" / stage / f"{stage}.ipynb"
        if out_dir is not None:
            Path(out_dir).mkdir(parents=True, exist_ok=True)
            written.append(Path(shutil.copy2(released, Path(out_dir) / f"{stage}.ipynb")))
        else:
            written.append(released)
    return written
