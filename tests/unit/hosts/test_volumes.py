"""Remote host logic that needs no host: volume and pool XML, which volumes a sweep
deletes, and the OpenSSH command lines through a host."""
import xml.etree.ElementTree as ET
from pathlib import Path

from pytest_kvm.hosts.link import HostLink
from pytest_kvm.hosts.uris import parse_host
from pytest_kvm.vm.hypervisor import pool_xml, volume_xml
from pytest_kvm.hosts.volumes import POOL, owner_record, owner_volume, remove_dead_runs_volumes, \
    remove_guest_volumes
from pytest_kvm.transport.ssh import SshClient


def test_an_overlay_volume_is_owner_only_qcow2_over_its_base():
    vol = ET.fromstring(volume_xml("g.qcow2", capacity=2**30, format="qcow2",
                                   backing="/p/base-ab.qcow2", backing_format="qcow2"))
    assert vol.findtext("name") == "g.qcow2" and vol.find("capacity").get("unit") == "bytes"
    assert vol.find("target/format").get("type") == "qcow2"
    assert vol.findtext("target/permissions/mode") == "0600"
    assert vol.findtext("backingStore/path") == "/p/base-ab.qcow2"
    plain = ET.fromstring(volume_xml("s.seed.img", capacity=10, format="raw"))
    assert plain.find("backingStore") is None


def test_the_pool_is_a_directory():
    pool = ET.fromstring(pool_xml(POOL, "/var/lib/libvirt/pytest-kvm"))
    assert pool.get("type") == "dir" and pool.findtext("target/path") == "/var/lib/libvirt/pytest-kvm"


class Volumes:
    def __init__(self, names, records=None):
        self.names = list(names)
        self.records = dict(records or {})  # owner record volumes: name -> content
        self.names += list(self.records)

    def read_volume(self, pool, name, offset, length):
        assert pool == POOL and offset == 0
        return self.records[name][:length]

    def volumes(self, pool):
        assert pool == POOL
        return {name: f"/p/{name}" for name in self.names}

    def delete_volume(self, pool, name):
        self.names.remove(name)
        return True


def test_a_sweep_deletes_guest_volumes_of_its_prefix_only():
    hv = Volumes(["base-abc.qcow2", "pytest-kvm-1-aa-1.qcow2", "pytest-kvm-1-aa-1.seed.img",
                  "pytest-kvm-2-bb-1.qcow2", "pytest-kvm-1-aa-2.qcow2"])
    gone = remove_guest_volumes(hv, "pytest-kvm-1-aa-", keep={"pytest-kvm-1-aa-2"})
    assert sorted(gone) == ["pytest-kvm-1-aa-1.qcow2", "pytest-kvm-1-aa-1.seed.img"]
    assert hv.names == ["base-abc.qcow2", "pytest-kvm-2-bb-1.qcow2", "pytest-kvm-1-aa-2.qcow2"]


def test_ssh_command_goes_through_the_host_with_its_key_and_pinned_host_key(tmp_path):
    host = parse_host("qemu+libssh://ci@hv1:2222/system?keyfile=/k/id&known_hosts=/k/kh")
    proxy = HostLink(host).proxy_command()
    assert proxy[-2:] == ["127.0.0.1:%p", "ci@hv1"] and proxy[-3] == "-W"
    assert "UserKnownHostsFile=/k/kh" in proxy and "StrictHostKeyChecking=yes" in proxy
    assert proxy[proxy.index("-i") + 1] == "/k/id" and proxy[proxy.index("-p") + 1] == "2222"
    argv = SshClient(41022, "pytest", tmp_path / "key", tmp_path / "kh",
                     proxy_command=proxy).ssh_command()
    option = next(a for a in argv if a.startswith("ProxyCommand="))
    assert "ci@hv1" in option and "-W 127.0.0.1:%p" in option
    assert argv[-1] == "pytest@127.0.0.1"
    assert not any(a.startswith("ProxyCommand=") for a in
                   SshClient(41022, "pytest", Path("/k"), Path("/kh")).ssh_command())


