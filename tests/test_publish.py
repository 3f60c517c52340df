"""``python -m autograder publish``: what students are given holds no answer they should not have, installs with
pip, runs, and bad arguments are refused without touching anything.

One publication of stages 01-03 (``--solutions-through 02_denoiser``) is made once, with the real command line,
and read by most tests. The stage-1 wheel is installed with pip into a fresh virtual environment that borrows the
other dependencies from this one through a ``.pth`` file, and the published notebook is run there with
``jupyter nbconvert``, as a student's runtime would run it.
"""

from __future__ import annotations

import ast
import base64
import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import nbformat
import pytest

from autograder.cli import main as cli_main
from autograder.course import SOLUTIONS_DIR
from autograder.publish.folder import MARKER, PLACEHOLDER
from course_lib.stages import get
from course_lib.stages import NOTEBOOKS, STAGES

REPO = Path(__file__).resolve().parent.parent
URL = "https://github.com/example-org/diffusion-notebooks"
SOLUTIONS_THROUGH = "02_denoiser"
PUBLISHED = ("01_noising", "02_denoiser", "03_ddpm")
RELEASED = ("01_noising", "02_denoiser")
PACKAGE_URL_LINE = 'PACKAGE_URL = ""  # set by "python -m autograder publish": this stage\'s course_lib package'
MIN_LINE = 20  # characters of a meaningful line


def wheel_file(stage: str) -> str:
    return f"course_lib-0.2.0+stage{NOTEBOOKS.index(stage) + 1}-py3-none-any.whl"


# ------------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def solutions() -> Path:
    """The source notebooks, whose set-up cells hold the line that publish fills with the package's URL."""
    for path in sorted(SOLUTIONS_DIR.glob("*.ipynb")):
        setup = nbformat.read(path, as_version=4).cells[1].source
        assert PACKAGE_URL_LINE in setup, f"{path.name}: the set-up cell has no line {PACKAGE_URL_LINE!r}"
    return SOLUTIONS_DIR


def publish_command(directory: Path, solutions: Path, *extra: str) -> list[str]:
    return ["publish", str(directory), "--url", URL, "--solutions", str(solutions), *extra]


