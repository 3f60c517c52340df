"""The course installs into today's Colab without upgrading what Colab ships.

* Every requirement of pyproject.toml's ``dependencies`` (and ``requires-python``) is met by Colab's own
  versions, listed in ``tests/colab-constraints.txt``.
* The slider tests (test_widgets.py, test_widgets_sampling.py) pass under Colab's ipywidgets 7.7.1 too: it is
  installed from the package registry into a cached folder and put first on ``PYTHONPATH`` of a pytest run in
  a subprocess (the rest of the environment is the test run's own, with its ipywidgets 8).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: pip vendors the same parser
    from pip._vendor import tomli as tomllib

REPO = Path(__file__).resolve().parents[1]
COLAB_CONSTRAINTS = REPO / "tests" / "colab-constraints.txt"

# Colab's ipywidgets and the one package its import needs beyond ours (widgetsnbextension and
# jupyterlab_widgets only serve frontends), with the sha256 of their wheels on PyPI.
IPYWIDGETS_7 = "7.7.1"
IPYWIDGETS_7_WHEELS = [
    f"ipywidgets=={IPYWIDGETS_7} --hash=sha256:aa1076ab7102b2486ae2607c43c243200a07c17d6093676c419d4b6762489a50",
    "ipython_genutils==0.2.0 --hash=sha256:72dd37233799e619666c9f639a9da83c34013a73e8bbc79a7a6348d93c61fab8",
]
SLIDER_TESTS = ["tests/test_widgets.py", "tests/test_widgets_sampling.py"]
# Run in the subprocess: check which ipywidgets it imports, then run the slider tests in that same process.
RUN_UNDER_IPYWIDGETS_7 = f"""
import sys, ipywidgets, pytest
assert ipywidgets.__version__ == {IPYWIDGETS_7!r}, f"imported ipywidgets {{ipywidgets.__version__}} from {{ipywidgets.__file__}}"
sys.exit(pytest.main(["-q", "-p", "no:cacheprovider", *sys.argv[1:]]))
"""


def colab_python() -> str:
    """Colab's Python version ("3.12"), from the ``# python: X.Y`` line of colab-constraints.txt."""
    found = re.search(r"^# python: (\d+\.\d+)\s*$", COLAB_CONSTRAINTS.read_text(), re.MULTILINE)
    assert found, f"{COLAB_CONSTRAINTS} has no '# python: X.Y' line"
    return found.group(1)


def colab_pins() -> dict[str, Version]:
    """Colab's version of each package pinned in colab-constraints.txt, by canonical name ("pillow")."""
    pins = {}
    for line in COLAB_CONSTRAINTS.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        requirement = Requirement(line)
        (specifier,) = requirement.specifier
        assert specifier.operator == "==", f"{COLAB_CONSTRAINTS}: {line!r} is not an exact pin (name==version)"
        pins[canonicalize_name(requirement.name)] = Version(specifier.version)
    return pins


def floor_problems(dependencies: list[str], pins: dict[str, Version], python: str) -> list[str]:
    """One readable line per requirement in ``dependencies`` that Colab's ``pins`` (on ``python``) do not meet."""
    environment = {"python_version": python, "python_full_version": f"{python}.0"}
    problems = []
    for line in dependencies:
        requirement = Requirement(line)
        if requirement.marker and not requirement.marker.evaluate(environment):
            continue
        name = canonicalize_name(requirement.name)
        if name not in pins:
            problems.append(f"{requirement.name}: no Colab version in tests/colab-constraints.txt; add the one "
                            f"Colab ships (pip freeze in a fresh Colab runtime)")
        elif not requirement.specifier.contains(pins[name], prereleases=True):
            problems.append(f"{requirement.name}: pyproject.toml asks for {requirement} but Colab ships "
                            f"{requirement.name}=={pins[name]}; keep the floor at or below {pins[name]}")
    return problems


