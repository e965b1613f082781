"""--kvm-host values: parsing, our own parameter taken off, workers spread over hosts."""
import os
import pwd
from pathlib import Path

import pytest

from pytest_kvm.hosts.uris import HostError, check_uri, host_for_worker, parse_host, worker_index


def test_a_qemu_ssh_uri_names_user_host_port_key_and_known_hosts():
    host = parse_host("qemu+ssh://ci@hv1:2222/system?keyfile=/k/id&known_hosts=/k/kh&slots=3")
    assert host.uri == "qemu+ssh://ci@hv1:2222/system?keyfile=/k/id&known_hosts=/k/kh"
    assert (host.user, host.hostname, host.port, host.slots) == ("ci", "hv1", 2222, 3)
    assert host.key_file == Path("/k/id") and host.known_hosts == Path("/k/kh")
    assert host.label == "ci@hv1:2222"


def test_defaults_port_22_one_slot_and_the_users_known_hosts(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))  # OpenSSH ignores it: so do we
    host = parse_host("qemu+libssh://ci@hv1/system")
    assert host.uri == "qemu+libssh://ci@hv1/system" and host.slots == 1 and host.port == 22
    home = Path(pwd.getpwuid(os.getuid()).pw_dir)
    assert host.key_file is None and host.known_hosts == home / ".ssh" / "known_hosts"
    assert host.label == "ci@hv1"


@pytest.mark.parametrize("text, why", [
    ("qemu:///system", "over SSH"),
    ("qemu+tcp://hv1/system", "over SSH"),
    ("qemu+ssh:///system", "names no host"),
    ("qemu+ssh://ci:hunter2@hv1/system", "no password"),
    ("qemu+ssh://ci@hv1/system?slots=0", "positive whole number"),
    ("qemu+ssh://ci@hv1/system?slots=two", "positive whole number"),
])
def test_unusable_values_say_why(text, why):
    with pytest.raises(HostError, match=why) as info:
        parse_host(text)
    assert "hunter2" not in str(info.value)


@pytest.mark.parametrize("text, why", [
    ("qemu+ssh://ci@hv1/system?keyfile=/k/id%0AProxyCommand%20touch%20/tmp/x", "control"),
    ("qemu+ssh://ci@hv1/system?known_hosts=/k/kh%0D", "control"),
    ("qemu+ssh://ci@hv1/system?no_tty=1%00", "control"),
    ("qemu+ssh://ci@hv1/system?keyfile=-oProxyCommand=x", "start with '-'"),
    ("qemu+ssh://ci@hv1/system?known_hosts=/k/%25h", "hold '%'"),
    ("qemu+ssh://-oProxyCommand=x@hv1/system", "the user"),
    ("qemu+ssh://ci%0A@hv1/system", "the user"),
    ("qemu+ssh://ci@-hv1/system", "the host name"),
    ("qemu+ssh://ci@hv%0A1/system", "the host name"),
])
def test_values_that_would_reach_ssh_config_unsafely_are_refused(text, why):
    """A %0A in a parameter once injected lines into the generated ssh_config's
    ProxyCommand; a leading '-' would be an option to ssh."""
    with pytest.raises(HostError, match=why):
        parse_host(text)


def test_ipv6_hosts_and_plain_names_pass_the_check():
    assert parse_host("qemu+ssh://ci@[::1]:2222/system").hostname == "::1"
    assert parse_host("qemu+ssh://ci_2.x-y@hv-1.example.org/system").user == "ci_2.x-y"


def test_workers_spread_by_weight_smoothly():
    a = parse_host("qemu+ssh://ci@a/system?slots=2")
    b = parse_host("qemu+ssh://ci@b/system")
    assert [host_for_worker((a, b), i).hostname for i in range(6)] == list("abaaba")
    assert [host_for_worker((a,), i).hostname for i in range(3)] == ["a"] * 3


@pytest.mark.parametrize("worker, index", [(None, 0), ("master", 0), ("gw0", 0), ("gw7", 7)])
def test_worker_index(worker, index):
    assert worker_index(worker) == index


@pytest.mark.parametrize("text", ["qemu:///system", "qemu:///session", "qemu+unix:///system?socket=/s",
                                  "qemu+tcp://hv1:16509/system", "qemu:///embed?root=/tmp/r"])
def test_a_qemu_uri_is_a_kvm_uri(text):
    assert check_uri(text) == text


@pytest.mark.parametrize("text, why", [
    ("bogus://", "not a libvirt URI of the QEMU driver: give qemu[+TRANSPORT]://"),
    ("test:///default", "not a libvirt URI of the QEMU driver"),
    ("qemu", "not a libvirt URI of the QEMU driver"),
    ("qemu+foo:///system", "libvirt has no transport 'foo'"),
    ("qemu+ssh://ci@hv1/system", "a host reached over SSH is a --kvm-host (--kvm-host qemu+ssh://"),
    ("qemu:///nosuch", "the QEMU driver's paths are /system, /session, /embed, not '/nosuch'"),
    ("qemu://hv1:xx/system", "Port could not be cast"),
    ("qemu:///embed", "the embedded driver needs ?root=DIR"),
])
def test_an_unusable_kvm_uri_says_why(text, why):
    with pytest.raises(HostError) as info:
        check_uri(text)
    assert why in str(info.value) and repr(text) in str(info.value)