@pytest.fixture(scope="module")
def published(tmp_path_factory, solutions, mnist_root) -> tuple[Path, subprocess.CompletedProcess]:
    """Stages 01-03 published with the real command line; the folder and the finished process."""
    directory = tmp_path_factory.mktemp("publication") / "site"
    result = subprocess.run(
        [sys.executable, "-m", "autograder", *publish_command(directory, solutions, "--solutions-through",
                                                              SOLUTIONS_THROUGH)],
        cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    return directory, result


def normalised(text: str) -> str:
    return " ".join(text.split())


def texts_of(directory: Path) -> dict[str, str]:
    """Every file under ``directory`` as text, every file inside every wheel too (``wheel!member``); a
    notebook also as its cells' sources and outputs (its JSON escapes quotes and backslashes)."""
    texts = {}
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        name = path.relative_to(directory).as_posix()
        data = path.read_bytes()
        texts[name] = data.decode("utf-8", errors="replace")
        if path.suffix == ".whl":
            with zipfile.ZipFile(path) as archive:
                for member in archive.namelist():
                    texts[f"{name}!{member}"] = archive.read(member).decode("utf-8", errors="replace")
        if path.suffix == ".ipynb":
            notebook = nbformat.reads(texts[name], as_version=4)
            texts[f"{name} (cells)"] = "\n".join([cell.source for cell in notebook.cells] + [
                json.dumps(cell.get("outputs", []), ensure_ascii=False) for cell in notebook.cells])
    return texts


def meaningful_lines(source: str) -> set[str]:
    """The lines of ``source`` worth looking for: whitespace normalised, no comments, at least 20 characters."""
    lines = {normalised(line) for line in source.splitlines()}
    return {line for line in lines if len(line) >= MIN_LINE and not line.startswith("#")}


def regions(source: str, begin: str, end: str) -> str:
    """The text between each ``begin`` and ``end`` marker line of ``source``."""
    inside, kept = False, []
    for line in source.splitlines():
        if begin in line:
            inside = True
        elif end in line:
            inside = False
        elif inside:
            kept.append(line)
    return "\n".join(kept)


def solution_lines(stage: str) -> set[str]:
    """Meaningful lines of the solution regions and written model answers of ``stage``'s source notebook."""
    notebook = nbformat.read(SOLUTIONS_DIR / f"{stage}.ipynb", as_version=4)
    lines = set()
    for cell in notebook.cells:
        if not cell.metadata.get("nbgrader", {}).get("solution"):
            continue
        text = cell.source if cell.cell_type == "markdown" else regions(cell.source, "BEGIN SOLUTION", "END SOLUTION")
        lines |= meaningful_lines(text)
    return lines


def given_text() -> str:
    """What students of the published stages are given on purpose, normalised: the published notebooks' own cells
    (outside solution regions and hidden tests), the solutions and answers of the released stages, and the given
    modules of course_lib (not the stages' answers and checks' references, which packages leave out, and not the
    checks, so that a solution line in a shipped check still counts as a leak)."""
    parts = []
    for stage in PUBLISHED:
        for cell in nbformat.read(SOLUTIONS_DIR / f"{stage}.ipynb", as_version=4).cells:
            visible = cell.source.split("### BEGIN HIDDEN TESTS")[0]
            if cell.metadata.get("nbgrader", {}).get("solution"):
                visible = "" if cell.cell_type == "markdown" else "\n".join(
                    part.split("### END SOLUTION")[-1] for part in visible.split("### BEGIN SOLUTION"))
            parts.append(visible)
    for stage in RELEASED:
        parts += sorted(solution_lines(stage))
        parts.append((REPO / "course_lib" / "stages" / STAGES[NOTEBOOKS.index(stage)].key / "answers.py").read_text())
    for path in sorted((REPO / "course_lib").rglob("*.py")):
        if "checks" not in path.relative_to(REPO / "course_lib").parts and \
                path.name not in ("answers.py", "reference.py", "checks.py"):
            parts.append(path.read_text())
    return normalised("\n".join(parts))


def hidden_test_lines() -> set[str]:
    lines = set()
    for stage in NOTEBOOKS:
        for cell in nbformat.read(SOLUTIONS_DIR / f"{stage}.ipynb", as_version=4).cells:
            lines |= meaningful_lines(regions(cell.source, "BEGIN HIDDEN TESTS", "END HIDDEN TESTS"))
    return lines


def answer_definitions(key: str):
    """``(name, kind, normalised body without docstring)`` of every function, class and method of
    ``course_lib/stages/<key>/answers.py``."""
    source = (REPO / "course_lib" / "stages" / key / "answers.py").read_text()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            body = node.body[1:] if ast.get_docstring(node) is not None and len(node.body) > 1 else node.body
            text = "\n".join(ast.get_source_segment(source, statement, padded=True) for statement in body)
            yield node.name, "class" if isinstance(node, ast.ClassDef) else "def", normalised(text)


def given_definitions() -> set[str]:
    """Names of the functions and classes defined in the given code (course_lib without its stages' answers and
    checks' references)."""
    names = set()
    for path in (REPO / "course_lib").rglob("*.py"):
        if path.name not in ("answers.py", "reference.py"):
            names |= {node.name for node in ast.walk(ast.parse(path.read_text()))
                      if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))}
    return names


# ------------------------------------------------------------------------------------------------ the publication


