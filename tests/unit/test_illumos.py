"""The illumos family (OmniOS cloud images, configured by OmniOS's cloud-init): its seed read
back from the ISO the way the guest's cloud-init finds it, its domain, its root commands and
its catalog entry. No illumos guest is booted here (see docs/design/families.md)."""
import shlex
import xml.etree.ElementTree as ET
from datetime import datetime, timezone
from pathlib import Path

import pytest
import yaml

from isoread import read_iso

from pytest_kvm.seed import cloudinit

from pytest_kvm.seed import iso as seed
from pytest_kvm.images.catalog import builtin_catalog, read_catalog
from pytest_kvm.vm.domain import DomainSpec, domain_xml, family_fields
from pytest_kvm.families import LOGIN_USER, family
from pytest_kvm.keys import KeyPair

ILLUMOS = family("illumos")
LOGIN, HOST = KeyPair.generate("login"), KeyPair.generate("host")


@pytest.fixture(scope="module")
def seed_files():
    """The seed a cold boot writes (as ``Guest._prepare`` builds it), read back from the ISO."""
    user_data = cloudinit.render_user_data(ILLUMOS, login_key=LOGIN, host_key=HOST,
                                           extra={"runcmd": ["touch /var/tmp/ran"]})
    built = seed.build_seed(ILLUMOS.seed_format, instance_id="pytest-kvm-1-ab-1",
                            hostname="pytest-kvm-1-ab-1", user_data=user_data,
                            public_keys={"pytest-kvm": LOGIN.public_openssh})
    return read_iso(built.iso())


def test_seed_is_a_nocloud_volume_omnios_cloud_init_finds(seed_files):
    # find_devs_with_illumos matches `labelit -F hsfs`'s "Volume id: cidata"
    assert seed_files[".volume"] == b"cidata"
    assert sorted(seed_files) == [".volume", "meta-data", "user-data"]


def test_meta_data_carries_the_instance_hostname_and_login_key(seed_files):
    assert yaml.safe_load(seed_files["meta-data"]) == {
        "instance-id": "pytest-kvm-1-ab-1", "local-hostname": "pytest-kvm-1-ab-1",
        "public-keys": [LOGIN.public_openssh]}


def test_user_data_creates_the_plugin_user_with_sudo_bash_and_the_login_key(seed_files):
    assert seed_files["user-data"].startswith(b"#cloud-config\n")
    data = yaml.safe_load(seed_files["user-data"])
    (user,) = data["users"]
    assert user["name"] == LOGIN_USER == ILLUMOS.login_user
    assert user["shell"] == "/bin/bash"  # in OmniOS core, as the vendor's default user has
    assert user["sudo"] == "ALL=(ALL) NOPASSWD:ALL"
    assert user["ssh_authorized_keys"] == [LOGIN.public_openssh]
    assert user["lock_passwd"] is True
    assert data["runcmd"] == ["touch /var/tmp/ran"]  # the test's own cloud-config, merged


def test_user_data_pins_the_host_key_through_cc_ssh(seed_files):
    data = yaml.safe_load(seed_files["user-data"])
    assert data["ssh_deletekeys"] is True
    assert data["ssh_genkeytypes"] == ["ed25519"]
    assert data["ssh_keys"] == {"ed25519_private": HOST.private_openssh,
                                "ed25519_public": HOST.public_openssh}
    assert ILLUMOS.seeds_host_key


def spec(tmp_path: Path) -> DomainSpec:
    return DomainSpec(name="pytest-kvm-1-ab-1", virt_type="qemu", memory_mib=1024, cpus=2,
                      disk=tmp_path / "disk.qcow2", disk_format="qcow2", seed=tmp_path / "seed.iso",
                      console_log=tmp_path / "console.log", ssh_port=40022,
                      **family_fields(ILLUMOS, tmp_path))


def test_domain_has_virtio_disks_a_virtio_nic_bios_and_a_serial_console(tmp_path):
    root = ET.fromstring(domain_xml(spec(tmp_path)))
    disks = root.findall("devices/disk")
    # the pool's label names a virtio-blk disk (kayak: pci1af4,2 .../blkdev); the seed is a
    # blkdev cXtYdZp0 device too, which is where OmniOS's cloud-init looks for cidata
    assert [(d.get("device"), d.find("target").get("bus"), d.find("target").get("dev"))
            for d in disks] == [("disk", "virtio", "vda"), ("disk", "virtio", "vdb")]
    assert disks[1].find("source").get("file") == str(tmp_path / "seed.iso")
    assert disks[1].find("readonly") is not None
    args = [a.get("value") for a in root.iter() if a.tag.endswith("}arg")]
    assert args[args.index("-device") + 1].startswith("virtio-net-pci,")  # vioif(4D)
    assert args[args.index("-netdev") + 1].endswith("hostfwd=tcp:127.0.0.1:40022-:22")
    assert root.find("os/loader") is None and root.find("os/nvram") is None  # SeaBIOS
    assert root.find("os/type").get("machine").startswith("pc")
    # kayak's image puts its console on ttya: the domain's first serial port, logged to a file
    serial = root.find("devices/serial")
    assert (serial.get("type"), serial.find("target").get("port")) == ("file", "0")
    assert root.find("devices/filesystem") is None  # no virtiofs on illumos


def test_root_commands_go_through_sudo_and_bash():
    assert shlex.split(ILLUMOS.as_root("id -u")) == ["sudo", "-n", "bash", "-c", "id -u"]


def test_clock_uses_illumos_date_operand_order():
    epoch = datetime(2026, 3, 4, 5, 6, 7, tzinfo=timezone.utc).timestamp()
    *_, inner = shlex.split(ILLUMOS.clock_command_for(epoch))
    # mmddHHMM[[cc]yy][.SS], not the BSDs' [[cc]yy]mmddHHMM
    assert shlex.split(inner)[:3] == ["/usr/bin/date", "-u", "030405062026.07"]


def test_identity_is_the_node_name():
    *_, inner = shlex.split(ILLUMOS.identity_command_for("pytest-kvm-1-x-2"))
    assert inner == ("/usr/bin/hostname pytest-kvm-1-x-2 && "
                     "echo pytest-kvm-1-x-2 > /etc/nodename")


def test_ready_power_and_boot_identity_are_illumos_commands():
    assert "cloud-init status --wait" in ILLUMOS.ready_command
    assert ILLUMOS.ready_exit_codes == (0, 2)
    assert ILLUMOS.reboot_command == "/usr/sbin/shutdown -y -i 6 -g 0"
    assert ILLUMOS.poweroff_command == "/usr/sbin/shutdown -y -i 5 -g 0"
    assert "/proc" not in ILLUMOS.boot_id_command and "kstat" in ILLUMOS.boot_id_command
    assert ILLUMOS.share_mount_command is None and ILLUMOS.network_command is None


def test_catalog_has_the_omnios_lts_cloud_image_verified_by_the_vendors_sidecar():
    entry = read_catalog(builtin_catalog())["omnios-r151054"]
    assert (entry.family, entry.format, entry.compression, entry.firmware) == (
        "illumos", "qcow2", "none", "bios")
    assert entry.login_user == "omnios"  # OmniOS's cloud.cfg default user
    assert entry.pinned is None and not entry.trust_on_first_use
    assert entry.checksum_url == entry.url + ".sha256" and entry.algorithm == "sha256"
