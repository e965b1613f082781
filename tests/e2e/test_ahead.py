"""Many clones of one golden at once, clones made ahead, and nothing of them left behind:
after the session end, Ctrl-C and SIGKILL."""
import os
import signal
import time

from procs import output_within, qemu_processes, start_pytest, wait_for


def test_two_clones_at_once_have_their_own_identity(guest_factory, kvm):
    a = guest_factory("debian-12")
    boots = kvm.boots
    b = guest_factory("debian-12")
    assert kvm.boots == boots  # b is a clone too, not a cold boot
    assert a.cloned and b.cloned and a.golden_name == b.golden_name
    assert a.name != b.name and a.mac != b.mac and a.ssh_port != b.ssh_port
    a.run("echo a > /var/tmp/mine", check=True)
    assert not b.run("test -e /var/tmp/mine").ok  # each its own disk
    assert len(qemu_processes(a.name)) == 1 and len(qemu_processes(b.name)) == 1


CHILD = """
import os, time

def test_first(guest):
    assert guest.run("true").ok

def test_second(guest):
    with open(os.environ["GUEST_NAME_FILE"], "w") as fh:
        fh.write(guest.name)
    if os.environ.get("HANG"):
        time.sleep(600)
"""


def child(pytester, hang):
    name_file = pytester.path / "name"
    pytester.makepyfile(CHILD)
    env = {**os.environ, "GUEST_NAME_FILE": str(name_file), "HANG": "1" if hang else ""}
    proc = start_pytest("-p", "no:cacheprovider", "--kvm-reset", "clone", "-o", "kvm_prepare_ahead=1",
                        str(pytester.path), env=env, cwd=pytester.path)
    return proc, name_file, f"pytest-kvm-{proc.pid}-"


def wait_for_ahead_clone(proc, name_file, prefix):
    """Until the second test runs and the clone made ahead for a third is up beside it."""
    wait_for(proc, lambda: name_file.exists() and len(qemu_processes(prefix, prefix=True)) >= 2,
             900, "no clone was made ahead")


def test_clones_made_ahead_are_gone_after_the_session(pytester, kvm):
    proc, name_file, prefix = child(pytester, hang=False)
    out = output_within(proc, 900)
    assert proc.returncode == 0, out
    assert "made ahead" in out  # the second test got a clone that was ready
    assert qemu_processes(prefix, prefix=True) == []
    assert not list((kvm.settings.cache_dir / "runs").glob(f"{proc.pid}-*"))


def interrupted_child(pytester, sig):
    """A child pytest stopped by *sig* while a test holds a clone and one more is made ahead."""
    proc, name_file, prefix = child(pytester, hang=True)
    wait_for_ahead_clone(proc, name_file, prefix)
    proc.send_signal(sig)
    return proc, prefix


def test_clones_made_ahead_are_gone_after_ctrl_c(pytester, kvm):
    proc, prefix = interrupted_child(pytester, signal.SIGINT)
    out = output_within(proc, 120)
    assert proc.returncode == 2, out
    assert qemu_processes(prefix, prefix=True) == []
    assert not list((kvm.settings.cache_dir / "runs").glob(f"{proc.pid}-*"))


def test_clones_made_ahead_are_gone_after_sigkill(pytester, kvm):
    proc, prefix = interrupted_child(pytester, signal.SIGKILL)
    proc.communicate()
    killed = time.monotonic()
    while qemu_processes(prefix, prefix=True) and time.monotonic() - killed < 30:
        time.sleep(0.5)
    assert qemu_processes(prefix, prefix=True) == [], "clones outlived their killed owner by 30 s"
