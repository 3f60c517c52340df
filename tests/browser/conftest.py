"""Fixtures of the browser tests: Debian's Chromium driven by Playwright, a JupyterLab server, step screenshots.

The tests are skipped, with the reason shown by ``pytest -ra``, when ``/usr/bin/chromium`` or the
``playwright`` package is missing (install both with ``apt-get install -y chromium`` and the ``dev`` extra).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from lab_page import Screenshots
from lab_server import LabServer

CHROMIUM = Path("/usr/bin/chromium")
# Headless, no sandbox (root in containers), no GPU, and nothing that reaches the network on its own.
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
VIEWPORT = {"width": 1280, "height": 1000}

SCREENSHOTS = pytest.StashKey[Screenshots]()
LAB_LOG = pytest.StashKey[Path]()


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "browser: drives the notebooks in a real JupyterLab with headless Chromium (Playwright)"
    )


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    """On failure, list the step screenshots and the JupyterLab log in the report."""
    report = yield
    if report.failed:
        shots = item.stash.get(SCREENSHOTS, None)
        if shots is not None and shots.paths:
            report.sections.append(("screenshots", "\n".join(str(path) for path in shots.paths)))
        if LAB_LOG in item.stash:
            report.sections.append(("jupyterlab log", str(item.stash[LAB_LOG])))
    return report


@pytest.fixture(scope="session")
def chromium() -> Path:
    """Debian's Chromium; skips the browser tests when it or the playwright package is missing."""
    if importlib.util.find_spec("playwright") is None:
        pytest.skip("browser test: the playwright package is not installed (pip install -e '.[dev]')")
    if not CHROMIUM.is_file():
        pytest.skip(f"browser test: no Chromium at {CHROMIUM} (apt-get install -y chromium)")
    return CHROMIUM


@pytest.fixture(scope="session")
def lab_server(chromium, mnist_root, tmp_path_factory):
    """A JupyterLab server for the whole session, stopped at the end even when a test fails."""
    server = LabServer(home=tmp_path_factory.mktemp("jupyterlab"), course_data_dir=mnist_root)
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def browser_context(chromium, tmp_path_factory):
    """A headless Chromium with a new, empty profile, shared by the session's tests."""
    from playwright.sync_api import sync_playwright

    profile = tmp_path_factory.mktemp("chromium-profile")
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            profile, executable_path=chromium, headless=True, args=CHROMIUM_FLAGS, viewport=VIEWPORT,
        )
        try:
            yield context
        finally:
            context.close()


@pytest.fixture
def screenshots(request, tmp_path) -> Screenshots:
    """Where a test keeps its step screenshots (``<tmp_path>/screenshots``); listed in the report on failure."""
    shots = Screenshots(tmp_path / "screenshots")
    request.node.stash[SCREENSHOTS] = shots
    return shots


@pytest.fixture
def page(browser_context, lab_server, request):
    """A fresh browser tab on the session's JupyterLab, closed after the test."""
    request.node.stash[LAB_LOG] = lab_server.log_path
    page = browser_context.new_page()
    page.set_default_timeout(30_000)
    try:
        yield page
    finally:
        page.close()
