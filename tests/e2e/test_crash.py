"""Interrupted and killed runs leave nothing behind: Ctrl-C during boot, test or teardown, SIGTERM,
and SIGKILL (the watchdog reaps the guests)."""
import os
import signal
import time

from procs import ended_output, output_within, qemu_processes, start_pytest, wait_for

CHILD = """
import os, time

def test_hang(guest):
    with open(os.environ["GUEST_NAME_FILE"], "w") as fh:
        fh.write(guest.name)
    time.sleep(600)
"""


def start_child_with_guest(pytester):
    """A pytest run whose test has a running guest; returns (process, guest name)."""
    name_file = pytester.path / "name"
    pytester.makepyfile(CHILD)
    env = {**os.environ, "GUEST_NAME_FILE": str(name_file)}
    proc = start_pytest("-p", "no:cacheprovider", "--kvm-reset", "boot", str(pytester.path),
                        env=env, cwd=pytester.path)
    wait_for(proc, lambda: name_file.exists() and name_file.read_text(), 900,
             "the child pytest did not bring a guest up", interval=1)
    name = name_file.read_text()
    assert len(qemu_processes(name)) == 1
    return proc, name


def run_dir_of(kvm, name):
    return kvm.settings.cache_dir / "runs" / name.removeprefix("pytest-kvm-").rsplit("-", 1)[0]


def test_sigint_during_a_test_cleans_up(pytester, kvm):
    proc, name = start_child_with_guest(pytester)
    proc.send_signal(signal.SIGINT)
    out = output_within(proc, 120)
    assert proc.returncode == 2, out  # pytest's "interrupted"
    assert "KeyboardInterrupt" in out
    assert qemu_processes(name) == []
    assert not run_dir_of(kvm, name).exists()


def test_sigterm_during_a_test_cleans_up_like_ctrl_c(pytester, kvm):
    """What CI services send on a cancel: the session ends as for Ctrl-C."""
    proc, name = start_child_with_guest(pytester)
    proc.send_signal(signal.SIGTERM)
    out = output_within(proc, 120)
    assert proc.returncode == 2, out  # pytest's "interrupted"
    assert "KeyboardInterrupt" in out and "SIGTERM" in out
    assert qemu_processes(name) == []
    run_dir = run_dir_of(kvm, name)
    assert not run_dir.exists()
    assert not run_dir.with_name(f"{run_dir.name}.watchdog.log").exists()  # a clean end


def test_sigkill_of_pytest_leaves_no_guest(pytester, kvm):
    proc, name = start_child_with_guest(pytester)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    killed = time.monotonic()
    while qemu_processes(name) and time.monotonic() - killed < 30:
        time.sleep(0.5)
    gone_after = time.monotonic() - killed
    assert qemu_processes(name) == [], "the guest outlived its killed owner by 30 s"
    assert gone_after < 15
    run_dir = run_dir_of(kvm, name)
    log = run_dir.with_name(f"{run_dir.name}.watchdog.log")
    while (run_dir.exists() or log.exists()) and time.monotonic() - killed < 30:
        time.sleep(0.5)
    assert not run_dir.exists()
    assert not log.exists()  # a complete reap removes the watchdog's log too


def test_sigint_during_boot_cleans_up(pytester, kvm):
    pytester.makepyfile("def test_boot(guest):\n    pass\n")
    proc = start_pytest("-p", "no:cacheprovider", "--kvm-reset", "boot", str(pytester.path),
                        cwd=pytester.path)
    prefix = f"pytest-kvm-{proc.pid}-"
    deadline = time.monotonic() + 300
    while not qemu_processes(prefix, prefix=True) and time.monotonic() < deadline:
        assert proc.poll() is None, ended_output(proc)
        time.sleep(0.2)
    time.sleep(2)  # booting: the kernel is up, SSH is not
    proc.send_signal(signal.SIGINT)
    out = output_within(proc, 120)
    assert proc.returncode == 2, out
    assert not qemu_processes(prefix, prefix=True)
    assert not list((kvm.settings.cache_dir / "runs").glob(f"{proc.pid}-*"))


TEARDOWN_CHILD = """
import os, time, pytest

@pytest.fixture
def pause():
    yield
    with open(os.environ["TEARDOWN_FILE"], "w") as fh:
        fh.write("tearing down")
    time.sleep(120)  # interrupted here, while the guest is still up

def test_x(guest, pause):
    with open(os.environ["GUEST_NAME_FILE"], "w") as fh:
        fh.write(guest.name)
"""


def test_sigint_during_teardown_cleans_up(pytester, kvm):
    pytester.makepyfile(TEARDOWN_CHILD)
    marker, name_file = pytester.path / "teardown", pytester.path / "name"
    env = {**os.environ, "TEARDOWN_FILE": str(marker), "GUEST_NAME_FILE": str(name_file)}
    proc = start_pytest("-p", "no:cacheprovider", "--kvm-reset", "boot", str(pytester.path),
                        env=env, cwd=pytester.path)
    deadline = time.monotonic() + 900
    while not marker.exists():
        assert proc.poll() is None and time.monotonic() < deadline, ended_output(proc)
        time.sleep(0.5)
    name = name_file.read_text()
    assert len(qemu_processes(name)) == 1
    proc.send_signal(signal.SIGINT)
    out = output_within(proc, 120)
    assert proc.returncode == 2, out
    assert qemu_processes(name) == []
    assert not run_dir_of(kvm, name).exists()
