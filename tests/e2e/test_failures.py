"""Failures a user can meet: each is one clear error, in bounded time, leaving nothing behind."""
import os
import signal
import subprocess
import threading
import time

import pytest

from pytest_kvm import BootTimeout, GuestCrashed, ImageError, SpecError, UnknownKeyword
from pytest_kvm.errors import ConnectionLost

from procs import qemu_processes




def test_boot_timeout_names_phase_and_cleans_up(kvm):
    guest = kvm.create("debian-12", boot_timeout=5, reset="boot")
    t0 = time.monotonic()
    with pytest.raises(BootTimeout) as info:
        guest.start()
    assert time.monotonic() - t0 < 30
    assert info.value.phase == "ssh-banner"
    assert "did not finish within 5 s (boot_timeout=5 given to kvm.boot;" in str(info.value)
    assert guest.destroyed and not guest.console_log()  # work dir removed
    assert qemu_processes(guest.name) == []


def test_panic_fails_fast_with_console_tail(kvm):
    # cloud-init's bootcmd crashes the kernel on purpose, well before SSH comes up
    guest = kvm.create("debian-12", reset="boot",
                       user_data={"bootcmd": ["echo c > /proc/sysrq-trigger"]})
    t0 = time.monotonic()
    with pytest.raises(GuestCrashed) as info:
        guest.start()
    elapsed = time.monotonic() - t0
    assert elapsed < info.value.timeout / 2
    message = str(info.value)
    assert "guest console (last lines)" in message
    assert "panic" in message.lower() or "stopped" in message
    assert qemu_processes(guest.name) == []


RESET_AT_EVERY_BOOT = """\
[Unit]
Description=resets the machine as soon as systemd starts (a reboot loop, on purpose)
DefaultDependencies=no

[Service]
Type=oneshot
ExecStart=/bin/sh -c 'echo b > /proc/sysrq-trigger'

[Install]
WantedBy=sysinit.target
"""


def test_reboot_loop_fails_fast_with_console_tail(kvm):
    # A unit that resets the machine (no panic text, only kernel starts one after the other)
    # as soon as systemd starts, then a reset: each boot lasts seconds. (cloud-init's bootcmd
    # on a cold boot would loop too, but comes a minute into each boot under TCG.)
    with kvm.boot("debian-12") as guest:
        guest.run("tee /etc/systemd/system/reset-loop.service >/dev/null && "
                  "systemctl enable --quiet reset-loop.service && sync",
                  sudo=True, input=RESET_AT_EVERY_BOOT, check=True)
        before = guest.console_log().count("Linux version ")
        third_start = []  # when the console showed the third kernel start since the reset

        def watch():
            while not guest.destroyed and not third_start:
                if guest.console_log().count("Linux version ") >= before + 3:
                    third_start.append(time.monotonic())
                time.sleep(0.2)

        watcher = threading.Thread(target=watch, daemon=True)
        t0 = time.monotonic()
        watcher.start()
        with pytest.raises(GuestCrashed) as info:
            guest.reset()
        raised = time.monotonic()
        watcher.join(timeout=5)
        assert raised - t0 < info.value.timeout / 2
        said = str(info.value).splitlines()[0]  # the console tail follows
        assert "rebooted 2 times (a reboot loop)" in said and "panicked" not in said
        assert third_start and raised - third_start[0] < 10  # within seconds of the loop's proof
        assert info.value.console_tail.strip() and "guest console (last lines)" in str(info.value)
    assert qemu_processes(guest.name) == []


def qemu_pid(name: str) -> int | None:
    """The PID of guest *name*'s QEMU process, if it runs."""
    ps = subprocess.run(["ps", "-eo", "pid=,args="], capture_output=True, text=True).stdout
    for line in ps.splitlines():
        pid, _, args = line.strip().partition(" ")
        if "qemu-system" in args and f"guest={name}," in args:
            return int(pid)
    return None


def test_qemu_dying_during_boot_fails_fast_with_console_tail(kvm):
    guest = kvm.create("debian-12", reset="boot")
    killed = []

    def kill_once_booting():
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not guest.destroyed:
            pid = qemu_pid(guest.name)
            if pid is not None and "Linux version " in guest.console_log():
                os.kill(pid, signal.SIGKILL)  # what the OOM killer or a QEMU crash does
                killed.append(time.monotonic())
                return
            time.sleep(0.1)

    killer = threading.Thread(target=kill_once_booting, daemon=True)
    killer.start()
    with pytest.raises(GuestCrashed) as info:
        guest.start()
    raised = time.monotonic()
    killer.join(timeout=5)
    assert killed, "the test did not get to kill QEMU"
    assert raised - killed[0] < 10
    assert "stopped (its QEMU process exited)" in str(info.value)
    assert info.value.console_tail.strip() and "guest console (last lines)" in str(info.value)
    assert guest.destroyed and qemu_processes(guest.name) == []


