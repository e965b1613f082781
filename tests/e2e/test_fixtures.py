"""The per-test fixtures: guest (parametrized by --kvm-os), the marker, guest_factory."""
import pytest

CODENAMES = {"debian-12": "bookworm", "debian-13": "trixie"}


def test_guest_runs_the_requested_os(guest):
    result = guest.run("uname -s")
    assert result.exit_code == 0
    assert result.stdout.strip() == "Linux"
    codename = guest.run(". /etc/os-release && echo $VERSION_CODENAME", check=True).stdout.strip()
    assert codename == CODENAMES[guest.os]


@pytest.mark.guest(os="debian-12", memory_mib=640, cpus=2, reset="boot", user_data={
    "write_files": [{"path": "/etc/from-user-data", "content": "written\n"}],
    "runcmd": [["sh", "-c", "echo ran > /run/runcmd-marker"]],
    "users": [{"name": "alice", "lock_passwd": True}],
})
def test_marker_user_data_memory_cpus(guest):
    assert not guest.cloned
    assert guest.run("cat /etc/from-user-data").stdout == "written\n"
    assert guest.run("cat /run/runcmd-marker").stdout == "ran\n"
    assert guest.run("id -un alice").stdout.strip() == "alice"
    assert guest.run("nproc").stdout.strip() == "2"
    mem_kib = int(guest.run("awk '/MemTotal/ {print $2}' /proc/meminfo").stdout)
    assert 500 * 1024 < mem_kib <= 640 * 1024


def test_guest_factory_two_isolated_guests(guest_factory, kvm):
    boots = kvm.boots
    a = guest_factory("debian-12")
    b = guest_factory("debian-12")  # two clones of one golden, alive at once
    assert a.cloned and b.cloned and a.golden_name == b.golden_name
    assert kvm.boots <= boots + 1  # at most the golden, never a cold boot for b
    assert a.name != b.name and a.ssh_port != b.ssh_port
    a.run("echo a > /var/tmp/mine", check=True)
    assert not b.run("test -e /var/tmp/mine").ok
    assert b.run("hostname").stdout.strip() == b.hostname
    assert {g.name for g in kvm.guests} >= {a.name, b.name}
