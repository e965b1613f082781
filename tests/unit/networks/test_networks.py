"""Guest networks without guests: the switch process on real Unix sockets, address
allocation, hosts-file lines, the NIC's QMP commands and the keywords."""
import ipaddress
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pytest_kvm.vm.domain import PRIVATE_NIC_SLOTS, private_nic_commands
from pytest_kvm.families import family
from pytest_kvm.networks.switch import HUB_SOCKET, Switch
from pytest_kvm.networks.segments import LocalSite, Network, NetworkError, Networks, hosts_lines
from pytest_kvm.spec import SpecError, guest_request

A, B, C = (bytes.fromhex(h) for h in ("525400000001", "525400000002", "525400000003"))
BROADCAST = b"\xff" * 6


def frame(dst: bytes, src: bytes, payload: bytes = b"hello") -> bytes:
    return dst + src + b"\x08\x00" + payload


class FakeGuest:
    def __init__(self, name, alias=None):
        self.name = name
        self.network_names = (alias, name) if alias else (name,)


# -- the switch's decisions ------------------------------------------------------------
def test_switch_floods_broadcast_and_unknown_to_every_other_member():
    switch = Switch()
    members = {"a", "b", "c"}
    assert switch.destinations(frame(BROADCAST, A), "a", members) == ["b", "c"]
    assert switch.destinations(frame(C, A), "a", members) == ["b", "c"]  # C not learned yet


def test_switch_sends_unicast_only_to_the_learned_owner():
    switch = Switch()
    members = {"a", "b", "c"}
    switch.destinations(frame(BROADCAST, B), "b", members)  # learns B behind "b"
    assert switch.destinations(frame(B, A), "a", members) == ["b"]
    assert switch.destinations(frame(B, B), "b", members) == []  # never back to the sender


def test_switch_floods_again_when_the_owner_left():
    switch = Switch()
    switch.destinations(frame(BROADCAST, B), "b", {"a", "b", "c"})
    assert switch.destinations(frame(B, A), "a", {"a", "c"}) == ["c"]
    switch.forget("b")
    assert switch.destinations(frame(B, A), "a", {"a", "b", "c"}) == ["b", "c"]


def test_switch_table_is_capped_against_spoofed_macs():
    """Issue 23: a guest sending from ever new MACs fills no more than MAX_MACS entries; the
    least recently seen go first, a member that keeps talking stays learned."""
    from pytest_kvm.networks.switch import MAX_MACS
    switch = Switch()
    members = {"a", "b", "c"}
    for n in range(3 * MAX_MACS):
        if n % 1000 == 0:
            switch.destinations(frame(BROADCAST, B), "b", members)
        switch.destinations(frame(BROADCAST, b"\x02" + n.to_bytes(5, "big")), "c", members)
    assert switch.learned == MAX_MACS
    assert switch.destinations(frame(B, A), "a", members) == ["b"]


def test_switch_drops_runts():
    assert Switch().destinations(b"\xff" * 10, "a", {"a", "b"}) == []


# -- the switch process ----------------------------------------------------------------
@pytest.fixture
def hub(tmp_path):
    directory = tmp_path / "net"
    directory.mkdir()
    proc = subprocess.Popen([sys.executable, "-m", "pytest_kvm.networks.switch", str(directory)])
    deadline = time.monotonic() + 10
    while not (directory / HUB_SOCKET).exists():
        assert proc.poll() is None and time.monotonic() < deadline, "the hub did not start"
        time.sleep(0.02)
    yield directory, proc
    proc.kill()
    proc.wait()


def member(directory: Path, name: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(directory / f"{name}.sock"))
    sock.settimeout(5)
    return sock


def test_hub_process_forwards_between_members_only(hub, tmp_path):
    directory, _ = hub
    a, b = member(directory, "a"), member(directory, "b")
    outsider = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    outsider.bind(str(tmp_path / "outsider.sock"))  # not in the network's directory
    outsider.settimeout(1)
    time.sleep(1.2)  # the hub re-reads its directory at least once a second
    a.sendto(frame(BROADCAST, A, b"to all"), str(directory / HUB_SOCKET))
    assert b.recv(65536) == frame(BROADCAST, A, b"to all")
    b.sendto(frame(A, B, b"to a"), str(directory / HUB_SOCKET))
    assert a.recv(65536) == frame(A, B, b"to a")
    with pytest.raises(socket.timeout):
        outsider.recv(65536)