def pyproject() -> dict:
    with open(REPO / "pyproject.toml", "rb") as file:
        return tomllib.load(file)["project"]


def test_colab_versions_meet_every_dependency():
    problems = floor_problems(pyproject()["dependencies"], colab_pins(), colab_python())
    assert not problems, "the course would upgrade what Colab ships:\n" + "\n".join(problems)


def test_requires_python_allows_colab():
    requires = pyproject()["requires-python"]
    assert SpecifierSet(requires).contains(colab_python()), f"requires-python {requires!r} excludes Colab's Python"


def test_a_floor_above_colab_is_reported_by_name():
    pins = {"torch": Version("2.11.0"), "ipywidgets": Version("7.7.1")}
    problems = floor_problems(["torch>=2.12", "ipywidgets>=7.7", "einops>=0.7",
                               "tomli>=2; python_version < '3.11'"], pins, "3.12")
    assert len(problems) == 2
    assert problems[0].startswith("torch: ") and "torch==2.11.0" in problems[0]
    assert problems[1].startswith("einops: ") and "no Colab version" in problems[1]


@pytest.fixture(scope="session")
def ipywidgets_7() -> Path:
    """A folder holding ipywidgets 7.7.1 (and ipython_genutils), installed once from the package registry.

    Cached in the system's temporary folder across runs; the install goes to a fresh folder renamed into
    place when complete, so an interrupted or concurrent run never leaves a half-installed cache.
    """
    folder = Path(tempfile.gettempdir()) / "course_lib-tests" / f"ipywidgets-{IPYWIDGETS_7}"
    if (folder / "ipywidgets").is_dir():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f"{folder.name}-", dir=folder.parent))
    requirements = staging.parent / f"{staging.name}.txt"
    requirements.write_text("\n".join(IPYWIDGETS_7_WHEELS) + "\n")
    command = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-input", "--only-binary=:all:",
               "--require-hashes", "--disable-pip-version-check", "--timeout", "20", "--retries", "1",
               "--target", str(staging), "-r", str(requirements)]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        result = subprocess.CompletedProcess(command, 1, "", "pip did not finish within 120 s")
    finally:
        requirements.unlink()
    if result.returncode != 0:
        shutil.rmtree(staging, ignore_errors=True)
        pytest.fail(f"could not install ipywidgets {IPYWIDGETS_7} (Colab's) from the package registry, needed to "
                    f"test the sliders under it; is the registry reachable?\n$ {' '.join(command)}\n"
                    f"{(result.stdout + result.stderr)[-3000:]}", pytrace=False)
    try:
        staging.rename(folder)
    except OSError:  # another run installed it first
        shutil.rmtree(staging, ignore_errors=True)
    return folder


def test_sliders_work_under_colabs_ipywidgets(ipywidgets_7, mnist_root):
    """test_widgets.py and test_widgets_sampling.py, run under ipywidgets 7.7.1 (``mnist_root`` sets
    ``COURSE_DATA_DIR`` for the subprocess)."""
    assert colab_pins()["ipywidgets"] == Version(IPYWIDGETS_7), (
        f"Colab now ships ipywidgets {colab_pins()['ipywidgets']}: update IPYWIDGETS_7 and its wheels' hashes here "
        "(or drop this test once Colab ships ipywidgets 8, which the normal run already tests)")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ipywidgets_7), os.environ.get("PYTHONPATH")])))
    env.pop("PYTEST_ADDOPTS", None)  # this run's own -k or -x must not filter the subprocess's tests
    result = subprocess.run([sys.executable, "-c", RUN_UNDER_IPYWIDGETS_7, *SLIDER_TESTS], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=240)
    output = (result.stdout + result.stderr)[-6000:]
    if result.returncode != 0:
        pytest.fail(f"the slider tests fail under ipywidgets {IPYWIDGETS_7}:\n{output}", pytrace=False)
    assert re.search(r"\b\d+ passed\b", output) and "skipped" not in output, output
