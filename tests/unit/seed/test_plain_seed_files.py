"""The plain seed (a cold boot without cloud-init when there is no user data): which guests
get it, what the seed and the kernel command line carry, and that the image's unit and
script read what the plugin writes. Pure logic; the boot itself is e2e/test_plain_seed.py."""
from pathlib import Path

import pytest
import yaml

from isoread import read_iso
from pytest_kvm.families import family
from pytest_kvm.guest.cold import seed_for
from pytest_kvm.guest.config import GuestConfig, domain_spec
from pytest_kvm.images.recipes import load_recipe
from pytest_kvm.images.store import BaseImage
from pytest_kvm.keys import KeyPair
from pytest_kvm.seed import plain

LOGIN = KeyPair.generate("login")
HOST = KeyPair.generate("host")
CMDLINE = "root=LABEL=rootfs rw console=ttyS0,115200"


def config(**overrides) -> GuestConfig:
    image = BaseImage(name="debian-12", disk=Path("/i/base.qcow2"), format="qcow2",
                      kernel=Path("/i/vmlinuz"), initrd=Path("/i/initrd.img"), cmdline=CMDLINE,
                      plain_seed=overrides.pop("plain_image", True))
    fields = dict(name="g1", os="debian-12", image=image, memory_mib=512, cpus=2,
                  virt_type="qemu", limits={}, command_timeout=60, workdir=Path("/w/g1"),
                  login_key_file=Path("/w/key"), login_key=LOGIN, metadata={})
    return GuestConfig(**{**fields, **overrides})


@pytest.mark.parametrize("overrides, expected", [
    ({}, True),
    ({"user_data": {"runcmd": ["true"]}}, False),
    ({"user_data": {}}, True),  # nothing for cloud-init to do
    ({"seed_format": "configdrive"}, False),
    ({"seed_format": "nocloud"}, True),
    ({"plain_image": False}, False),  # a vendor image or one built before the unit
    ({"family": family("freebsd")}, False),
], ids=["no-user-data", "user-data", "empty-user-data", "configdrive", "nocloud-named",
        "image-without-unit", "other-family"])
def test_which_guests_boot_without_cloud_init(overrides, expected):
    assert config(**overrides).plain_seed is expected


def test_the_kernel_command_line_disables_cloud_init_and_starts_the_unit():
    spec = domain_spec(config(), 2222)
    assert spec.cmdline == f"{CMDLINE} cloud-init=disabled {plain.CMDLINE_FLAG}"
    assert domain_spec(config(user_data={"runcmd": ["true"]}), 2222).cmdline == CMDLINE


def test_the_seed_has_the_plain_files_beside_cloud_init_s():
    files = read_iso(seed_for(config(), "g1", login_key=LOGIN, host_key=HOST).iso())
    assert files[f"{plain.DIR}/user"] == b"pytest\n"
    assert files[f"{plain.DIR}/hostname"] == b"g1\n"
    assert files[f"{plain.DIR}/authorized_keys"] == f"{LOGIN.public_openssh}\n".encode()
    assert files[f"{plain.DIR}/ssh_host_ed25519_key"] == HOST.private_openssh.encode()
    assert files[f"{plain.DIR}/ssh_host_ed25519_key.pub"] == f"{HOST.public_openssh}\n".encode()
    # the same ISO still seeds cloud-init (a reboot keeps its command line, not the way back)
    user_data = yaml.safe_load(files["user-data"])
    assert user_data["users"][0]["ssh_authorized_keys"] == [LOGIN.public_openssh]
    assert files[".volume"] == b"cidata"


def test_a_cloud_init_seed_has_no_plain_files():
    files = read_iso(seed_for(config(user_data={"runcmd": ["true"]}), "g1",
                              login_key=LOGIN, host_key=HOST).iso())
    assert not [name for name in files if name.startswith(f"{plain.DIR}/")]


def test_the_plain_seed_changes_the_snapshot_key_fields():
    """A golden booted through cloud-init never serves a plain-seeded guest or back: the
    command line is in the domain digest, the plain files in the seed digest."""
    a, b = config(), config(plain_image=False)
    spec_a, spec_b = domain_spec(a, 0), domain_spec(b, 0)
    assert spec_a.cmdline != spec_b.cmdline
    dummy = KeyPair("private", "ssh-ed25519 AAAA pytest-kvm")
    assert seed_for(a, "golden", login_key=dummy, host_key=dummy).files != \
        seed_for(b, "golden", login_key=dummy, host_key=dummy).files


@pytest.mark.parametrize("name", ["debian-12", "debian-13"])
def test_the_recipe_s_unit_and_script_match_the_plugin(name):
    recipe = load_recipe(name)
    assert recipe.plain_seed
    unit = recipe.files["etc/systemd/system/pytest-kvm-seed.service"]
    script = recipe.files["usr/local/lib/pytest-kvm/seed.sh"]
    assert f"ConditionKernelCommandLine={plain.CMDLINE_FLAG}" in unit
    assert "pytest-kvm-seed.service" in recipe.enable_units
    assert f'seed="$mnt/{plain.DIR}"' in script
    names = {Path(rel).name for rel in plain.files(user="u", hostname="h", login_key=LOGIN,
                                                    host_key=HOST)}
    for read in ("user", "hostname", "authorized_keys"):
        assert f'"$seed/{read}"' in script and read in names
    assert "ssh_host_*_key" in script and "ssh_host_ed25519_key" in names
    # before sshd, which has no host key without it
    assert "Before=" in unit and "ssh.service" in unit.split("Before=")[1].splitlines()[0]


def test_no_secret_in_a_repr_or_the_command_line():
    cfg = config()
    assert HOST.private_openssh not in repr(cfg)
    assert "PRIVATE" not in domain_spec(cfg, 0).cmdline