def test_publication_layout_urls_and_warning(published):
    directory, result = published
    files = sorted(path.relative_to(directory).as_posix() for path in directory.rglob("*") if path.is_file())
    assert files == sorted([MARKER, "README.md", *(f"notebooks/{s}.ipynb" for s in PUBLISHED),
                            *(f"packages/{wheel_file(s)}" for s in PUBLISHED)])
    assert "warning: 01_noising, 02_denoiser are unprotected" in result.stderr, result.stderr
    assert "03_ddpm is unprotected" not in result.stderr and "03_ddpm are" not in result.stderr
    readme = (directory / "README.md").read_text()
    for stage in PUBLISHED:
        notebook = nbformat.read(directory / "notebooks" / f"{stage}.ipynb", as_version=4)
        wheel_url = f"{URL}/raw/main/packages/{wheel_file(stage).replace('+', '%2B')}"
        assert f'PACKAGE_URL = "{wheel_url}"' in notebook.cells[1].source
        colab = f"https://colab.research.google.com/github/{URL.removeprefix('https://github.com/')}/blob/main/" \
                f"notebooks/{stage}.ipynb"
        assert f"[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]({colab})" in \
            notebook.cells[0].source
        assert colab in readme
    assert "T4" in readme and "check" in readme
    marker = json.loads((directory / MARKER).read_text())
    assert marker["published"] == list(PUBLISHED) and marker["solutions_through"] == SOLUTIONS_THROUGH


def test_wheels_are_valid_and_hold_the_answers_of_earlier_stages_only(published):
    directory, _ = published
    for stage in PUBLISHED:
        number = NOTEBOOKS.index(stage) + 1
        with zipfile.ZipFile(directory / "packages" / wheel_file(stage)) as archive:
            names = set(archive.namelist())
            dist_info = f"course_lib-0.2.0+stage{number}.dist-info"
            metadata = archive.read(f"{dist_info}/METADATA").decode()
            assert f"Version: 0.2.0+stage{number}" in metadata and "Requires-Dist: torch>=2.1" in metadata
            assert "Root-Is-Purelib: true" in archive.read(f"{dist_info}/WHEEL").decode()
            recorded = {}
            for line in archive.read(f"{dist_info}/RECORD").decode().splitlines():
                path, digest, size = line.rsplit(",", 2)
                recorded[path] = (digest, size)
            assert set(recorded) == names
            for path, (digest, size) in recorded.items():
                if path != f"{dist_info}/RECORD":
                    data = archive.read(path)
                    expected = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
                    assert (digest, size) == (f"sha256={expected}", str(len(data))), path
        assert all(name.startswith(("course_lib/", dist_info)) for name in names), "only course_lib in a package"
        assert "course_lib/checks/fixtures.pt" in names
        library = {path.relative_to(REPO).as_posix() for path in (REPO / "course_lib").rglob("*.py")}
        lacking = library - names
        assert lacking == ({f"course_lib/stages/{entry.key}/answers.py" for entry in STAGES[number - 1:]}
                           | {f"course_lib/stages/{entry.key}/reference.py" for entry in STAGES}), stage


def test_nothing_published_holds_an_unreleased_solution_a_hidden_test_or_a_later_answer(published):
    directory, _ = published
    texts = {name: normalised(text) for name, text in texts_of(directory).items()}
    assert not any(PLACEHOLDER in text for text in texts.values()), "the placeholder address is left somewhere"
    assert not any(name.split("/")[0] in ("solutions", "autograder") or "!autograder/" in name for name in texts)
    for marker in ("BEGIN SOLUTION", "BEGIN HIDDEN TESTS"):
        assert not [name for name, text in texts.items() if marker in text], marker

    leaks = []
    given = given_text()
    for stage in (s for s in NOTEBOOKS if s not in RELEASED):
        secret = {line for line in solution_lines(stage) if line not in given}
        assert len(secret) >= 10, f"{stage}: too few solution lines to look for ({len(secret)})"
        leaks += [(stage, line, name) for line in secret for name, text in texts.items() if line in text]
    hidden = hidden_test_lines()
    assert len(hidden) >= 10, f"too few hidden test lines to look for ({len(hidden)})"
    leaks += [("hidden test", line, name) for line in hidden for name, text in texts.items() if line in text]
    defined = given_definitions()
    for stage in PUBLISHED:
        wheel = f"packages/{wheel_file(stage)}!"
        members = {name: text for name, text in texts.items() if name.startswith(wheel)}
        for entry in STAGES[NOTEBOOKS.index(stage):]:
            for name, kind, body in answer_definitions(entry.key):
                header = f"{kind} {name}("
                for member, text in members.items():
                    if body and body in text:
                        leaks.append((f"answers/{entry.key}.py", f"the body of {name}", member))
                    if name not in defined and header in text:
                        leaks.append((f"answers/{entry.key}.py", header, member))
    assert not leaks, "published files hold what students must not see:\n" + "\n".join(
        f"  {what}: {line[:100]!r} in {where}" for what, line, where in leaks[:20])


