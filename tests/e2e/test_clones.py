"""Warm clones: fresh, isolated, correctly configured guests restored from a golden."""
import time

import pytest


def test_clone_is_fresh_and_on_time(guest_factory):
    first = guest_factory("debian-12")
    assert first.cloned
    first.run("echo dirty > /var/tmp/state && sudo -n touch /etc/dirty", check=True)
    first.destroy()
    second = guest_factory("debian-12")
    assert second.cloned and second.name == first.name  # same golden, one clone at a time
    assert second.ssh_port > 0
    assert second.run("ls /var/tmp/state /etc/dirty").exit_code != 0
    guest_clock = float(second.run("date +%s.%N").stdout)
    assert abs(guest_clock - time.time()) < 10
    phases = [p for p, _ in second.timeline.entries]
    assert phases[:4] == ["prepare", "restore", "ssh-auth", "clock"]
    assert second.run("cloud-init status").stdout.strip().endswith("done")


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