def test_hub_process_stops_sending_to_a_member_whose_socket_is_removed(hub):
    directory, _ = hub
    a, b, c = member(directory, "a"), member(directory, "b"), member(directory, "c")
    time.sleep(1.2)
    (directory / "c.sock").unlink()  # what Networks.leave does when a guest is destroyed
    time.sleep(0.1)
    a.sendto(frame(BROADCAST, A), str(directory / HUB_SOCKET))
    assert b.recv(65536) == frame(BROADCAST, A)
    c.settimeout(1)
    with pytest.raises(socket.timeout):
        c.recv(65536)


def test_hub_process_exits_when_its_directory_is_removed(hub):
    directory, proc = hub
    shutil.rmtree(directory)
    assert proc.wait(timeout=10) == 0


# -- addresses and names -----------------------------------------------------------------
def network(tmp_path, number=1):
    ula = ipaddress.IPv6Network("fd12:3456:789a::/48")
    return Network("lan", number, tmp_path / str(number), ula)


def test_addresses_are_link_local_v4_and_unique_local_v6(tmp_path):
    net = network(tmp_path, 3)
    a = net.attach(FakeGuest("g1"), 0)
    b = net.attach(FakeGuest("g2"), 0)
    assert (a.ipv4, b.ipv4) == ("169.254.3.2", "169.254.3.3")
    assert (a.ipv6, b.ipv6) == ("fd12:3456:789a:3::2", "fd12:3456:789a:3::3")
    assert ipaddress.ip_address(a.ipv4).is_link_local
    assert ipaddress.ip_address(a.ipv6) in ipaddress.ip_network("fc00::/7")
    assert a.mac != b.mac and a.mac.startswith("52:54:00:")
    assert a.socket.parent == b.socket.parent == net.directory
    assert a.socket != b.socket and a.hub == net.hub_socket
    assert (a.scope4, a.scope6) == ("169.254.0.0/16", "fd12:3456:789a::/48")


def test_a_freed_address_is_given_again_only_after_the_others(tmp_path):
    net = network(tmp_path)
    first = net.attach(FakeGuest("g1"), 0)
    net.attach(FakeGuest("g2"), 0)
    net.detach("g1")
    assert net.attach(FakeGuest("g3"), 0).ipv4 == "169.254.1.4"  # not g1's .2 at once
    for n in range(4, 255):
        net.attach(FakeGuest(f"h{n}"), 0)  # .5 ... .254, then the free .2
    assert net.members["h254"][1].ipv4 == first.ipv4
    with pytest.raises(NetworkError, match="full"):
        net.attach(FakeGuest("one-too-many"), 0)


def test_hosts_lines_name_every_member_with_and_without_the_network(tmp_path):
    net = network(tmp_path)
    net.attach(FakeGuest("pytest-kvm-1", alias="server"), 0)
    net.attach(FakeGuest("pytest-kvm-2"), 0)
    assert hosts_lines(net) == [
        "169.254.1.2 server server.lan pytest-kvm-1 pytest-kvm-1.lan",
        "fd12:3456:789a:1::2 server server.lan pytest-kvm-1 pytest-kvm-1.lan",
        "169.254.1.3 pytest-kvm-2 pytest-kvm-2.lan",
        "fd12:3456:789a:1::3 pytest-kvm-2 pytest-kvm-2.lan",
    ]


def test_networks_number_subnets_apart_and_refuse_a_taken_name(tmp_path, monkeypatch):
    monkeypatch.setattr(Network, "start", lambda self: None)  # no switch process needed here
    nets = Networks(LocalSite(tmp_path / "networks"))
    a, b = FakeGuest("g1", alias="a"), FakeGuest("g2", alias="b")
    first, second = nets.join(a, ("lan", "db"))
    assert (first.index, second.index) == (0, 1)
    assert first.ipv4.startswith("169.254.1.") and second.ipv4.startswith("169.254.2.")
    assert nets.join(b, ("db",))[0].ipv4 == "169.254.2.3"
    assert [g.name for g in nets.neighbours(b)] == ["g1", "g2"]
    assert not any("169.254.1." in line for line in nets.hosts_for(b))  # b is not on lan
    with pytest.raises(NetworkError, match="'a' is taken on network lan"):
        nets.join(FakeGuest("g3", alias="a"), ("lan",))
    assert "g3" not in nets._networks["lan"].members  # a failed join leaves nothing
    nets.leave("g1")
    assert [g.name for g in nets.neighbours(b)] == ["g2"]


