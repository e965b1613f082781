"""Storage pool and volume XML objects."""
import xml.etree.ElementTree as ET

from pytest_kvm.vm.libvirtxml.storage import StoragePool, StorageVolume, pool_xml, volume_xml


def test_volume_round_trip():
    xml = volume_xml("g&1.qcow2", capacity=2**30, format="qcow2", backing="/p/<base>")
    volume = StorageVolume.from_xml(xml)
    assert (volume.name, volume.capacity, volume.capacity_unit) == ("g&1.qcow2", 2**30, "bytes")
    assert (volume.target.format, volume.target.compat, volume.target.permissions.mode) == (
        "qcow2", "1.1", "0600")
    assert (volume.backing.path, volume.backing.format) == ("/p/<base>", "qcow2")
    assert volume.to_xml() == xml


def test_a_raw_volume_has_no_qcow2_compat_and_no_backing():
    root = ET.fromstring(volume_xml("s.img", capacity=10, format="raw"))
    assert root.find("target/compat") is None and root.find("backingStore") is None


def test_pool_round_trip():
    xml = pool_xml("pytest-kvm", "/var/lib/x")
    pool = StoragePool.from_xml(xml)
    assert (pool.type, pool.name, pool.target.path, pool.target.permissions.mode) == (
        "dir", "pytest-kvm", "/var/lib/x", "0711")
    assert pool.to_xml() == xml
