"""Student packages: one ``course_lib`` wheel per stage, built from this source tree with no network.

The package of stage k (``course_lib-<version>+stage<k>-py3-none-any.whl``) holds:

- the given code of ``course_lib`` and the answers of the stages before k: the library view of stage k
  (:func:`autograder.library_view.write_library_view`), which leaves out ``answers/<key>.py`` of k and every
  later stage, so nothing in it answers a TODO of stage k or later;
- ``course_lib/checks/fixtures.pt``: the inputs and expected values of the *visible* check calls of stage k's
  test cells (the part of each test cell before ``### BEGIN HIDDEN TESTS``), computed here with
  :attr:`Check.reference <course_lib.checks.protocol.Check>` from the full library, keyed by
  :func:`~course_lib.checks.protocol.case_key`. The checks of a student package read them
  (:meth:`Check.expectations <course_lib.checks.protocol.Check.expectations>`); the hidden cases are not there.

The checks are shipped without their reference side, which a package never runs (its fixtures hold what the
reference computes for the notebook's cases) and which spells out answers (a sampler loop run with the wrong sign,
a UNet's forward with a mistake switched on): it is each stage's ``reference.py``, a whole file the view leaves out
(:func:`autograder.library_view.left_out_files`); nothing is rewritten. A module-level import of anything a
package leaves out fails the build (:func:`check_imports`).

It holds nothing of ``autograder/``, of the solution notebooks or of the hidden tests. The wheel is written by
hand (a zip with ``course_lib/...``, ``METADATA`` from ``pyproject.toml``'s ``[project]``, ``WHEEL`` and a
``RECORD`` of sha256 digests), its entries sorted and stamped with one fixed date.
"""

from __future__ import annotations

import ast
import base64
import hashlib
import io
import tempfile
import tomllib
import zipfile
from pathlib import Path

import nbformat
import torch

from course_lib import stages
from course_lib.checks.protocol import CHECKS, FIXTURES_FILE, case_key, compact, one_thread

from ..course import REPO_ROOT, SOLUTIONS_DIR
from ..library_view import LIBRARY_DIR, left_out_files, write_library_view
from ..execute.preprocessors import is_test_cell
from ..execute.verdicts import check_calls

PYPROJECT = REPO_ROOT / "pyproject.toml"
HIDDEN_TESTS = "### BEGIN HIDDEN TESTS"
FIXTURES_PATH = FIXTURES_FILE.relative_to(LIBRARY_DIR.parent).as_posix()  # course_lib/checks/fixtures.pt
_ZIP_TIME = (2000, 1, 1, 0, 0, 0)  # every entry's timestamp (the sources' own would only add noise)


def stage_number(stage: str) -> int:
    """1 for ``01_noising`` (or ``noising``), 2 for the next stage, ..."""
    return stages.STAGES.index(stages.get(stage)) + 1


def project_metadata(pyproject: Path = PYPROJECT) -> dict:
    """The ``[project]`` table of ``pyproject.toml``."""
    with open(pyproject, "rb") as file:
        return tomllib.load(file)["project"]


def wheel_version(stage: str, pyproject: Path = PYPROJECT) -> str:
    """``0.2.0+stage1``: the project's version with the stage as a local version label."""
    return f"{project_metadata(pyproject)['version']}+stage{stage_number(stage)}"


def wheel_name(stage: str, pyproject: Path = PYPROJECT) -> str:
    """``course_lib-0.2.0+stage1-py3-none-any.whl``."""
    return f"{project_metadata(pyproject)['name']}-{wheel_version(stage, pyproject)}-py3-none-any.whl"


def visible_calls(stage: str, solutions_dir: Path = SOLUTIONS_DIR) -> list:
    """The check calls of the visible part of every test cell of ``stage``'s source notebook, in order.

    Raises ValueError naming the cell when a visible line is not a call of a three-part check
    (:mod:`course_lib.checks.protocol`): its student package could not check it without the answers.
    """
    entry = stages.get(stage)
    notebook = nbformat.read(Path(solutions_dir) / f"{entry.notebook}.ipynb", as_version=4)
    calls = []
    for cell in notebook.cells:
        if not is_test_cell(cell):
            continue
        cell_name = f"{entry.notebook}: test cell {cell.metadata['nbgrader'].get('grade_id')!r}"
        try:
            calls += check_calls(cell.source.split(HIDDEN_TESTS)[0], cell_name)
        except ValueError as error:
            raise ValueError(f"cannot build the student package of {entry.notebook}: {error} (a student package "
                             "needs every visible check to be a three-part check of "
                             "course_lib.checks.protocol, whose expected values it stores)") from None
    return calls


def build_fixtures(stage: str, solutions_dir: Path = SOLUTIONS_DIR) -> dict:
    """``{case_key(check, case): {"inputs": ..., "expected": ...}}`` of the visible check calls of ``stage``,
    computed with each check's reference (the full library, answers included)."""
    fixtures = {}
    for call in visible_calls(stage, solutions_dir):
        check = CHECKS[call.check]
        case = check.case(**call.case)
        key = case_key(check.name, case)
        if key not in fixtures:
            with one_thread():
                inputs, expected = compact(check.reference(**case))
            fixtures[key] = {"inputs": inputs, "expected": expected}
    return fixtures


