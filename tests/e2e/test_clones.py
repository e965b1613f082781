"""Warm clones: fresh, isolated, correctly configured guests restored from a golden."""
import subprocess
import time
from pathlib import Path

import pytest

from pytest_kvm.config import DEFAULT_TB_CACHE_MIB


def test_clone_is_fresh_and_on_time(guest_factory):
    first = guest_factory("debian-12")
    assert first.cloned
    first.run("echo dirty > /var/tmp/state && sudo -n touch /etc/dirty", check=True)
    first.destroy()
    second = guest_factory("debian-12")
    assert second.cloned and second.golden_name == first.golden_name and second.name != first.name
    assert second.ssh_port > 0
    assert second.run("ls /var/tmp/state /etc/dirty").exit_code != 0
    guest_clock = float(second.run("date +%s.%N").stdout)
    assert abs(guest_clock - time.time()) < 10
    phases = [p for p, _ in second.timeline.entries]
    assert phases[:4] == ["prepare", "restore", "ssh-auth", "clock"]
    # its golden's init was over when it was saved (cloud-init's, or the plain seed's boot)
    init = second.run("cloud-init status").stdout.strip()
    assert init.endswith("disabled" if second.config.plain_seed else "done"), init
    lean_qemu(second)


def lean_qemu(guest):
    """A clone's QEMU (local): TCG's translation cache bounded, private RAM (no shares), no
    transparent huge pages (see docs/guide/goldens-and-snapshots.md, memory per guest)."""
    ps = subprocess.run(["ps", "-ww", "-eo", "pid=,args="], capture_output=True, text=True).stdout
    pid = next(line.split()[0] for line in ps.splitlines()
               if "qemu-system" in line and f"guest={guest.name}," in line)
    args = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    if guest.config.virt_type == "qemu":
        assert f"tb-size={DEFAULT_TB_CACHE_MIB}" in args
    assert "memory-backend-memfd" not in args
    if "/embed-" in args:  # forked by this process (libvirt's embedded driver)
        assert "THP_enabled:\t0" in Path(f"/proc/{pid}/status").read_text()


@pytest.mark.guest(os="debian-12", user_data={"write_files": [{"path": "/etc/clone-mark", "content": "x\n"}]})
def test_clone_with_other_user_data_gets_its_own_golden(guest, kvm):
    assert guest.cloned
    assert guest.run("cat /etc/clone-mark").stdout == "x\n"
    default = kvm.create("debian-12")  # the default golden is not this one
    try:
        assert default.golden_name != guest.golden_name
    finally:
        default.destroy()


def test_reset_boot_is_a_cold_boot(kvm):
    cold = kvm.create("debian-12", reset="boot")  # created, not started: nothing boots here
    try:
        assert not cold.cloned and cold.golden_name is None
    finally:
        cold.destroy()


def test_unique_clone_gets_its_own_hostname_and_machine_id(kvm):
    with kvm.boot("debian-12", reset="clone") as plain:
        shared = (plain.run("hostname").stdout.strip(), plain.run("cat /etc/machine-id").stdout.strip())
        assert shared[0] == plain.hostname == plain.golden_name  # a plain clone is its golden's twin
    with kvm.boot("debian-12", reset="clone", unique=True) as unique:
        assert unique.cloned
        hostname = unique.run("hostname").stdout.strip()
        machine_id = unique.run("cat /etc/machine-id").stdout.strip()
        assert hostname == unique.hostname != shared[0]
        assert unique.run("cat /etc/hostname").stdout.strip() == hostname
        assert len(machine_id) == 32 and machine_id != shared[1]
        assert "identity" in [p for p, _ in unique.timeline.entries]
        # the new name resolves locally: sudo neither asks DNS nor warns
        assert unique.run(f"getent hosts {hostname}").stdout.split()[0] == "127.0.1.1"
        assert "unable to resolve" not in unique.run("sudo -n true").stderr
