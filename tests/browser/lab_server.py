"""A real JupyterLab server for the browser tests: loopback only, a random free port, a token, no browser.

Everything the server and its kernels write (config, data, runtime files, IPython profile, Lab settings)
goes under one temporary folder; the notebooks it serves are copies in ``<folder>/notebooks``. Kernels run
the project's own Python with ``COURSE_MODE=quick``, ``COURSE_DATA_DIR`` and the repository on
``PYTHONPATH`` (one torch thread unless ``OMP_NUM_THREADS`` says otherwise), like a student's local JupyterLab.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]

# JupyterLab user settings that keep the page predictable for a robot:
# every cell stays in the DOM (no windowing), and no news or update toasts cover the notebook.
LAB_USER_SETTINGS = {
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {
        "fetchNews": "false",
        "checkForUpdates": False,
    },
}

# Server settings that cannot be given on the command line (``None`` values) or are easier read here.
LAB_CONFIG = {
    "LabApp": {
        "news_url": None,
        "check_for_updates_class": "jupyterlab.NeverCheckForUpdate",
        "expose_app_in_browser": True,  # window.jupyterapp: run commands and read cell outputs
    },
    "ServerApp": {"terminals_enabled": False},
}


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class LabServer:
    """One running ``jupyter lab`` process; use :meth:`start` and always :meth:`stop`.

    Attributes:
        home: the temporary folder holding the notebooks and every Jupyter/IPython directory.
        course_data_dir: the MNIST root passed to kernels as ``COURSE_DATA_DIR``.
        port, token: where the server listens (127.0.0.1) and the token it requires.
    """

    home: Path
    course_data_dir: Path
    port: int = field(default_factory=free_port)
    token: str = field(default_factory=lambda: secrets.token_hex(16))
    process: subprocess.Popen | None = None

    @property
    def notebook_dir(self) -> Path:
        """The server's root folder: the notebooks it can open."""
        return self.home / "notebooks"

    @property
    def log_path(self) -> Path:
        """The server's stdout and stderr (printed by tests when something goes wrong)."""
        return self.home / "jupyterlab.log"

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, notebook: str) -> str:
        """The address that opens ``notebook`` (a file name in :attr:`notebook_dir`) alone in JupyterLab.

        Each notebook gets its own, reset workspace, so tabs left open by an earlier test are not restored.
        """
        workspace = Path(notebook).stem
        return f"{self.base_url}/lab/workspaces/{workspace}/tree/{notebook}?reset&token={self.token}"

    def environment(self) -> dict[str, str]:
        """The server's (and so its kernels') environment: temporary Jupyter dirs, quick mode, real MNIST."""
        env = dict(os.environ)
        # A student's kernel draws figures inline; a headless backend inherited from CI would turn them into text.
        env.pop("MPLBACKEND", None)
        dirs = {
            "JUPYTER_CONFIG_DIR": self.home / "jupyter-config",
            "JUPYTER_DATA_DIR": self.home / "jupyter-data",
            "JUPYTER_RUNTIME_DIR": self.home / "jupyter-runtime",
            "IPYTHONDIR": self.home / "ipython",
        }
        env.update({name: str(path) for name, path in dirs.items()})
        # The notebooks' tensors are small and test machines share a few cores: one torch thread per kernel
        # avoids the oversubscription that makes quick mode several times slower (04_cfg: 220 s -> 53 s here).
        env.setdefault("OMP_NUM_THREADS", "1")
        python_path = [str(REPO_ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
        env.update(
            COURSE_MODE="quick",
            COURSE_DATA_DIR=str(self.course_data_dir),
            PYTHONPATH=os.pathsep.join(python_path),
            PATH=os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")]),
            PYDEVD_DISABLE_FILE_VALIDATION="1",
        )
        return env

    def _write_config(self, env: dict[str, str]) -> None:
        config_dir = Path(env["JUPYTER_CONFIG_DIR"])
        for name in ("JUPYTER_CONFIG_DIR", "JUPYTER_DATA_DIR", "JUPYTER_RUNTIME_DIR", "IPYTHONDIR"):
            Path(env[name]).mkdir(parents=True, exist_ok=True)
        (config_dir / "jupyter_server_config.json").write_text(json.dumps(LAB_CONFIG, indent=1))
        for relative, settings in LAB_USER_SETTINGS.items():
            path = config_dir / "lab" / "user-settings" / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(settings, indent=1))

    def start(self, timeout: float = 60.0) -> None:
        """Launch ``python -m jupyterlab`` and wait until its REST API answers (``RuntimeError`` if not)."""
        self.notebook_dir.mkdir(parents=True, exist_ok=True)
        env = self.environment()
        self._write_config(env)
        command = [
            sys.executable, "-m", "jupyterlab",
            "--no-browser",
            "--ServerApp.ip=127.0.0.1",
            f"--ServerApp.port={self.port}",
            "--ServerApp.port_retries=0",
            f"--IdentityProvider.token={self.token}",
            f"--ServerApp.root_dir={self.notebook_dir}",
        ]
        if os.geteuid() == 0:  # CI containers run as root, which JupyterLab refuses unless told
            command.append("--allow-root")
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                command, cwd=self.notebook_dir, env=env, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group, which stop() can signal
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"JupyterLab exited with code {self.process.returncode}; log: {self.log_path}")
            if self._answers():
                return
            time.sleep(0.25)
        self.stop()
        raise RuntimeError(f"JupyterLab did not answer within {timeout:.0f} s; log: {self.log_path}")

    def _answers(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.base_url}/api/status?token={self.token}", timeout=2) as reply:
                return reply.status == 200
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return False

    def _request_shutdown(self) -> None:
        request = urllib.request.Request(f"{self.base_url}/api/shutdown?token={self.token}", method="POST")
        try:
            urllib.request.urlopen(request, timeout=5).close()
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass  # the caller falls back to signals

    def stop(self, timeout: float = 15.0) -> None:
        """End the server and its kernels: ask through the REST API, then SIGTERM, then SIGKILL its process group.

        The server shuts its kernels down on the first two; ipykernel also exits when its parent dies.
        """
        if self.process is None or self.process.poll() is not None:
            return
        group = os.getpgid(self.process.pid)
        for ask in (self._request_shutdown, lambda: os.killpg(group, signal.SIGTERM)):
            ask()  # the server shuts its kernels down on either request
            try:
                self.process.wait(timeout=timeout)
                return
            except subprocess.TimeoutExpired:
                continue
        try:
            os.killpg(group, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait(timeout=timeout)
