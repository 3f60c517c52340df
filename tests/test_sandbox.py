"""The bubblewrap sandbox of the grading kernels (``autograder/execute/sandbox.py``), each promise with a real kernel.

One sandboxed kernel runs a notebook of probes laid out like a real grading run (the notebook's folder
inside a scratch course folder beside the gradebook, the source notebook and another student's work);
each probe prints what happened. Other tests start their own kernels (interrupts, processes left behind)
or grade through the command line (``--no-sandbox``, the message when no sandbox can be made). The
grading-side promises on a whole class (a cell that ignores SIGINT, a notebook that snoops) are students of
``tests/test_autograder.py``.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

import nbformat
import pytest
from jupyter_core.utils import run_sync
from nbclient import NotebookClient
from nbformat.v4 import new_code_cell, new_notebook

from autograder import cli
from autograder.course import REPO_ROOT
from autograder.execute.notebook import kernel_python_path
from autograder.execute.sandbox import SandboxedKernelManager, bwrap_command, sandbox_unavailable

TOY_DIR = Path(__file__).parent / "submissions" / "toy"
STAGE = "00_toy"
DISK_MB = 32
TMP_MB = 8

needs_sandbox = pytest.mark.skipif(sandbox_unavailable() is not None,
                                   reason=f"no sandbox can be made here: {sandbox_unavailable()}")
pytestmark = pytest.mark.timeout(240)

PROBE = """import json, os, sys
try:
{body}
    outcome = "succeeded"
except BaseException as error:
    outcome = f"{{type(error).__name__}}: {{error}}"
print(json.dumps(outcome))
"""


def _probe(body: str) -> str:
    return PROBE.format(body="\n".join("    " + line for line in body.strip().splitlines()))


def _kernel(**traits) -> SandboxedKernelManager:
    return SandboxedKernelManager(kernel_name="python3", disk_mb=DISK_MB, tmp_mb=TMP_MB, **traits)


def _run(km, workdir: Path, sources: list[str], timeout: int = 60) -> nbformat.NotebookNode:
    """Run ``sources`` as a notebook in ``km`` (started in ``workdir`` when it is not running; left running)."""
    notebook = new_notebook(cells=[new_code_cell(source) for source in sources])
    NotebookClient(notebook, km=km, timeout=timeout, interrupt_on_timeout=True, allow_errors=True,
                   kernel_name="python3", resources={"metadata": {"path": str(workdir)}}).execute()
    return notebook


def _stdout(cell) -> str:
    return "".join(output.text for output in cell.outputs if output.output_type == "stream" and output.name == "stdout")


def _outcome(cell) -> str:
    return json.loads(_stdout(cell).strip().splitlines()[-1])


def _stop(km, now: bool = True) -> None:
    run_sync(km.shutdown_kernel)(now=now)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _processes_with(marker: str) -> list[int]:
    """PIDs on this machine whose command line holds ``marker``."""
    found = []
    for entry in os.listdir("/proc"):
        try:
            if entry.isdigit() and marker.encode() in Path(f"/proc/{entry}/cmdline").read_bytes():
                found.append(int(entry))
        except OSError:
            continue
    return [pid for pid in found if _alive(pid)]


def _host_size(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


@pytest.fixture(scope="module")
def layout(tmp_path_factory):
    """A course folder as grading leaves it while alice's notebook runs: her scratch course folder
    ``work/alice-00_toy/`` (a gradebook copy, links to ``source/``, her notebook's folder, the kernel's) and bob's;
    a file in the home folder; a TCP server on this machine's loopback."""
    root = tmp_path_factory.mktemp("course")
    (root / "source" / STAGE).mkdir(parents=True)
    shutil.copy2(TOY_DIR / f"{STAGE}.ipynb", root / "source" / STAGE / f"{STAGE}.ipynb")
    (root / "gradebook.db").write_text("the gradebook")
    alice = root / "work" / f"alice-{STAGE}" / "autograded" / "alice" / STAGE
    bob = root / "work" / f"bob-{STAGE}" / "autograded" / "bob" / STAGE
    for folder in (alice, bob):
        folder.mkdir(parents=True)
        shutil.copy2(root / "gradebook.db", folder.parents[2] / "gradebook.db")
        (folder.parents[2] / "source").symlink_to(root / "source", target_is_directory=True)
    (alice / "data.txt").write_text("alice's own file")
    (root / "cache.txt").write_text("a cache of this machine")
    (bob / "answer.txt").write_text("bob's answer")
    handle, home_file = tempfile.mkstemp(prefix=".sandbox-test-", dir=Path.home())
    os.write(handle, b"a secret in the home folder")
    os.close(handle)
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.2)
    connections = []

    def accept():
        while server.fileno() >= 0:
            try:
                connections.append(server.accept())
            except (TimeoutError, OSError):
                continue

    threading.Thread(target=accept, daemon=True).start()
    yield {"root": root, "alice": alice, "bob": bob, "home_file": Path(home_file),
           "port": server.getsockname()[1], "connections": connections}
    server.close()
    os.remove(home_file)