def test_the_checks_ship_whole_and_without_their_reference_side(published):
    """A package never runs a check's reference (its fixtures hold the visible cases), and a reference spells out
    answers (mutants, a sampler with the wrong sign): no package holds a stage's reference.py, and every checks.py
    it holds is the repository's file, byte for byte (nothing is rewritten)."""
    directory, _ = published
    for stage in PUBLISHED:
        with zipfile.ZipFile(directory / "packages" / wheel_file(stage)) as archive:
            assert not [name for name in archive.namelist() if name.endswith("/reference.py")], stage
            for entry in STAGES:
                path = f"course_lib/stages/{entry.key}/checks.py"
                assert archive.read(path) == (REPO / path).read_bytes(), path


PACKAGE_RUN = """
import importlib, json, pathlib, pkgutil, sys
root, calls, cells = pathlib.Path(sys.argv[1]), json.loads(sys.argv[2]), json.loads(sys.argv[3])
import course_lib
assert pathlib.Path(course_lib.__file__).is_relative_to(root), course_lib.__file__
for module in pkgutil.walk_packages(course_lib.__path__, "course_lib."):
    if module.name != "course_lib.__main__":
        importlib.import_module(module.name)
solution = {}
for cell in cells:  # the set-up, imports and solution cells of the source notebook, as a student runs them
    exec(compile(cell, "<notebook cell>", "exec"), solution)
from course_lib.checks.protocol import CHECKS
for name, students, case in calls:
    CHECKS[name].run(tuple(solution[student] for student in students), **case)
"""


