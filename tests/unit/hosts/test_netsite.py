"""A remote host's networks (pytest_kvm/hosts/netsite.py): the switch as the host runs it
(its source piped to a bare python3, its standard input its lifeline), and the sweep of
dead runs' network directories."""
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from pytest_kvm.hosts.netsite import BOOTSTRAP, NET_DIR_PREFIX, RemoteSite, \
    remove_dead_runs_networks
from pytest_kvm.hosts.volumes import owner_volume
from pytest_kvm.networks import switch
from pytest_kvm.networks.segments import LocalSite, NetworkError, Networks


def test_the_piped_switch_listens_and_ends_with_its_standard_input(tmp_path):
    """What the host runs: `python3 -c BOOTSTRAP LENGTH --stdin-lifeline DIR` with the
    module's source on stdin, from a directory where pytest_kvm cannot be imported."""
    run = tmp_path / "run"
    run.mkdir()
    directory = run / "1"
    directory.mkdir()
    source = Path(switch.__file__).read_bytes()
    proc = subprocess.Popen([sys.executable, "-I", "-c", BOOTSTRAP, str(len(source)),
                             switch.LIFELINE, str(directory)], cwd=tmp_path,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        proc.stdin.write(source)
        proc.stdin.flush()
        assert proc.stdout.readline() == f"{switch.READY}\n".encode()
        hub = directory / switch.HUB_SOCKET
        assert stat.S_IMODE(hub.stat().st_mode) == 0o666  # QEMU may be another user
        proc.stdin.close()  # the SSH channel closed
        assert proc.wait(timeout=10) == 0
    finally:
        proc.kill()
        proc.wait()
    assert not run.exists()  # its directory, and the run's once empty


class FakeLink:
    def __init__(self, found=()):
        self.commands = []
        self.found = found
        self.host = type("H", (), {"user": "ci"})()

    def run(self, argv, timeout=600.0):
        self.commands.append(argv)
        return "\n".join(self.found) + "\n" if argv[0] == "find" else ""


class FakeHv:
    def __init__(self, volumes):
        self._volumes = volumes

    def volumes(self, pool):
        return {name: f"/pool/{name}" for name in self._volumes}


def test_the_sweep_removes_only_network_directories_of_runs_without_a_record():
    link = FakeLink([f"{NET_DIR_PREFIX}live-1-aa", f"{NET_DIR_PREFIX}dead-2-bb"])
    removed = remove_dead_runs_networks(link, FakeHv([owner_volume("live-1-aa"), "base-x.qcow2"]))
    assert removed == [f"{NET_DIR_PREFIX}dead-2-bb"]
    assert ["rm", "-rf", "--", f"{NET_DIR_PREFIX}dead-2-bb"] in link.commands
    assert not any(f"{NET_DIR_PREFIX}live-1-aa" in c for c in link.commands[1:])


def test_a_remote_site_without_a_connection_says_so():
    site = RemoteSite(lambda: None, "1-aa", "ci@hv1")
    assert str(site.root) == f"{NET_DIR_PREFIX}1-aa"
    with pytest.raises(NetworkError, match="host ci@hv1 is not connected"):
        site.start_switch("lan", site.root / "1")


class Placed:
    def __init__(self, name, host):
        self.name = name
        self.host = host
        self.network_names = (name,)


def test_a_guest_of_another_host_cannot_join_the_sessions_networks(tmp_path, monkeypatch):
    from pytest_kvm.networks.segments import Network
    monkeypatch.setattr(Network, "start", lambda self: None)
    here, there = type("Here", (), {"where": " on ci@hv1"})(), type("There", (), {"where": " on ci@hv2"})()
    nets = Networks(LocalSite(tmp_path), here)
    nets.join(Placed("a", here), ("lan",))
    with pytest.raises(NetworkError, match="runs on ci@hv2 but the session's networks are on "
                                           "ci@hv1: the guests of one network must run on one host"):
        nets.join(Placed("b", there), ("lan",))
    assert list(nets._networks["lan"].members) == ["a"]