FILL = "with open({path!r}, 'wb') as f:\n    while True:\n        f.write(bytes(2**20))\n        f.flush()"
PROBES = {
    "read_source": "open(SOURCE).read()",
    "read_source_relative": "open(os.path.join(os.getcwd(), '../../..', 'source', STAGE, STAGE + '.ipynb')).read()",
    "read_gradebook": "open('../../../gradebook.db').read()",
    "read_solutions": "os.listdir(os.path.join(REPO, 'solutions'))",
    "read_repository": "open(os.path.join(REPO, 'autograder', 'execute', 'notebook.py')).read()",
    "read_other_student": "open(BOB).read()",
    "read_home": "open(HOME_FILE).read()",
    "write_course": "open(os.path.join(ROOT, 'grades.csv'), 'w').write('all 100')",
    "write_gradebook": "open('../../../gradebook.db', 'w').write('all 100')",
    "write_source": "open(SOURCE, 'w').write('{}')",
    "write_repository": "open(os.path.join(REPO, 'hacked.txt'), 'w').write('x')",
    "write_environment": "open(os.path.join(sys.prefix, 'hacked.txt'), 'w').write('x')",
    "write_python_path": "import course_lib\nopen(os.path.join(os.path.dirname(course_lib.__file__), 'x.py'), 'w')",
    "write_root": "open('/hacked.txt', 'w').write('x')",
    "tcp_this_machine": "import socket\nsocket.create_connection(('127.0.0.1', PORT), timeout=5).close()",
    "tcp_internet": "import socket\nsocket.create_connection(('192.0.2.1', 80), timeout=5).close()",
    "import_repository": "import autograder.execute.notebook",
    "own_file": "assert open('data.txt').read() == \"alice's own file\"",
    "seeded_cache": "assert open(os.path.expanduser('~/.cache/course_lib/cache.txt')).read() == "
                    "'a cache of this machine'",
    "write_own_folder": "open('mine.txt', 'w').write('x' * 1000)",
    "write_tmp": "open(TMP_NAME, 'w').write('x')",
    "fill_folder": FILL.format(path="fill.bin"),
    "after_fill": "assert os.path.getsize('fill.bin') <= DISK_MB * 2**20\nos.remove('fill.bin')\n"
                  "open('small.txt', 'w').write('room again')",
    "fill_tmp": FILL.format(path="/tmp/fill.bin"),
}


