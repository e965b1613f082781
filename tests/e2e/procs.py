"""Child pytest runs and the process table, for end-to-end tests.

A child started here gets SIGINT and SIGTERM set by the test, not inherited: a test
suite started as a background job (``cmd &`` in a script, ``nohup``, some CI runners)
runs with SIGINT ignored, a child inherits that across ``exec`` (``restore_signals``
does not reset it), Python then installs no KeyboardInterrupt handler, and a test's
SIGINT would do nothing."""
import subprocess
import sys
import time

# Runs first in the child's process (same PID): sets SIGINT to the disposition named in
# argv[1] and SIGTERM to its default, then becomes ``python argv[2:]``.
_WITH_SIGNALS = ("import os, signal, sys; "
                 "signal.signal(signal.SIGINT, getattr(signal, sys.argv[1])); "
                 "signal.signal(signal.SIGTERM, signal.SIG_DFL); "
                 "os.execv(sys.executable, [sys.executable, *sys.argv[2:]])")


def start_pytest(*args: str, cwd, env=None, background: bool = False) -> subprocess.Popen:
    """A child ``python -m pytest *args`` (stdout and stderr in one text pipe), as from a
    terminal: SIGINT and SIGTERM at their defaults, so Ctrl-C (SIGINT) interrupts it,
    whatever this process inherited. ``background=True`` starts it as CI and scripts do:
    SIGINT ignored, no standard input, its own session (no controlling terminal)."""
    sigint = "SIG_IGN" if background else "SIG_DFL"
    return subprocess.Popen([sys.executable, "-c", _WITH_SIGNALS, sigint, "-m", "pytest", *args],
                            cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, stdin=subprocess.DEVNULL if background else None,
                            start_new_session=background)


def qemu_processes(name: str, *, prefix: bool = False) -> list[str]:
    """Command lines of running QEMU processes of guest *name* (or of every guest whose name
    starts with *name*, with ``prefix=True``)."""
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    needle = f"guest={name}" if prefix else f"guest={name},"
    return [line for line in ps.splitlines() if "qemu-system" in line and needle in line]


def ended_output(proc: subprocess.Popen, grace: float = 60.0) -> str:
    """The output of child *proc*, ended first if it still runs (SIGTERM, which the plugin
    takes like Ctrl-C, then SIGKILL after *grace* seconds): a failed test leaves no child
    pytest, and no guest of one, behind."""
    if proc.poll() is None:
        proc.terminate()
        try:
            return proc.communicate(timeout=grace)[0]
        except subprocess.TimeoutExpired:
            proc.kill()
    return proc.communicate()[0]


def output_within(proc: subprocess.Popen, timeout: float) -> str:
    """The output of child *proc* once it ended, within *timeout* seconds; else it is ended
    (see :func:`ended_output`) and the test fails with what it printed."""
    try:
        return proc.communicate(timeout=timeout)[0]
    except subprocess.TimeoutExpired:
        raise AssertionError(f"the child pytest still ran after {timeout:g} s:\n"
                             f"{ended_output(proc)}") from None


def wait_for(proc: subprocess.Popen, ready, timeout: float, failure: str,
             interval: float = 0.5) -> None:
    """Poll ``ready()`` until it is true while child *proc* runs; if the child ends first or
    *timeout* seconds pass, it is ended (see :func:`ended_output`) and the test fails with
    *failure* and what the child printed."""
    deadline = time.monotonic() + timeout
    while not ready():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"{failure}:\n{ended_output(proc)}")
        time.sleep(interval)
