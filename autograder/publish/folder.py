"""``python -m autograder publish DIR --url URL [--solutions-through STAGE]``: what students are given.

The stages through ``--solutions-through`` (default: none) are *released*: their solutions may be known. The
command publishes their notebooks and the next stage's (the current assignment) into ``DIR``:

- ``notebooks/<stage>.ipynb``: nbgrader's student notebook (:func:`autograder.course.generate_student_notebooks`),
  whose set-up cell installs that stage's package (its ``PACKAGE_URL = ""`` line gets the wheel's URL) and whose
  "Open in Colab" badge opens this copy (for a GitHub repository; for another web folder the badge is left out);
- ``packages/course_lib-<version>+stage<k>-py3-none-any.whl``: the student package of each published stage
  (:mod:`autograder.publish.packages`): the given code, the answers of the stages before k, the visible checks'
  fixtures;
- ``README.md`` for students, and ``.course-publication.json``, the marker that records what was published.

``URL`` is where ``DIR`` will be served: a GitHub repository ``https://github.com/ORG/REPO`` (push ``DIR`` to its
``main`` branch; wheels are fetched from ``.../raw/main/packages/...``), or any other http(s) web folder.

Nothing in ``DIR`` is deleted, and only files an earlier publish wrote are overwritten (each is listed); a
folder holding anything else is refused. Publishing several stages at once warns that the earlier ones are
unprotected: the package of a later stage holds their answers.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote, urlsplit

import nbformat

from course_lib import stages

from ..atomic import atomic_write_bytes
from ..course import SOLUTIONS_DIR, generate_student_notebooks
from ..library_view import left_out_files
from .packages import build_wheel, wheel_name

MARKER = ".course-publication.json"
COURSE_ID = "diffusion-course"  # the nbgrader course id of autograder.course.nbgrader_config
PLACEHOLDER = "https://github.com/diffusion-course/course"  # the source notebooks' stand-in for the real address
PACKAGE_URL_LINE = re.compile(r'^(?P<indent>[ \t]*)PACKAGE_URL = ""(?P<rest>.*)$', re.MULTILINE)
BADGE = re.compile(r"\[!\[Open In Colab\]\([^)]*\)\]\([^)]*\)[ \t]*\n*")
BADGE_IMAGE = "https://colab.research.google.com/assets/colab-badge.svg"
MARKERS = ("BEGIN SOLUTION", "END SOLUTION", "BEGIN HIDDEN TESTS", "END HIDDEN TESTS")


class PublishError(ValueError):
    """A bad argument or a folder that cannot be published into; the message names the argument."""


@dataclass(frozen=True)
class Site:
    """Where the published folder is served: a GitHub repository (``org``, ``repo``) or a plain web folder."""

    url: str
    org: str | None = None
    repo: str | None = None

    @property
    def is_github(self) -> bool:
        return self.org is not None

    def file_url(self, relative: str) -> str:
        """The address a browser or pip downloads ``DIR/relative`` from (``+`` and the like percent-encoded)."""
        path = quote(relative)
        if self.is_github:
            return f"https://github.com/{self.org}/{self.repo}/raw/main/{path}"
        return f"{self.url}/{path}"

    def colab_url(self, notebook: str) -> str | None:
        """The "Open in Colab" address of ``notebooks/<notebook>.ipynb`` (GitHub only)."""
        if not self.is_github:
            return None
        return f"https://colab.research.google.com/github/{self.org}/{self.repo}/blob/main/notebooks/{notebook}.ipynb"


@dataclass
class Publication:
    """What one publish did."""

    directory: Path
    site: Site
    stages: tuple[str, ...]  # the published notebooks, in course order
    released: tuple[str, ...]  # the stages whose solutions are released
    package_urls: dict[str, str] = field(default_factory=dict)  # notebook -> its wheel's URL
    written: list[str] = field(default_factory=list)  # every file written (relative to directory)
    replaced: list[str] = field(default_factory=list)  # those that an earlier publish had written
    edited: list[str] = field(default_factory=list)  # replaced files changed by hand since they were published
    stale: list[str] = field(default_factory=list)  # files of an earlier publish not published now (kept)
    unprotected: tuple[str, ...] = ()  # published stages whose answers a later published package holds

    def warnings(self) -> list[str]:
        """Warnings for the instructor (empty when publishing one stage)."""
        if not self.unprotected:
            return []
        return [f"warning: {', '.join(self.unprotected)} {'is' if len(self.unprotected) == 1 else 'are'} "
                f"unprotected: their answers are in the course_lib package of a later published stage (the "
                f"package of {self.stages[-1]} holds the answers of every stage before it), so a student still "
                "working on them can read them there. Publish several stages at once only when the earlier ones "
                "are over."]


# ------------------------------------------------------------------------------------------------ arguments


def published_stages(solutions_through: str | None) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """``(released, published)`` notebook names: the stages through ``solutions_through``, and those plus the next."""
    notebooks = list(stages.NOTEBOOKS)
    if solutions_through is None:
        return (), (notebooks[0],)
    try:
        last = notebooks.index(stages.get(solutions_through).notebook)
    except ValueError:
        raise PublishError(f"`--solutions-through` must be a stage, one of {', '.join(notebooks)} (or its key: "
                           f"{', '.join(s.key for s in stages.STAGES)}), got {solutions_through!r}") from None
    return tuple(notebooks[: last + 1]), tuple(notebooks[: last + 2])


def parse_site(url: str) -> Site:
    """The :class:`Site` of ``--url``; a PublishError naming ``--url`` unless it is an http(s) address."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise PublishError(f"`--url` must be an http(s) address (https://github.com/ORG/REPO or a web folder), "
                           f"got {url!r}")
    if parts.query or parts.fragment or re.search(r"[\s\"'\\<>`]", url.strip()):
        raise PublishError(f"`--url` must be a plain address, without a query, a fragment, spaces or quotes, "
                           f"got {url!r}")
    base = url.strip().rstrip("/")
    if parts.hostname.lower() in ("github.com", "www.github.com"):
        segments = [segment for segment in parts.path.split("/") if segment]
        if len(segments) != 2:
            raise PublishError(f"`--url`: a GitHub address must be the repository itself, "
                               f"https://github.com/ORG/REPO, got {url!r}")
        org, repo = segments[0], segments[1].removesuffix(".git")
        if f"https://github.com/{org}/{repo}".lower() == PLACEHOLDER.lower():
            raise PublishError(f"`--url` is the placeholder of the source notebooks ({PLACEHOLDER}): give the "
                               "repository your students will open")
        return Site(f"https://github.com/{org}/{repo}", org, repo)
    return Site(base)


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def read_marker(directory: Path) -> dict:
    """The marker of an earlier publication in ``directory`` (``{}`` for a new or empty folder).

    A PublishError naming ``DIR`` when it is a file, or holds anything (other than ``.git``) without a marker of
    this course.
    """
    if directory.exists() and not directory.is_dir():
        raise PublishError(f"`DIR` must be a folder, and {directory} is a file")
    if not directory.exists():
        return {}
    marker = directory / MARKER
    if marker.is_file():
        try:
            recorded = json.loads(marker.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise PublishError(f"`DIR`: {marker} is not a readable publication marker ({error}); it was not "
                               "written by this command, so nothing was published") from None
        if not (isinstance(recorded, dict) and recorded.get("course") == COURSE_ID
                and isinstance(recorded.get("files"), dict)):
            raise PublishError(f"`DIR`: {marker} is not the marker of a publication of this course "
                               f"({COURSE_ID!r}), so nothing was published")
        return recorded
    foreign = sorted(entry.name for entry in directory.iterdir() if entry.name != ".git")
    if foreign:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise PublishError(f"`DIR` ({directory}) already holds files that are not a publication of this course "
                           f"({shown}) and has no {MARKER}; publish into a new or empty folder (a fresh clone "
                           "holding only .git is fine). Nothing was written.")
    return {}


# ------------------------------------------------------------------------------------------------ contents


def _cell(notebook, grade_id: str):
    for cell in notebook.cells:
        if cell.metadata.get("nbgrader", {}).get("grade_id") == grade_id:
            return cell
    return None


def rewrite_notebook(path: Path, notebook_name: str, site: Site, package_url: str) -> bytes:
    """The student notebook at ``path`` with its set-up cell installing ``package_url`` and its badge opening the
    published copy (left out for a site that is not on GitHub)."""
    notebook = nbformat.read(path, as_version=4)
    setup = _cell(notebook, "setup")
    lines = PACKAGE_URL_LINE.findall(setup.source) if setup is not None else []
    if len(lines) != 1:
        raise PublishError(f"`--solutions`: the set-up cell of {notebook_name}.ipynb must hold exactly one line "
                           f'PACKAGE_URL = ""  # set by "python -m autograder publish": ..., which publish fills '
                           f"with the URL of the stage's package (found {len(lines)})")
    setup.source = PACKAGE_URL_LINE.sub(lambda m: f'{m["indent"]}PACKAGE_URL = "{package_url}"{m["rest"]}',
                                        setup.source)
    title = _cell(notebook, "title") or notebook.cells[0]
    colab = site.colab_url(notebook_name)
    badge = f"[![Open In Colab]({BADGE_IMAGE})]({colab})\n\n" if colab else ""
    if BADGE.search(title.source):
        title.source = BADGE.sub(lambda _: badge, title.source, count=1)
    elif badge and title.cell_type == "markdown":
        title.source = badge + title.source
    return (nbformat.writes(notebook) + "\n").encode()


def student_readme(publication: Publication) -> str:
    """The README of the published folder: how to open, run and submit each notebook."""
    site = publication.site
    current = publication.stages[-1] if publication.stages[-1] not in publication.released else None
    rows = []
    for name in publication.stages:
        entry = stages.get(name)
        link = site.colab_url(name) or site.file_url(f"notebooks/{name}.ipynb")
        label = "Open in Colab" if site.is_github else "download"
        note = " (current assignment)" if name == current else ""
        rows.append(f"| {stage_title(name)}{note} | {entry.title} | [{label}]({link}) |")
    open_how = ("Click the notebook's link in the table above (or the \"Open in Colab\" badge at the top of the "
                "notebook on GitHub): Colab opens your own copy." if site.is_github else
                "Download the notebook with its link in the table above, then in Colab choose "
                "*File → Upload notebook*.")
    return f"""# Diffusion models from scratch: the notebooks

You build diffusion models on MNIST, one notebook per stage. Each notebook runs in Google Colab and installs
its own copy of the course library (`course_lib`) in its first cell.

| stage | what you build | notebook |
| --- | --- | --- |
{chr(10).join(rows)}

## Running a notebook

1. **Open it in Colab.** {open_how} Save a copy in your Drive (*File → Save a copy in Drive*) so your work is kept.
2. **Pick the T4 GPU:** *Runtime → Change runtime type → T4 GPU → Save*. Training cells are slow without it.
3. **Run the cells from the top** (*Runtime → Run all*, or Shift+Enter one at a time). The first cell installs
   `course_lib` for this stage and asks whether to keep training checkpoints on your Google Drive (answer `y`, so
   that a disconnect does not lose your training; training resumes from the newest checkpoint).
4. **Write the cells marked `# YOUR CODE HERE`**: replace `raise NotImplementedError()` with your code. Keep the
   function's name and signature. Then run that cell and the check cell right after it.

## When a check fails

The check cell after each of your cells tests your code at once and prints one line: `✓ ...` when it passes, or
a red `✗` message that says what is wrong and what to look at (for example that you used the variance where
the standard deviation belongs). Then:

- fix your cell, **run it again**, then run the check cell again (the check uses the version you ran last);
- `... is not implemented yet` means the cell still raises `NotImplementedError`: write it, then run it;
- a `NameError` means a cell above was not run: run the notebook from the top (*Runtime → Run before*);
- `AnswerNotIncluded` means your code called the course's own version of something you write in this stage:
  it is not included; use your function from the notebook;
- after a disconnect, run the notebook from the top again: finished training resumes from its checkpoint.

Your grade comes from the same checks on other inputs that you do not see, plus the written questions at the
end, which are graded by hand. Passing the visible check is a good sign, not a guarantee.

## Handing in

*File → Download → Download .ipynb*, then hand in that file as your instructor asks. Do not rename or delete
the check cells.
"""


def stage_title(notebook: str) -> str:
    """``Stage 1 · 01_noising``."""
    return f"Stage {stages.STAGES.index(stages.get(notebook)) + 1} · `{notebook}`"


def wheel_members(data: bytes) -> dict[str, bytes]:
    """The files inside a wheel (or any zip)."""
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


def _self_check(files: dict[str, bytes]) -> None:
    """Refuse to publish when the folder would name the placeholder, hold solution or hidden-test markers, or a
    package would hold the answers of its own stage or a later one (a bug or a course error, never silent)."""
    for name, data in files.items():
        contents = {name: data}
        if name.endswith(".whl"):
            contents = {f"{name}!{member}": value for member, value in wheel_members(data).items()}
            stage = next(s.notebook for s in stages.STAGES if name == f"packages/{wheel_name(s.notebook)}")
            forbidden = {f"{name}!{path}" for path in left_out_files(stage)}
            leaked = sorted(forbidden & set(contents))
            if leaked:
                raise RuntimeError(f"the package of {stage} holds answers or check references it must not: {leaked}")
        for where, value in contents.items():
            if PLACEHOLDER.encode() in value:
                raise PublishError(f"`--solutions`: {where} still names the placeholder {PLACEHOLDER}: the source "
                                   "notebooks may name it only in the Colab badge (a set-up cell installs "
                                   "PACKAGE_URL); nothing was published")
            if where.endswith(".ipynb") and any(marker.encode() in value for marker in MARKERS):
                raise RuntimeError(f"{where} holds solution or hidden-test markers: nothing was published")


def planned_files(published: tuple[str, ...]) -> list[str]:
    """The paths (relative to ``DIR``) a publication of ``published`` writes, besides the marker."""
    return sorted(["README.md", *(f"notebooks/{name}.ipynb" for name in published),
                   *(f"packages/{wheel_name(name)}" for name in published)])


def build_contents(site: Site, published: tuple[str, ...],
                   solutions_dir: Path) -> tuple[dict[str, bytes], dict[str, str]]:
    """``({relative path: content}, {notebook: package URL})`` of a publication (README not included)."""
    files, urls = {}, {}
    with tempfile.TemporaryDirectory(prefix="publish-") as scratch:
        scratch = Path(scratch)
        notebooks = generate_student_notebooks(scratch / "course", out_dir=scratch / "notebooks", stages=published,
                                               solutions_dir=solutions_dir)
        for name, notebook in zip(published, notebooks):
            wheel = build_wheel(name, scratch / "packages", solutions_dir)
            relative = f"packages/{wheel.name}"
            urls[name] = site.file_url(relative)
            files[relative] = wheel.read_bytes()
            files[f"notebooks/{name}.ipynb"] = rewrite_notebook(notebook, name, site, urls[name])
    return files, urls


# ------------------------------------------------------------------------------------------------ publish


def publish(directory: Path, url: str, solutions_through: str | None = None,
            solutions_dir: Path = SOLUTIONS_DIR) -> Publication:
    """Publish the released stages and the current assignment into ``directory`` (see the module docstring).

    Raises:
        PublishError: an unknown stage, a URL that is not http(s), a folder that holds something that is not a
            publication of this course, or an earlier publication's folder where a file this command would
            write was not written by it. Nothing is written then.
    """
    released, published = published_stages(solutions_through)
    site = parse_site(url)
    directory = Path(directory).expanduser().resolve()
    previous = read_marker(directory)
    missing = [name for name in published if not (Path(solutions_dir) / f"{name}.ipynb").is_file()]
    if missing:
        raise PublishError(f"`--solutions`: {solutions_dir} has no source notebook "
                           f"{', '.join(name + '.ipynb' for name in missing)}")

    recorded: dict[str, str] = previous.get("files", {})
    planned = planned_files(published)
    existing = {name for name in planned if (directory / name).exists() or (directory / name).is_symlink()}
    foreign = sorted(name for name in existing if name not in recorded or not (directory / name).is_file())
    if foreign:
        raise PublishError(f"`DIR` ({directory}) holds {', '.join(foreign)}, which an earlier publish did not "
                           "write: move it away first. Nothing was written.")

    publication = Publication(directory, site, published, released)
    files, publication.package_urls = build_contents(site, published, Path(solutions_dir))
    files["README.md"] = student_readme(publication).encode()
    if set(files) != set(planned):
        raise RuntimeError(f"publish wrote {sorted(files)}, planned {planned}")
    _self_check(files)
    publication.replaced = sorted(existing)
    publication.edited = sorted(name for name in existing if _digest((directory / name).read_bytes()) != recorded[name])
    publication.stale = sorted(name for name in recorded if name not in files and (directory / name).is_file())
    publication.written = sorted(files)
    publication.unprotected = published[:-1]

    kept = {name: digest for name, digest in recorded.items() if name in publication.stale}
    marker = {"course": COURSE_ID, "format": 1, "url": site.url, "solutions_through": released[-1] if released
              else None, "published": list(published),
              "files": dict(sorted({**kept, **{name: _digest(data) for name, data in files.items()}}.items()))}
    directory.mkdir(parents=True, exist_ok=True)
    # The marker first: if writing stops half-way, the next publish still knows these files are its own.
    atomic_write_bytes(directory / MARKER, (json.dumps(marker, indent=2) + "\n").encode())
    for name, data in files.items():
        atomic_write_bytes(directory / name, data)
    return publication

