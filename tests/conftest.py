"""Fixtures shared by every test file: the real MNIST folder and the quick course mode.

Keep this file small and general; fixtures used by one file belong in that file.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def quick_mode(monkeypatch):
    """Every test runs with ``COURSE_MODE=quick`` (tiny budgets); a test may override it with monkeypatch."""
    monkeypatch.setenv("COURSE_MODE", "quick")


@pytest.fixture(scope="session")
def mnist_root() -> Path:
    """The MNIST root folder from ``$COURSE_DATA_DIR`` (holding ``MNIST/raw``); skips the test when unset.

    Tests never download: point ``COURSE_DATA_DIR`` at a folder with the MNIST files to run them.
    """
    value = os.environ.get("COURSE_DATA_DIR")
    if not value:
        pytest.skip("real-MNIST test: set COURSE_DATA_DIR to a folder holding MNIST/raw to run it")
    root = Path(value).expanduser()
    if not (root / "MNIST" / "raw").is_dir():
        pytest.skip(f"real-MNIST test: COURSE_DATA_DIR={value} has no MNIST/raw folder")
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
