"""The suite started as CI and scripts start it, a background job: SIGINT ignored, no
standard input, no controlling terminal. A guest test passes there, our own tests that
interrupt a child pytest still interrupt it, the run says that Ctrl-C cannot reach it, and
SIGTERM still ends it cleanly."""
import os
import signal
from pathlib import Path

from procs import output_within, qemu_processes, start_pytest, wait_for

NOTE = "pytest-kvm: SIGINT is ignored (started in the background)"

# Run in the background: a guest test, and in small what test_crash.py and its kind do (a
# child pytest started with procs.start_pytest, interrupted with SIGINT; no guest: seconds).
CHILD = """
import signal, subprocess, time
from procs import start_pytest

def test_a_guest(guest):
    assert guest.run("true").ok

def test_ctrl_c_reaches_a_child_pytest(tmp_path):
    (tmp_path / "test_hang.py").write_text(
        "import pathlib, time\\n"
        "def test_hang():\\n"
        "    pathlib.Path('started').touch()\\n"
        "    time.sleep(120)\\n")
    proc = start_pytest("-p", "no:cacheprovider", cwd=tmp_path)
    deadline = time.monotonic() + 60
    while not (tmp_path / "started").exists() and proc.poll() is None \\
            and time.monotonic() < deadline:
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    try:
        out = proc.communicate(timeout=30)[0]
    except subprocess.TimeoutExpired:
        proc.kill()
        out = proc.communicate()[0] + "\\n(still running 30 s after SIGINT)"
    assert proc.returncode == 2, out  # pytest's "interrupted"
    assert "KeyboardInterrupt" in out
"""


def test_a_run_started_in_the_background_passes(pytester):
    pytester.makepyfile(CHILD)
    here = str(Path(__file__).parent)  # for procs
    path = os.pathsep.join(p for p in (here, os.environ.get("PYTHONPATH")) if p)
    proc = start_pytest("-p", "no:cacheprovider", str(pytester.path), cwd=pytester.path,
                        env={**os.environ, "PYTHONPATH": path}, background=True)
    out = output_within(proc, 900)
    assert proc.returncode == 0, out
    assert "2 passed" in out
    assert out.count(NOTE) == 1


HANG = """
import os, time

def test_hang(guest):
    with open(os.environ["GUEST_NAME_FILE"], "w") as fh:
        fh.write(guest.name)
    time.sleep(600)
"""


def test_sigterm_ends_a_run_started_in_the_background(pytester, kvm):
    """What the note promises: SIGTERM ends the run as Ctrl-C would, guest and files gone."""
    pytester.makepyfile(HANG)
    name_file = pytester.path / "name"
    proc = start_pytest("-p", "no:cacheprovider", str(pytester.path), cwd=pytester.path,
                        env={**os.environ, "GUEST_NAME_FILE": str(name_file)}, background=True)
    wait_for(proc, lambda: name_file.exists() and name_file.read_text(), 900,
             "the child pytest did not bring a guest up")
    name = name_file.read_text()
    assert len(qemu_processes(name)) == 1
    proc.send_signal(signal.SIGTERM)
    out = output_within(proc, 120)
    assert proc.returncode == 2, out
    assert NOTE in out and "SIGTERM" in out
    assert qemu_processes(name) == []
    run_id = name.removeprefix("pytest-kvm-").rsplit("-", 1)[0]
    assert not (kvm.settings.cache_dir / "runs" / run_id).exists()