@pytest.fixture(scope="module")
def probed(layout, tmp_path_factory):
    """Run every probe in one sandboxed kernel; ``{probe: outcome}`` plus the kernel's environment and imports."""
    python = kernel_python_path(tmp_path_factory.mktemp("kernel-python"))
    tmp_name = f"/tmp/sandbox-probe-{os.getpid()}.txt"
    constants = {"SOURCE": str(layout["root"] / "source" / STAGE / f"{STAGE}.ipynb"), "STAGE": STAGE,
                 "REPO": str(REPO_ROOT), "BOB": str(layout["bob"] / "answer.txt"),
                 "HOME_FILE": str(layout["home_file"]), "ROOT": str(layout["root"]), "PORT": layout["port"],
                 "DISK_MB": DISK_MB, "TMP_NAME": tmp_name}
    setup = "\n".join(f"{name} = {value!r}" for name, value in constants.items())
    report = ("import json, os, sys, course_lib, autograder.execute.kernel_state\n"
              "print(json.dumps({'env': dict(os.environ), 'cwd': os.getcwd(), 'course_lib': course_lib.__file__, "
              "'kernel_state': autograder.execute.kernel_state.__file__, 'path': sys.path}))")
    saved = {name: os.environ.get(name) for name in ("COURSE_MODE", "GRADER_SECRET")}
    os.environ.update(COURSE_MODE="quick", GRADER_SECRET="the grader's token")
    km = _kernel(python_path=[str(python)], seed={str(layout["root"] / "cache.txt"): ".cache/course_lib/cache.txt"})
    try:
        notebook = _run(km, layout["alice"], [setup, report, *map(_probe, PROBES.values())])
        sandbox_pid = km.sandbox_pid
    finally:
        _stop(km)
        for name, value in saved.items():
            os.environ.pop(name) if value is None else os.environ.update({name: value})
    outcomes = dict(zip(PROBES, map(_outcome, notebook.cells[2:])))
    return {"outcomes": outcomes, "kernel": json.loads(_stdout(notebook.cells[1])), "python": python,
            "tmp_name": tmp_name, "sandbox_pid": sandbox_pid, **layout}


@needs_sandbox
@pytest.mark.parametrize("probe", ["read_source", "read_source_relative", "read_gradebook", "read_solutions",
                                   "read_repository", "read_other_student", "read_home"])
def test_nothing_outside_the_notebooks_folder_can_be_read(probed, probe):
    assert probed["outcomes"][probe].startswith(("FileNotFoundError", "PermissionError")), probed["outcomes"][probe]


@needs_sandbox
@pytest.mark.parametrize("probe", ["write_environment", "write_python_path", "write_repository", "write_root"])
def test_nothing_outside_the_notebooks_folder_can_be_written(probed, probe):
    outcome = probed["outcomes"][probe]
    if probe == "write_repository" and Path("/tmp") in REPO_ROOT.parents:
        # a checkout under /tmp: inside the sandbox /tmp is its own tmpfs, where bwrap makes the folders above the
        # environment's read-only mount, so the write lands there; the host's repository is checked below
        assert outcome == "succeeded" or outcome.startswith(("OSError", "FileNotFoundError", "PermissionError"))
    else:
        assert outcome.startswith(("OSError", "FileNotFoundError", "PermissionError")), outcome
    assert not Path(sys.prefix, "hacked.txt").exists() and not Path("/hacked.txt").exists()
    assert not (REPO_ROOT / "hacked.txt").exists()


@needs_sandbox
def test_writes_to_the_course_folder_never_reach_it(probed):
    """Under /tmp (pytest's folders) the course folder's path lies in the sandbox's own /tmp, so these writes may
    succeed there; elsewhere they fail. Either way the course folder is untouched."""
    root = probed["root"]
    for probe in ("write_course", "write_gradebook", "write_source"):
        outcome = probed["outcomes"][probe]
        assert outcome.startswith(("OSError", "FileNotFoundError")) or str(root).startswith("/tmp/"), outcome
    assert not (root / "grades.csv").exists()
    assert (root / "work" / f"alice-{STAGE}" / "gradebook.db").read_text() == "the gradebook"
    assert nbformat.read(root / "source" / STAGE / f"{STAGE}.ipynb", as_version=4).cells


