"""Private networks between guests (``networks=``): a server and its clients by name and by
address, warm clones among them, two networks that cannot see each other, two Debian
releases on one network, and nothing left after the session, Ctrl-C or SIGKILL."""
import os
import signal
import subprocess
import time

import pytest

from procs import output_within, qemu_processes, start_pytest, wait_for

SERVE = ("mkdir -p /tmp/www && echo hello-from-server > /tmp/www/index.html && "
         "{ setsid python3 -m http.server --directory /tmp/www --bind :: 8000 "
         ">/tmp/http.log 2>&1 </dev/null & }")
UP = "for i in $(seq 100); do curl -fsS http://localhost:8000/ >/dev/null && exit 0; sleep 0.2; done; exit 1"


def hub_processes(run_prefix: str) -> list[str]:
    """Command lines of switch processes whose network lives under a run named *run_prefix*."""
    ps = subprocess.run(["ps", "-ww", "-eo", "args"], capture_output=True, text=True).stdout
    return [line for line in ps.splitlines() if "pytest_kvm.networks.switch" in line and f"/runs/{run_prefix}" in line]


def nic(guest, network: str) -> str:
    """The name of the guest's interface on *network* (names follow PCI order at boot)."""
    out = guest.run("ip -o -4 addr show", check=True).stdout
    return next(line.split()[1] for line in out.splitlines()
                if f" {guest.address(network)}/" in line)


def test_a_server_and_two_clients_reach_each_other_by_name_and_address(guest_factory, kvm):
    server = guest_factory("debian-12", networks=("lan",), name="server")
    clients = [guest_factory("debian-12", networks=["lan"], name=f"client{n}") for n in (1, 2)]
    assert all(g.cloned for g in [server, *clients])  # warm clones of one golden
    macs = {g.run(f"cat /sys/class/net/{nic(g, 'lan')}/address", check=True).stdout.strip()
            for g in [server, *clients]}
    assert len(macs) == 3  # each clone its own MAC on the network, not its golden's
    addresses = [server.address("lan"), *(c.address("lan") for c in clients)]
    assert len(set(addresses)) == 3 and all(a.startswith("169.254.") for a in addresses)
    server.run(SERVE, sudo=True, check=True)
    server.run(UP, check=True, timeout=60)
    for client in clients:
        assert client.run("curl -fsS http://server:8000/", check=True).stdout.strip() == "hello-from-server"
        by_v4 = client.run(f"curl -fsS http://{server.address('lan')}:8000/", check=True)
        by_v6 = client.run(f"curl -fsS 'http://[{server.address('lan', version=6)}]:8000/'", check=True)
        assert by_v4.stdout == by_v6.stdout
        assert client.run("ping -c1 -W5 server.lan", check=True).ok
        assert client.run(f"ping -c1 -W5 {server.name}", check=True).ok  # its own name works too
    # the first client learnt of the second when it joined: hosts files are kept up to date
    assert clients[0].run("getent hosts client2", check=True).stdout.split()[0] in (
        clients[1].address("lan"), clients[1].address("lan", version=6))
    with pytest.raises(Exception, match="not on network 'wan'"):
        server.address("wan")


def test_two_networks_do_not_see_each_other(guest_factory):
    a = guest_factory("debian-12", networks=("neta",), name="a")
    b = guest_factory("debian-12", networks=("netb",), name="b")
    both = guest_factory("debian-12", networks=("neta", "netb"), name="both")
    assert both.run("ping -c1 -W5 a && ping -c1 -W5 b", check=True).ok
    assert a.run("getent hosts b").exit_code != 0  # b is not named on a's network
    assert not a.run(f"ping -c1 -W2 {b.address('netb')}").ok
    # even with an address in b's subnet, a's NIC is on another segment: nothing arrives
    subnet_b = b.address("netb").rsplit(".", 1)[0]
    a.run(f"ip addr add {subnet_b}.250/24 dev {nic(a, 'neta')}", sudo=True, check=True)
    assert not a.run(f"ping -c2 -W2 {b.address('netb')}").ok
    assert both.run(f"ping -c1 -W5 {b.address('netb')}", check=True).ok


def test_debian_12_and_13_on_one_network(guest_factory):
    old = guest_factory("debian-12", networks=("mixed",), name="bookworm")
    new = guest_factory("debian-13", networks=("mixed",), name="trixie")
    assert new.run("ping -c1 -W5 bookworm", check=True).ok
    assert old.run("ping -c1 -W5 trixie", check=True).ok
    assert "13" in new.run("cat /etc/debian_version", check=True).stdout.split(".")[0]


def test_a_rebooted_guest_is_on_its_network_again(guest_factory):
    a = guest_factory("debian-12", networks=("lan",), name="a")
    b = guest_factory("debian-12", networks=("lan",), name="b")
    b.reboot()  # the private NIC is named first now (lower PCI slot): the user NIC still works
    assert b.address("lan") in b.run("ip -o -4 addr show", check=True).stdout
    assert a.run("ping -c1 -W5 b", check=True).ok
    assert b.run("ping -c1 -W5 a", check=True).ok


CHILD = """
import os, time

def test_network(guest_factory):
    a = guest_factory("debian-12", networks=("lan",), name="a")
    b = guest_factory("debian-12", networks=("lan",), name="b")
    assert b.run("ping -c1 -W5 a").ok
    open(os.environ["READY_FILE"], "w").close()
    if os.environ.get("HANG"):
        time.sleep(600)
"""


def networked_child(pytester, hang: bool):
    ready = pytester.path / "ready"
    pytester.makepyfile(CHILD)
    env = {**os.environ, "READY_FILE": str(ready), "HANG": "1" if hang else ""}
    proc = start_pytest("-p", "no:cacheprovider", "-x", str(pytester.path), env=env, cwd=pytester.path)
    return proc, ready


def wait_until_ready(proc, ready):
    wait_for(proc, ready.exists, 900, "the child never got its network up")
    assert hub_processes(f"{proc.pid}-"), "no switch process while the network is in use"


def assert_nothing_left(proc, kvm, within: float):
    prefix = f"pytest-kvm-{proc.pid}-"
    end = time.monotonic() + within
    while (qemu_processes(prefix, prefix=True) or hub_processes(f"{proc.pid}-")) \
            and time.monotonic() < end:
        time.sleep(0.5)
    assert qemu_processes(prefix, prefix=True) == []
    assert hub_processes(f"{proc.pid}-") == []
    assert not list((kvm.settings.cache_dir / "runs").glob(f"{proc.pid}-*"))


def test_nothing_of_a_network_is_left_after_the_session(pytester, kvm):
    proc, _ = networked_child(pytester, hang=False)
    out = output_within(proc, 900)
    assert proc.returncode == 0, out
    assert_nothing_left(proc, kvm, within=0)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["ctrl-c", "sigkill"])
def test_nothing_of_a_network_is_left_after_an_interrupt(pytester, kvm, sig):
    proc, ready = networked_child(pytester, hang=True)
    wait_until_ready(proc, ready)
    proc.send_signal(sig)
    output_within(proc, 120)
    assert_nothing_left(proc, kvm, within=30)