def test_network_refuses_socket_paths_too_long_for_unix_sockets(tmp_path):
    deep = tmp_path / ("d" * 100)
    with pytest.raises(NetworkError, match="PYTEST_KVM_CACHE_DIR"):
        Network("lan", 1, deep / "1", ipaddress.IPv6Network("fd00::/48")).start()


# -- the NIC and the guest's commands -------------------------------------------------------
def test_private_nic_commands_plug_a_dgram_netdev_and_a_nic_in_a_reserved_slot(tmp_path):
    netdev, device = private_nic_commands(1, "52:54:00:aa:bb:cc", "virtio-net-pci",
                                          tmp_path / "me.sock", tmp_path / "hub.sock")
    assert netdev == {"execute": "netdev_add", "arguments": {
        "type": "dgram", "id": "pytest-kvm-net1",
        "local": {"type": "unix", "path": str(tmp_path / "me.sock")},
        "remote": {"type": "unix", "path": str(tmp_path / "hub.sock")}}}
    assert device["execute"] == "device_add"
    assert device["arguments"] == {"driver": "virtio-net-pci", "id": "pytest-kvm-nic1",
                                   "netdev": "pytest-kvm-net1", "mac": "52:54:00:aa:bb:cc",
                                   "bus": "pci.0", "addr": hex(PRIVATE_NIC_SLOTS[1])}
    assert "0x1e" not in [hex(s) for s in PRIVATE_NIC_SLOTS]  # the user NIC's slot
    with pytest.raises(ValueError, match="at most"):
        private_nic_commands(len(PRIVATE_NIC_SLOTS), "52:54:00:aa:bb:cc", "virtio-net-pci",
                             tmp_path / "x", tmp_path / "y")


def test_linux_network_command_runs_in_bash_with_quoted_values(tmp_path):
    linux = family("linux")
    command = linux.network_command.format(mac="'52:54:00:aa:bb:cc'", ipv4="169.254.1.2",
                                           prefix4=24, ipv6="fd00::2", prefix6=64,
                                           scope4="169.254.0.0/16", scope6="fd00::/48",
                                           mtu=9000)
    check = subprocess.run(["bash", "-n", "-c", command], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    assert "ip addr replace 169.254.1.2/24" in command
    assert "ip route replace unreachable 169.254.0.0/16" in command
    assert "mtu 9000 up" in command
    hosts = linux.hosts_command.format(lines="'169.254.1.2 a a.lan'")
    assert subprocess.run(["bash", "-n", "-c", hosts]).returncode == 0
    assert family("windows").network_command is None


def test_hosts_command_replaces_only_its_own_lines(tmp_path):
    hosts = tmp_path / "hosts"
    hosts.write_text("127.0.0.1 localhost\n")
    command = family("linux").hosts_command.replace("/etc/hosts", str(hosts))
    for lines in ("'169.254.1.2 a a.lan' '169.254.1.3 b b.lan'", "'169.254.1.4 c c.lan'"):
        subprocess.run(["bash", "-c", command.format(lines=lines)], check=True)
    assert hosts.read_text() == "127.0.0.1 localhost\n169.254.1.4 c c.lan # pytest-kvm network\n"


def test_networks_keyword_takes_names_or_one_name():
    assert guest_request(networks=("lan", "db"), name="web").networks == ("lan", "db")
    assert guest_request(networks="lan").networks == ("lan",)
    assert guest_request().networks == ()
    for bad, message in (({"networks": ("a b",)}, "network name"), ({"networks": ["x", "x"]}, "twice"),
                         ({"networks": 3}, "list of network names"), ({"name": "a.b"}, "name")):
        with pytest.raises(SpecError, match=message):
            guest_request(**bad)


def test_session_end_stops_switches_but_those_of_kept_guests(tmp_path):
    nets = Networks(LocalSite(tmp_path / "networks"))
    kept, gone = FakeGuest("kept"), FakeGuest("gone")
    nets.join(kept, ("lan",))
    nets.join(gone, ("other",))
    lan, other = nets._networks["lan"], nets._networks["other"]
    try:
        nets.close(keep={"kept"})  # --kvm-keep kept "kept"
        assert other._hub.proc.poll() is not None and not other.hub_socket.exists()
        assert lan._hub.proc.poll() is None and lan.hub_socket.exists()
        shutil.rmtree(tmp_path / "networks")  # what reaping the kept guest's run does
        assert lan._hub.proc.wait(timeout=10) == 0
    finally:
        lan.stop()
        other.stop()