@needs_sandbox
def test_the_notebooks_folder_is_its_own_and_the_host_keeps_none_of_what_it_writes(probed):
    outcomes = probed["outcomes"]
    assert outcomes["own_file"] == outcomes["write_own_folder"] == outcomes["write_tmp"] == "succeeded"
    assert outcomes["seeded_cache"] == "succeeded"  # copies of this machine's caches, made at the start
    assert sorted(os.listdir(probed["alice"])) == ["data.txt"]  # mine.txt, fill.bin, small.txt stayed inside
    assert not Path(probed["tmp_name"]).exists()  # the sandbox's /tmp is its own
    assert probed["kernel"]["cwd"] == str(probed["alice"].resolve())


@needs_sandbox
def test_a_disk_filler_fails_in_its_own_cell_and_the_host_sees_at_most_the_quota(probed):
    outcomes = probed["outcomes"]
    assert outcomes["fill_folder"].startswith("OSError: [Errno 28] No space left on device")
    assert outcomes["fill_tmp"].startswith("OSError: [Errno 28] No space left on device")
    assert outcomes["after_fill"] == "succeeded"  # the kernel lived on, and the folder held at most the quota
    assert _host_size(probed["alice"]) <= DISK_MB * 2**20


@needs_sandbox
def test_no_network_not_even_this_machines_loopback(probed):
    assert probed["outcomes"]["tcp_this_machine"].startswith(("ConnectionRefusedError", "OSError"))
    assert probed["outcomes"]["tcp_internet"].startswith("OSError: [Errno 101]")  # Network is unreachable
    assert probed["connections"] == []


@needs_sandbox
def test_environment_is_cleared_and_the_kernel_imports_only_the_given_python_path(probed):
    kernel = probed["kernel"]
    env = kernel["env"]
    assert "GRADER_SECRET" not in env and env["COURSE_MODE"] == "quick"
    assert env["HOME"] == kernel["cwd"] and env["PYTHONPATH"] == str(probed["python"])
    assert not {"USER", "LOGNAME", "VIRTUAL_ENV", "XDG_RUNTIME_DIR", "SSH_AUTH_SOCK"} & set(env)
    assert kernel["course_lib"].startswith(str(probed["python"]))
    assert kernel["kernel_state"].startswith(str(probed["python"]))
    assert str(REPO_ROOT) not in kernel["path"]
    assert probed["outcomes"]["import_repository"].startswith("ModuleNotFoundError")


@needs_sandbox
def test_kernel_is_gone_after_shutdown(probed):
    assert not _alive(probed["sandbox_pid"])


@needs_sandbox
def test_a_cell_past_its_time_limit_is_interrupted_through_bwrap(tmp_path):
    km = _kernel()
    try:
        started = time.monotonic()
        notebook = _run(km, tmp_path, ["x = 41", "while True:\n    pass", "print(x + 1)"], timeout=3)
        elapsed = time.monotonic() - started
        assert km.is_alive  # the same kernel ran the cell after the interrupted one
    finally:
        _stop(km)
    errors = [output.ename for output in notebook.cells[1].outputs if output.output_type == "error"]
    assert errors == ["KeyboardInterrupt"]
    assert _stdout(notebook.cells[2]) == "42\n"
    assert elapsed < 30


DAEMON = """import os, signal, sys, time
if os.fork():
    os._exit(0)
os.setsid()
if os.fork():
    os._exit(0)
for sig in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT):
    signal.signal(sig, signal.SIG_IGN)
time.sleep(float(sys.argv[2]))
open(sys.argv[3], 'w').write('still running')
"""