def test_every_package_imports_and_its_visible_checks_pass_on_the_solution(published, solutions, tmp_path,
                                                                          mnist_root):
    """Each published wheel, unpacked alone on the path: every module imports, and the notebook's visible check
    calls pass on the solution code of the source notebook, from the stored fixtures alone."""
    from autograder.publish.packages import visible_calls

    directory, _ = published
    runs = {}
    for stage in PUBLISHED:
        root = tmp_path / stage
        with zipfile.ZipFile(directory / "packages" / wheel_file(stage)) as archive:
            archive.extractall(root)
        calls = [(call.check, call.students, call.case) for call in visible_calls(stage)]
        cells = [cell.source for cell in nbformat.read(solutions / f"{stage}.ipynb", as_version=4).cells
                 if cell.cell_type == "code" and (cell.metadata["nbgrader"]["solution"]
                                                  or cell.metadata["nbgrader"]["grade_id"] in ("setup", "imports"))]
        env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
        runs[stage] = subprocess.Popen([sys.executable, "-c", PACKAGE_RUN, str(root), json.dumps(calls),
                                        json.dumps(cells)], cwd=tmp_path, env=env, text=True,
                                       stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    for stage, process in runs.items():
        out, err = process.communicate(timeout=300)
        assert process.returncode == 0, f"{stage}:\n{out}\n{err}"
        assert out.count("✓") == len(visible_calls(stage)), out


def test_a_module_level_import_of_what_a_package_leaves_out_fails_the_build():
    from autograder.publish.packages import check_imports

    left_out = {"course_lib/stages/ddpm/reference.py", "course_lib/stages/ddpm/answers.py"}
    checks = "course_lib/stages/ddpm/checks.py"
    check_imports({checks: b"def f():\n    from .reference import unet_mutants\n"}, left_out)
    for source in (b"from .reference import unet_mutants\n", b"from . import answers\n",
                   b"import course_lib.stages.ddpm.answers\n",
                   b"try:\n    from .missing import x\nexcept ImportError:\n    x = 1\n"):
        with pytest.raises(ValueError, match="course_lib/stages/ddpm/checks.py imports"):
            check_imports({checks: source}, left_out)


# ------------------------------------------------------------------------------------------------ a student's runtime


def run(command: list, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run([str(part) for part in command], capture_output=True, text=True, timeout=600, **kwargs)
    assert result.returncode == 0, f"{command}:\n{result.stdout}\n{result.stderr}"
    return result


@pytest.fixture(scope="module")
def stage1_venv(tmp_path_factory, published) -> Path:
    """A fresh virtual environment with the stage-1 wheel installed by pip; torch, nbconvert, ipykernel and the
    rest come from this environment's site-packages through a .pth file (whose own .pth files, the editable
    install's among them, are not processed there)."""
    directory, _ = published
    venv = tmp_path_factory.mktemp("student") / "venv"
    run([getattr(sys, "_base_executable", sys.executable), "-m", "venv", venv])
    python = venv / "bin" / "python"
    run([python, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index",
         directory / "packages" / wheel_file("01_noising")])
    site_packages = run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip()
    (Path(site_packages) / "course_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    # pip installs a package's launchers; nbconvert comes through the .pth, so write the one jupyter looks for
    launcher = venv / "bin" / "jupyter-nbconvert"
    launcher.write_text(f"#!{python}\nimport sys\nfrom nbconvert.nbconvertapp import main\nsys.exit(main())\n")
    launcher.chmod(launcher.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return venv


def student_env(venv: Path, mnist_root: Path) -> dict:
    env = {key: value for key, value in os.environ.items()
           if key not in ("PYTHONPATH", "JUPYTER_PATH", "NBGRADER_EXECUTION", "VIRTUAL_ENV", "PYTHONHOME")}
    return {**env, "PATH": os.pathsep.join([str(venv / "bin"), env.get("PATH", "")]), "COURSE_MODE": "quick",
            "COURSE_DATA_DIR": str(mnist_root), "OMP_NUM_THREADS": "1",
            "MPLBACKEND": "module://matplotlib_inline.backend_inline"}


def test_the_stage1_wheel_installs_with_pip_and_course_lib_comes_from_it(stage1_venv, mnist_root, tmp_path):
    found = run([stage1_venv / "bin" / "python", "-c",
                 "import course_lib, course_lib.stages.noising.checks, torch, nbconvert; print(course_lib.__file__)"],
                cwd=tmp_path, env=student_env(stage1_venv, mnist_root)).stdout.strip()
    package = Path(found).parent
    assert package.is_relative_to(stage1_venv), f"course_lib was imported from {found}"
    assert (package / "checks" / "fixtures.pt").is_file() and (package / "weights" / "mnist_classifier.pt").is_file()
    assert not (package / "stages" / "noising" / "answers.py").exists()
    assert not (package / "stages" / "noising" / "reference.py").exists()


def solved(notebook, wrong_add_noise: bool):
    """The published notebook with the solution code of ``solutions/01_noising.ipynb`` in its TODO cells, and a
    last cell that prints where course_lib came from."""
    solution = {cell.metadata["nbgrader"]["grade_id"]: cell.source
                for cell in nbformat.read(SOLUTIONS_DIR / "01_noising.ipynb", as_version=4).cells
                if cell.cell_type == "code" and cell.metadata.get("nbgrader", {}).get("solution")}
    for cell in notebook.cells:
        grade_id = cell.metadata.get("nbgrader", {}).get("grade_id")
        if cell.cell_type == "code" and grade_id in solution:
            cell.source = "\n".join(line for line in solution[grade_id].splitlines()
                                    if line.strip() not in ("### BEGIN SOLUTION", "### END SOLUTION"))
            if wrong_add_noise and grade_id == "add_noise":
                assert "return x + sigma * eps" in cell.source
                cell.source = cell.source.replace("return x + sigma * eps", "return x + sigma**2 * eps")
    notebook.cells.append(nbformat.v4.new_code_cell('import course_lib\nprint("course_lib from", course_lib.__file__)'))
    return notebook


def test_the_published_notebook_runs_with_its_package(published, stage1_venv, mnist_root, tmp_path):
    """With the solution code every check passes; with sigma**2 in add_noise its check fails with the hint for
    that mistake, and the rest of the notebook runs as a student's would (only NotImplementedError or
    CheckFailed, never another error; the kernel reaches the last cell)."""
    directory, _ = published
    workdir = tmp_path / "colab"
    workdir.mkdir()
    published_notebook = directory / "notebooks" / "01_noising.ipynb"
    paths = []
    for name, wrong in (("right", False), ("wrong", True)):
        path = workdir / f"01_noising_{name}.ipynb"
        nbformat.write(solved(nbformat.read(published_notebook, as_version=4), wrong), path)
        paths.append(path)
    run([stage1_venv / "bin" / "python", "-m", "jupyter", "nbconvert", "--to", "notebook", "--execute",
         "--allow-errors", "--ExecutePreprocessor.timeout=300", "--output-dir", workdir / "executed", *paths],
        cwd=workdir, env=student_env(stage1_venv, mnist_root))

    for name in ("right", "wrong"):
        notebook = nbformat.read(workdir / "executed" / f"01_noising_{name}.ipynb", as_version=4)
        code = [cell for cell in notebook.cells if cell.cell_type == "code"]
        assert all(cell.execution_count is not None for cell in code), "the kernel stopped before the last cell"
        assert "course_lib from " + str(stage1_venv) in "".join(o.get("text", "") for o in code[-1].outputs)
        errors = {cell.metadata.get("nbgrader", {}).get("grade_id"): output for cell in code
                  for output in cell.outputs if output.output_type == "error"}
        assert all(error.ename in ("NotImplementedError", "CheckFailed") for error in errors.values()), errors
        tests = [cell for cell in code if cell.metadata.get("nbgrader", {}).get("grade")]
        assert len(tests) == len(get("01_noising").todos), "one test cell per TODO of stage 1"
        for cell in tests:
            grade_id = cell.metadata["nbgrader"]["grade_id"]
            printed = "".join(output.get("text", "") for output in cell.outputs if output.output_type == "stream")
            if name == "wrong" and grade_id == "test_add_noise":
                assert errors[grade_id].ename == "CheckFailed"
                assert "sigma**2 (the variance)" in errors[grade_id].evalue, errors[grade_id].evalue
            else:
                assert grade_id not in errors and printed.startswith("✓"), (name, grade_id, errors.get(grade_id))
        assert set(errors) == ({"test_add_noise"} if name == "wrong" else set()), (name, errors)


# ------------------------------------------------------------------------------------------------ bad input


def snapshot(directory: Path) -> dict[str, tuple[bytes, int]]:
    return {path.relative_to(directory).as_posix(): (path.read_bytes(), path.stat().st_mtime_ns)
            for path in directory.rglob("*") if path.is_file()}


@pytest.mark.parametrize("arguments, named", [
    (["--solutions-through", "07_gan"], "`--solutions-through`"),
    (["--url", "ftp://example.org/course"], "`--url`"),
    (["--url", "github.com/example-org/diffusion-notebooks"], "`--url`"),
    (["--url", PLACEHOLDER], "`--url`"),
    (["--url", "https://github.com/example-org/diffusion-notebooks/tree/main"], "`--url`"),
])
def test_bad_arguments_are_refused_by_name_and_nothing_is_written(arguments, named, tmp_path, capsys):
    directory = tmp_path / "site"
    assert cli_main(["publish", str(directory), "--url", URL, *arguments]) == 2
    error = capsys.readouterr().err
    assert named in error and "error" in error, error
    assert not directory.exists()


def test_a_web_folder_that_is_not_github_gets_plain_urls_and_no_badge(solutions, tmp_path):
    from autograder.publish.folder import parse_site, read_marker, rewrite_notebook

    site = parse_site("https://courses.example.org/diffusion/")
    url = site.file_url(f"packages/{wheel_file('01_noising')}")
    assert url == f"https://courses.example.org/diffusion/packages/{wheel_file('01_noising').replace('+', '%2B')}"
    notebook = nbformat.reads(rewrite_notebook(solutions / "01_noising.ipynb", "01_noising", site, url).decode(), 4)
    assert f'PACKAGE_URL = "{url}"' in notebook.cells[1].source
    assert "colab.research.google.com" not in notebook.cells[0].source
    assert notebook.cells[0].source.startswith("# Stage 1")
    (tmp_path / "clone" / ".git").mkdir(parents=True)
    assert read_marker(tmp_path / "clone") == {}, "a fresh clone holding only .git is an empty folder"


def test_a_folder_that_is_not_a_publication_is_refused_and_left_as_it_was(tmp_path, capsys):
    directory = tmp_path / "site"
    (directory / "notebooks").mkdir(parents=True)
    (directory / "notes.txt").write_text("mine")
    (directory / "notebooks" / "01_noising.ipynb").write_text("{}")
    before = snapshot(directory)
    assert cli_main(["publish", str(directory), "--url", URL]) == 2
    assert "`DIR`" in capsys.readouterr().err
    assert snapshot(directory) == before and not (directory / MARKER).exists()

    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    assert cli_main(["publish", str(a_file), "--url", URL]) == 2
    assert "`DIR`" in capsys.readouterr().err and a_file.read_text() == "x"


def test_a_file_an_earlier_publish_did_not_write_is_never_overwritten(published, solutions, tmp_path, capsys):
    directory = tmp_path / "site"
    shutil.copytree(published[0], directory)
    (directory / "notebooks" / "04_cfg.ipynb").write_text("the instructor's own")
    before = snapshot(directory)
    assert cli_main(publish_command(directory, solutions, "--solutions-through", "03_ddpm")) == 2
    error = capsys.readouterr().err
    assert "`DIR`" in error and "notebooks/04_cfg.ipynb" in error, error
    assert snapshot(directory) == before


def test_publishing_again_replaces_its_own_files_lists_them_and_keeps_stale_wheels(published, solutions, tmp_path,
                                                                                    capsys):
    directory = tmp_path / "site"
    shutil.copytree(published[0], directory)
    (directory / "README.md").write_text("edited by hand")
    (directory / "LICENSE").write_text("the instructor's own")
    assert cli_main(publish_command(directory, solutions)) == 0  # only stage 1 now
    out = capsys.readouterr().out
    replaced, stale = out.split("Replaced")[1].split("Left in place")
    assert "README.md  (edited by hand since then)" in replaced
    assert "notebooks/01_noising.ipynb" in replaced and f"packages/{wheel_file('01_noising')}" in replaced
    for stage in ("02_denoiser", "03_ddpm"):
        assert f"packages/{wheel_file(stage)}" in stale and f"notebooks/{stage}.ipynb" in stale
        assert (directory / "packages" / wheel_file(stage)).is_file(), "a stale wheel is reported, not deleted"
    assert (directory / "LICENSE").read_text() == "the instructor's own"
    assert (directory / "README.md").read_text() != "edited by hand"
    marker = json.loads((directory / MARKER).read_text())
    assert marker["published"] == ["01_noising"] and f"packages/{wheel_file('03_ddpm')}" in marker["files"]