def test_reap_deletes_this_machines_snapshot_volumes_no_cache_names(tmp_path):
    """Snapshot volumes carry the controller that made them: `reap --host` deletes this
    controller's whose snapshot is gone from its cache, never another's or a base."""
    from pytest_kvm.hosts.volumes import controller_tag, remove_snapshot_volumes, snapshot_prefix

    tag = controller_tag(tmp_path)
    ours_kept, ours_gone = snapshot_prefix("aaaa1111", tag), snapshot_prefix("bbbb2222", tag)
    assert ours_kept.startswith("snap-aaaa1111-") and ours_kept != ours_gone
    other = "snap-bbbb2222-00000000"  # the same key, made by another controller
    hv = Volumes(["base-abc.qcow2", other + ".save", "pytest-kvm-1-aa-1.qcow2"]
                 + [p + s for p in (ours_kept, ours_gone) for s in (".save", ".qcow2", ".seed.img")])
    gone = remove_snapshot_volumes(hv, keep={"aaaa1111"}, tag=tag)
    assert sorted(gone) == sorted(ours_gone + s for s in (".save", ".qcow2", ".seed.img"))
    assert sorted(hv.names) == sorted(["base-abc.qcow2", other + ".save", "pytest-kvm-1-aa-1.qcow2"]
                                      + [ours_kept + s for s in (".save", ".qcow2", ".seed.img")])


LIVE = {"owner_pid": "1", "owner_start": "live"}
DEAD = {"owner_pid": "2", "owner_start": "dead"}


def alive(record):
    return record.get("owner_start") == "live"


def test_a_sweep_of_the_host_keeps_a_live_runs_volumes_without_a_domain():
    """A guest shut down on purpose (its domain gone) and a golden with snapshots off belong
    to a live run: the owner record on the host says so, not the missing domain."""
    hv = Volumes(["base-abc.qcow2", "snap-k-0badf00d.qcow2",
                  "pytest-kvm-1-aa-1.qcow2", "pytest-kvm-1-aa-1.save",  # live run, shut down
                  "pytest-kvm-2-bb-1.qcow2", "pytest-kvm-2-bb-1.seed.img",  # dead run
                  "pytest-kvm-3-cc-1.qcow2",  # no record: a run killed with its machine
                  "pytest-kvm-4-dd-1.qcow2", "pytest-kvm-4-dd-2.qcow2"],  # dead, 2 runs
                 {owner_volume("1-aa"): owner_record(LIVE), owner_volume("2-bb"): owner_record(DEAD),
                  owner_volume("4-dd"): owner_record(DEAD)})
    gone = remove_dead_runs_volumes(hv, alive, running={"pytest-kvm-4-dd-2"})
    assert sorted(gone) == ["pytest-kvm-2-bb-1.qcow2", "pytest-kvm-2-bb-1.seed.img",
                            "pytest-kvm-2-bb.owner", "pytest-kvm-3-cc-1.qcow2",
                            "pytest-kvm-4-dd-1.qcow2", "pytest-kvm-4-dd.owner"]
    assert sorted(hv.names) == ["base-abc.qcow2", "pytest-kvm-1-aa-1.qcow2", "pytest-kvm-1-aa-1.save",
                                "pytest-kvm-1-aa.owner", "pytest-kvm-4-dd-2.qcow2",
                                "snap-k-0badf00d.qcow2"]


def test_a_run_that_kept_guests_keeps_its_volumes_until_reap_kept():
    records = {owner_volume("1-aa"): owner_record(DEAD, kept=True)}
    hv = Volumes(["pytest-kvm-1-aa-1.qcow2"], records)
    assert remove_dead_runs_volumes(hv, alive) == []
    assert sorted(remove_dead_runs_volumes(hv, alive, include_kept=True)) == [
        "pytest-kvm-1-aa-1.qcow2", "pytest-kvm-1-aa.owner"]


def test_an_unreadable_record_is_never_taken_for_a_dead_run():
    hv = Volumes(["pytest-kvm-1-aa-1.qcow2"], {owner_volume("1-aa"): b"\x00garbage"})
    assert remove_dead_runs_volumes(hv, alive) == []


def test_two_caches_on_one_machine_are_two_controllers(tmp_path):
    """The controller tag is this machine's and its cache's: stable for one cache, another
    for a second cache (or a machine with the same host name), so neither removes the
    other's snapshot volumes."""
    from pytest_kvm.hosts.volumes import controller_tag

    first, second = tmp_path / "a", tmp_path / "b"
    assert controller_tag(first) == controller_tag(first)
    assert controller_tag(first) != controller_tag(second)
    assert (first / "cache-id").read_text().strip()  # made once, kept in the cache