@needs_sandbox
@pytest.mark.parametrize("now", [True, False], ids=["killed", "shut-down"])
def test_detached_processes_end_with_the_kernel(tmp_path, now):
    marker = f"sandbox-daemon-{os.getpid()}-{now}"
    written = tmp_path / "written-later.txt"
    start = (f"import subprocess, sys\nsubprocess.run([sys.executable, '-c', {DAEMON!r}, {marker!r}, '3', "
             f"{str(written)!r}], check=True)")
    km = _kernel()
    try:
        _run(km, tmp_path, [start])
        deadline = time.monotonic() + 10
        while not _processes_with(marker) and time.monotonic() < deadline:
            time.sleep(0.1)
        daemons = _processes_with(marker)
        assert daemons, "the detached process did not start"
        sandbox_pid = km.sandbox_pid
    finally:
        _stop(km, now=now)
    deadline = time.monotonic() + 5
    while any(map(_alive, daemons)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(map(_alive, daemons)) and not _alive(sandbox_pid)
    time.sleep(3.5)  # past the moment it would have written
    assert not written.exists() and not _processes_with(marker)


@needs_sandbox
def test_bwrap_command_shares_no_namespace_and_binds_only_what_it_is_given(tmp_path):
    command = bwrap_command(["true"], str(tmp_path), python_path=[str(tmp_path / "lib")])
    assert {"--unshare-all", "--die-with-parent", "--clearenv", "--disable-userns"} <= set(command)
    bound = [command[i + 2] for i, arg in enumerate(command) if arg in ("--ro-bind", "--bind")]
    assert str(REPO_ROOT) not in bound and str(Path.home()) not in bound
    assert "--bind" not in command  # nothing of this machine is writable in the sandbox


def _class(tmp_path: Path) -> Path:
    folder = tmp_path / "class" / "solution" / STAGE
    folder.mkdir(parents=True)
    shutil.copy2(TOY_DIR / f"{STAGE}.ipynb", folder / f"{STAGE}.ipynb")
    return tmp_path / "class"


def test_grade_stops_before_grading_when_no_sandbox_can_be_made(tmp_path, monkeypatch, capsys):
    from autograder import commands

    monkeypatch.setattr(commands, "sandbox_unavailable", lambda: "no `bwrap` program (for this test)")
    course = tmp_path / "course"
    code = cli.main(["grade", str(_class(tmp_path)), "--course", str(course), "--stages", STAGE,
                     "--solutions", str(TOY_DIR)])
    err = capsys.readouterr().err
    assert code == 2 and "no `bwrap` program (for this test)" in err and "--no-sandbox" in err
    assert len(err.strip().splitlines()) == 1  # one paragraph
    assert not course.exists()  # nothing released, collected or run


def test_no_sandbox_grades_as_before_and_says_so_in_the_table_and_the_csv(tmp_path, capsys):
    course = tmp_path / "course"
    code = cli.main(["grade", str(_class(tmp_path)), "--course", str(course), "--stages", STAGE,
                     "--solutions", str(TOY_DIR), "--no-sandbox", "--cell-timeout", "30", "--memory-gb", "6"])
    out = capsys.readouterr().out
    assert code == 0 and "NOT SANDBOXED (--no-sandbox)" in out
    header, row = (course / "grades.csv").read_text().splitlines()
    assert header == f"student,name,{STAGE},total,max_total,problems,notes,sandboxed"
    assert row == "solution,solution,4,4,4,,,no"


@needs_sandbox
def test_sandbox_probe_runs_python_in_a_sandbox_once_per_process():
    misses = sandbox_unavailable.cache_info().misses
    assert sandbox_unavailable() is None and sandbox_unavailable() is None
    assert sandbox_unavailable.cache_info().misses == misses


def test_sandbox_probe_names_a_missing_bwrap(monkeypatch):
    from autograder.execute import sandbox

    monkeypatch.setattr(sandbox, "find_bwrap", lambda: None)
    sandbox.sandbox_unavailable.cache_clear()
    try:
        assert "no `bwrap` program" in sandbox.sandbox_unavailable()
    finally:
        sandbox.sandbox_unavailable.cache_clear()
