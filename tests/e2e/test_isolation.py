"""``--kvm-network``: a guest in the default mode reaches the host's own 127.0.0.1 services
through 10.0.2.2; an isolated one (QEMU's ``restrict=on``) does not, and the host's SSH
forward to it still works. Both are warm clones of one golden (the mode is not in its key)."""
import re
import socket
import threading

import pytest

CONNECT = ("python3 -c 'import socket; "
           "socket.create_connection((\"10.0.2.2\", {port}), timeout=5).close()'")

CHILD = f"""
import os

CONNECT = {CONNECT!r}

def test_isolated(guest):
    assert guest.cloned
    assert guest.run("echo up").stdout.strip() == "up"  # through the host forward
    result = guest.run(CONNECT.format(port=os.environ["ISOLATION_PORT"]), timeout=60)
    assert not result.ok, result
"""


@pytest.fixture
def listener():
    """A TCP server on the host's 127.0.0.1 (a port of its own) that counts connections."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.2)
    accepted = []
    stop = threading.Event()

    def serve():
        while not stop.is_set():
            try:
                conn, peer = server.accept()
            except socket.timeout:
                continue
            accepted.append(peer)
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server.getsockname()[1], accepted
    stop.set()
    thread.join()
    server.close()


def test_default_guest_reaches_host_loopback_isolated_one_does_not(
        guest_factory, kvm, listener, pytester, monkeypatch):
    port, accepted = listener
    assert kvm.settings.network == "user"
    guest = guest_factory("debian-12")
    assert guest.cloned
    guest.run(CONNECT.format(port=port), check=True, timeout=60)
    assert len(accepted) == 1  # the default mode: the host's 127.0.0.1 is 10.0.2.2

    pytester.makepyfile(CHILD)
    monkeypatch.setenv("ISOLATION_PORT", str(port))
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--kvm-os", "debian-12",
                                           "--kvm-network", "isolated", "-o", "kvm_prepare_ahead=0",
                                           timeout=900)
    result.assert_outcomes(passed=1)
    out = result.stdout.str()
    assert "; network isolated; " in out
    assert len(accepted) == 1  # nothing came from the isolated guest
    if kvm.settings.snapshots == "on":  # the default guest's snapshot served the isolated one
        assert re.search(r"guests: 0 cold boots, 1 warm clones.*snapshots 1 reused, 0 created",
                         out), out
