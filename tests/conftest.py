"""Fixtures shared by every test file: the real MNIST folder and the quick course mode.

Keep this file small and general; fixtures used by one file belong in that file.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

#: The test files that run whole notebooks or grading runs, longest first (one process's ``--durations``). The two
#: test processes take them first (``--dist loadfile --no-loadscope-reorder``), so that they end together rather than
#: one running a long file at the end while the other has nothing left. Files not named here follow, in their order.
LONGEST_FIRST = ("test_notebooks.py", "test_dask_grading.py", "test_autograder_demo.py", "test_autograder.py",
                 "test_class_input.py", "test_regrade.py", "test_grading_cli.py", "test_lab_sliders.py",
                 "test_publish.py", "test_class_report.py", "test_catalogue_graded.py", "test_warm_kernels.py",
                 "test_grading_limits.py", "test_sandbox.py", "test_stages.py", "test_grading_child.py")


def pytest_collection_modifyitems(items) -> None:
    """The files of :data:`LONGEST_FIRST` first, in its order; each file's tests keep theirs."""
    rank = {name: position for position, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


@pytest.fixture(autouse=True)
def quick_mode(monkeypatch):
    """Every test runs with ``COURSE_MODE=quick`` (tiny budgets); a test may override it with monkeypatch."""
    monkeypatch.setenv("COURSE_MODE", "quick")


@pytest.fixture(scope="session")
def mnist_root() -> Path:
    """A torchvision MNIST root: ``$COURSE_DATA_DIR`` when set (CI's offline copy), else the user cache
    folder of ``course_lib.data.default_root()``, where torchvision downloads MNIST once (about 12 MB)."""
    from course_lib.data import default_root, load_mnist

    value = os.environ.get("COURSE_DATA_DIR")
    root = Path(value).expanduser() if value else default_root()
    if value and not (root / "MNIST" / "raw").is_dir():
        pytest.fail(f"COURSE_DATA_DIR={value} holds no MNIST/raw folder: point it at a torchvision MNIST root")
    for train in (False, True):
        load_mnist(train=train, root=root)  # downloads only when the files are missing
    os.environ.setdefault("COURSE_DATA_DIR", str(root))  # notebooks and subprocesses use the same files
    return root


@pytest.fixture(scope="module")
def single_thread():
    """Run a module's torch code on one CPU thread (restored after).

    The tests' tensors are small and the test machines' few cores are shared: one thread avoids the
    oversubscription that makes small operations ten times slower. Opt in per module with
    ``pytestmark = pytest.mark.usefixtures("single_thread")``.
    """
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
