"""Kernels forked from a kernel template (``autograder/execute/templates.py``, ``kernel_template.py``), with a real
template in a real sandbox: each kernel has no capability, cannot reach its template, starts with empty folders
whatever an earlier kernel left, and is driven like a kernel started by bwrap (interrupt, the caps' watchdog, kill
of everything it started), while the template goes on forking."""

from __future__ import annotations

import json
import time

import pytest
from jupyter_core.utils import run_sync
from nbclient.exceptions import DeadKernelError
from traitlets.config import Config

from autograder.execute.notebook import kernel_python_path
from autograder.execute.templates import WORKDIR, Template, TemplateKernelManager, TemplateUnavailableError
from test_sandbox import _outcome, _processes_with, _probe, _run, _stdout, _stop, needs_sandbox

pytestmark = [pytest.mark.timeout(300), needs_sandbox]

#: prints the kernel's capability sets, what it finds in its folders, whether torch was imported before it, and
#: whether the course_lib view (bound read-only from below /tmp, like a course folder under /tmp) is readable
STATE = """import json, os, sys
import course_lib.plots
status = dict(line.split(":", 1) for line in open("/proc/self/status"))
print(json.dumps({"caps": {name: status[name].strip() for name in ("CapEff", "CapPrm", "CapInh", "CapBnd", "CapAmb")},
                  "no_new_privs": status["NoNewPrivs"].strip(), "tmp": os.listdir("/tmp"), "shm": os.listdir("/dev/shm"),
                  "home": sorted(os.listdir(".")), "left": "LEFT_BEHIND" in os.environ, "torch": "torch" in sys.modules}))
"""
LEAVE = """import os, pathlib, torch
for folder in ("/tmp", "/dev/shm", "."):
    pathlib.Path(folder, "left.txt").write_text("x")
os.environ["LEFT_BEHIND"] = "1"
torch.left_behind = True
"""


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    config = Config()
    config.SandboxedKernelManager.python_path = [str(kernel_python_path(tmp_path_factory.mktemp("course"), "ddpm"))]
    config.SandboxedKernelManager.disk_mb = config.SandboxedKernelManager.tmp_mb = 32
    config.LimitedKernelManager.memory_gb = 1.5
    config.LimitedKernelManager.max_processes = 20
    started = Template(config, "python3", ("torch",))
    yield started
    started.close()


def _forked(template: Template) -> TemplateKernelManager:
    return TemplateKernelManager(template, workdir=WORKDIR)


def test_a_forked_kernel_has_no_capability_and_nothing_an_earlier_one_left(template, tmp_path):
    first = _forked(template)
    notebook = _run(first, tmp_path, [STATE, LEAVE])
    _stop(first)
    before = json.loads(_stdout(notebook.cells[0]))
    assert set(before["caps"].values()) == {"0000000000000000"} and before["no_new_privs"] == "1"
    assert before["torch"]  # imported once, by the template
    assert "left.txt" not in before["tmp"] and before["shm"] == []
    second = _forked(template)
    notebook = _run(second, tmp_path, [STATE])
    _stop(second)
    after = json.loads(_stdout(notebook.cells[0]))
    assert (after["tmp"], after["shm"], after["home"], after["left"]) == (before["tmp"], [], before["home"], False)
    assert template.alive


@pytest.mark.parametrize("attempt", [
    'open("/proc/1/mem", "rb").read(1)',  # the template's memory (PID 1 of the /proc it sees)
    'open("/proc/1/environ").read()',
    'os.listdir("/proc/1/root")',
    'import ctypes\nassert ctypes.CDLL(None, use_errno=True).unshare(0x10000000) == 0, "no new user namespace"',
    'import ctypes\nassert ctypes.CDLL(None).mount(b"none", b"/tmp", b"tmpfs", 0, None) == 0, "no mount"',
])
def test_a_forked_kernel_cannot_reach_its_template_nor_change_its_sandbox(template, tmp_path, attempt):
    kernel = _forked(template)
    notebook = _run(kernel, tmp_path, [_probe(attempt)])
    _stop(kernel)
    assert _outcome(notebook.cells[0]).split(":")[0] in {"PermissionError", "AssertionError"}


def test_the_caps_stop_a_forked_kernel_and_the_template_forks_the_next(template, tmp_path):
    kernel = _forked(template)
    with pytest.raises(DeadKernelError):
        _run(kernel, tmp_path, ["held = bytearray(3 * 2**30)\nheld[::4096] = b'x' * len(held[::4096])"])
    assert "GiB" in (kernel.limit_exceeded or "")
    _stop(kernel)
    assert template.alive
    again = _forked(template)
    assert _stdout(_run(again, tmp_path, ["print(6 * 7)"]).cells[0]) == "42\n"
    _stop(again)


def test_stopping_a_forked_kernel_ends_what_it_started_and_an_interrupt_stops_a_cell(template, tmp_path):
    marker = f"forked-orphan-{time.monotonic_ns()}"
    orphan = (f"import subprocess, sys\nsubprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)', "
              f"{marker!r}], start_new_session=True)")
    kernel = _forked(template)
    notebook = _run(kernel, tmp_path, [orphan, "import time\ntime.sleep(60)", "print('still here')"], timeout=3)
    assert _stdout(notebook.cells[2]) == "still here\n"  # the interrupt stopped the sleep, not the kernel
    assert _processes_with(marker)
    _stop(kernel)
    deadline = time.monotonic() + 10
    while _processes_with(marker):
        assert time.monotonic() < deadline, "a process the kernel started outlived it"
        time.sleep(0.1)
    assert template.alive


def test_a_template_never_runs_two_kernels_at_once(template, tmp_path):
    """Two kernels of one template could read each other's memory (same user, no capabilities): while one runs, the
    template refuses to fork another, and forks again once it has ended."""
    first, second = _forked(template), _forked(template)
    run_sync(first.start_kernel)()
    with pytest.raises(TemplateUnavailableError, match="still running"):
        run_sync(second.start_kernel)()
    run_sync(second.cleanup_resources)()
    _stop(first)
    third = _forked(template)
    assert _stdout(_run(third, tmp_path, ["print(6 * 7)"]).cells[0]) == "42\n"
    _stop(third)