def test_qemu_dying_under_a_command_is_connection_lost(kvm):
    with kvm.boot("debian-12") as guest:
        pid = qemu_pid(guest.name)
        assert pid is not None
        timer = threading.Timer(2.0, os.kill, (pid, signal.SIGKILL))
        timer.start()
        t0 = time.monotonic()
        try:
            with pytest.raises(ConnectionLost, match="its domain is no longer running"):
                guest.run("sleep 300", timeout=120)
        finally:
            timer.cancel()
        assert time.monotonic() - t0 < 30
        with pytest.raises(ConnectionLost, match="no longer running"):  # and it stays so
            guest.run("true")
    assert qemu_processes(guest.name) == []


def test_missing_image_is_an_image_error_before_boot(kvm, tmp_path):
    before = len(kvm.guests)
    with pytest.raises(ImageError, match=r"nope\.qcow2 does not exist"):
        kvm.boot(image=tmp_path / "nope.qcow2")
    assert len(kvm.guests) == before


def test_unknown_os(kvm):
    with pytest.raises(ImageError, match="unknown guest OS 'plan9'; known: debian-12, debian-13"):
        kvm.boot("plan9")


def test_bad_arguments(kvm):
    with pytest.raises(SpecError, match="cpus"):
        kvm.boot(cpus=-1)
    with pytest.raises(UnknownKeyword, match="unknown keyword 'colour'"):  # also a TypeError
        kvm.boot(colour="red")


def test_user_data_that_breaks_cloud_init_is_reported(kvm):
    from pytest_kvm import CloudInitError
    guest = kvm.create("debian-12", reset="boot", user_data={"bootcmd": [["sh", "-c", "exit 3"]]})
    with pytest.raises(CloudInitError) as info:
        guest.start()
    assert "cloud-init reported an error" in str(info.value)
    assert "error" in info.value.status
    assert guest.destroyed and qemu_processes(guest.name) == []


@pytest.fixture
def tmpfs(tmp_path):
    """A small tmpfs mounted for the test (root only), unmounted afterwards."""
    mounted = []

    def mount(*options):
        target = tmp_path / f"mnt{len(mounted)}"
        target.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", ",".join(options), "tmpfs", str(target)],
                              capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
        mounted.append(target)
        return target

    yield mount
    for target in mounted:
        subprocess.run(["umount", str(target)], check=False)


@pytest.mark.parametrize("case", ["read-only", "full"])
def test_unusable_cache_dir_is_one_clear_error(kvm, tmpfs, case):
    from pytest_kvm import StorageError
    from pytest_kvm.config import Settings
    from pytest_kvm.session.session import KvmSession
    if case == "read-only":
        cache = tmpfs("size=1m", "ro")
        expected = r"is not writable \(Read-only file system\).*--kvm-cache-dir"
    else:
        cache = tmpfs("size=64k")
        fd = os.open(cache / "filler", os.O_WRONLY | os.O_CREAT)
        try:
            with pytest.raises(OSError):
                while True:
                    os.write(fd, b"x" * 4096)
        finally:
            os.close(fd)
        expected = r"no space left under .*pytest-kvm reap"
    session = KvmSession(Settings.build(cache_dir=cache, reset="boot"))
    base = kvm.images.resolve("debian-12").disk  # a disk outside the broken cache
    try:
        with pytest.raises(StorageError, match=expected):
            session.boot("debian-12", image=base)
        assert session.guests == []
    finally:
        session.close()


def test_taken_port_is_skipped(kvm, monkeypatch):
    import socket

    from pytest_kvm.guest import machine as guest_module
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen()
    taken = blocker.getsockname()[1]
    offered = iter([taken])
    real = guest_module.free_port
    monkeypatch.setattr(guest_module, "free_port", lambda: next(offered, None) or real())
    try:
        with kvm.boot("debian-12") as g:
            assert g.ssh_port != taken
            assert g.run("true").ok
    finally:
        blocker.close()


def test_unreachable_libvirt_is_one_clear_error(pytester):
    pytester.makepyfile("def test_x(guest):\n    pass\n")
    result = pytester.runpytest_subprocess("--kvm-uri", "qemu+unix:///system?socket=/nonexistent/libvirt-sock",
                                           "-p", "no:cacheprovider", timeout=300)
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*HypervisorError: opening libvirt: libvirt is not reachable at*Start libvirtd*"])