def fixtures_bytes(fixtures: dict) -> bytes:
    """``fixtures`` as ``torch.save`` writes them, after checking that ``torch.load(weights_only=True)`` (what
    the checks use) reads them back."""
    buffer = io.BytesIO()
    torch.save(fixtures, buffer)
    data = buffer.getvalue()
    try:
        torch.load(io.BytesIO(data), weights_only=True)
    except Exception as error:  # noqa: BLE001 - any failure means the package's checks could not read them
        raise ValueError(f"the fixtures hold something torch.load(weights_only=True) refuses: {error}") from None
    return data


def _record_hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def _metadata(stage: str, project: dict, version: str) -> str:
    entry = stages.get(stage)
    lines = ["Metadata-Version: 2.1", f"Name: {project['name']}", f"Version: {version}",
             f"Summary: course_lib for stage {stage_number(stage)} ({entry.notebook}) of the diffusion course: the "
             "given code and the answers of the earlier stages"]
    if "requires-python" in project:
        lines.append(f"Requires-Python: {project['requires-python']}")
    lines += [f"Requires-Dist: {requirement}" for requirement in project.get("dependencies", [])]
    return "\n".join(lines) + "\n"


def _wheel_file() -> str:
    return "Wheel-Version: 1.0\nGenerator: autograder.publish.packages\nRoot-Is-Purelib: true\nTag: py3-none-any\n"


def _write_entry(archive: zipfile.ZipFile, name: str, data: bytes) -> None:
    info = zipfile.ZipInfo(name, date_time=_ZIP_TIME)
    info.compress_type = zipfile.ZIP_DEFLATED
    info.external_attr = 0o644 << 16
    archive.writestr(info, data)


def _module_of(path: str) -> str:
    """``course_lib.stages.ddpm.checks`` for ``course_lib/stages/ddpm/checks.py`` (the package for an
    ``__init__.py``)."""
    return path.removesuffix(".py").removesuffix("/__init__").replace("/", ".")


def _module_level_imports(tree: ast.AST):
    """The Import and ImportFrom nodes that run when the module is imported (not those inside functions)."""
    for child in ast.iter_child_nodes(tree):
        if isinstance(child, (ast.Import, ast.ImportFrom)):
            yield child
        elif not isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            yield from _module_level_imports(child)


def check_imports(files: dict[str, bytes], left_out_paths: set[str]) -> None:
    """Fail (ValueError naming both modules) when a module of the package imports, when it is imported, a module
    of ``course_lib`` that the package leaves out (``left_out_paths``) or does not hold."""
    modules = {_module_of(path) for path in files if path.endswith(".py")}
    left_out_modules = {_module_of(path) for path in left_out_paths}
    for path, data in files.items():
        if not path.endswith(".py"):
            continue
        module = _module_of(path)
        package = module if path.endswith("__init__.py") else module.rpartition(".")[0]
        for node in _module_level_imports(ast.parse(data)):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
                needed = targets
            else:
                base = node.module or ""
                if node.level:
                    parts = package.split(".")
                    base = ".".join(parts[:len(parts) - node.level + 1] + ([node.module] if node.module else []))
                needed = [base]
                targets = [base, *(f"{base}.{alias.name}" for alias in node.names)]
            for target in targets:
                missing = target in needed and target.split(".")[0] == "course_lib" and target not in modules
                if target in left_out_modules or missing:
                    raise ValueError(f"{path} imports {target} when it is imported, and this student package leaves "
                                     "it out (an answer, or code only the checks' reference side runs): import it "
                                     "inside the function that needs it")


def package_files(stage: str, solutions_dir: Path = SOLUTIONS_DIR) -> dict[str, bytes]:
    """``{path in the wheel: content}`` of the ``course_lib`` files of ``stage``'s package (no dist-info)."""
    with tempfile.TemporaryDirectory() as folder:
        view = write_library_view(Path(folder), stage)
        files = {path.relative_to(view.parent).as_posix(): path.read_bytes()
                 for path in sorted(view.rglob("*")) if path.is_file()}
    check_imports(files, set(left_out_files(stage)))
    files[FIXTURES_PATH] = fixtures_bytes(build_fixtures(stage, solutions_dir))
    return dict(sorted(files.items()))


def build_wheel(stage: str, out_dir: Path, solutions_dir: Path = SOLUTIONS_DIR, pyproject: Path = PYPROJECT) -> Path:
    """Write the student package of ``stage`` (key or notebook name) into ``out_dir``; return its path."""
    project = project_metadata(pyproject)
    version = wheel_version(stage, pyproject)
    dist_info = f"{project['name']}-{version}.dist-info"
    files = package_files(stage, solutions_dir)
    files[f"{dist_info}/METADATA"] = _metadata(stage, project, version).encode()
    files[f"{dist_info}/WHEEL"] = _wheel_file().encode()
    record = "".join(f"{name},{_record_hash(data)},{len(data)}\n" for name, data in files.items())
    files[f"{dist_info}/RECORD"] = (record + f"{dist_info}/RECORD,,\n").encode()

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / wheel_name(stage, pyproject)
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in files.items():
            _write_entry(archive, name, data)
    return path
