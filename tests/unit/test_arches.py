"""Architectures as data, the image name of an OS on one, and how a request picks it."""
import pytest

from pytest_kvm.arches import ARCHES, UnknownArch, arch_of, image_name, split_image_name
from pytest_kvm.config import Settings, SettingsError
from pytest_kvm.spec import SpecError, guest_request


@pytest.mark.parametrize("name,debian,kernel", [
    ("arm64", "arm64", "aarch64"), ("aarch64", "arm64", "aarch64"), ("AMD64", "amd64", "x86_64"),
    ("x86_64", "amd64", "x86_64"), ("ppc64le", "ppc64el", "ppc64le"), ("riscv64", "riscv64", "riscv64")])
def test_both_spellings_name_one_architecture(name, debian, kernel):
    arch = arch_of(name)
    assert (arch.debian, arch.kernel) == (debian, kernel)


def test_an_unknown_architecture_lists_the_known_ones():
    with pytest.raises(UnknownArch, match=r"'mips'.*arm64 \(aarch64\)"):
        arch_of("mips")


def test_every_architecture_is_one_table_entry_with_its_devices_bus():
    """Each is data: s390x's virtio devices are on channel I/O, the others' on PCI."""
    assert list(ARCHES) == ["amd64", "arm64", "riscv64", "s390x", "ppc64el"]
    assert ARCHES["s390x"].device("virtio-net-pci") == "virtio-net-ccw"
    assert ARCHES["arm64"].device("virtio-net-pci") == "virtio-net-pci"
    assert ARCHES["s390x"].device("e1000") == "e1000"  # not a virtio device: as it is


@pytest.mark.parametrize("os,arch,name", [
    ("debian-12", "amd64", "debian-12"), ("debian-12", "arm64", "debian-12-arm64"),
    ("debian-13", "riscv64", "debian-13-riscv64")])
def test_image_names_carry_a_foreign_architecture_and_split_back(os, arch, name):
    assert image_name(os, ARCHES[arch]) == name
    assert split_image_name(name) == (os, ARCHES[arch])


def test_settings_default_to_the_host_and_take_both_spellings_once():
    assert Settings.build().archs == ("amd64",)  # this machine (the suite runs on amd64)
    assert Settings.build(archs=("aarch64", "arm64", "amd64")).archs == ("arm64", "amd64")
    with pytest.raises(SettingsError, match="--kvm-arch / kvm_arch: unknown architecture 'sparc'"):
        Settings.build(archs=("sparc",))


def test_a_request_means_the_image_of_its_architecture():
    settings = Settings.build(os_names=("debian-12",), archs=("arm64", "amd64"))
    assert settings.os_for(None, None) == "debian-12-arm64"  # the first --kvm-arch
    assert settings.os_for("debian-13", "x86_64") == "debian-13"
    assert settings.os_for("debian-12-arm64", None) == "debian-12-arm64"
    assert settings.os_for("debian-12-arm64", "aarch64") == "debian-12-arm64"
    with pytest.raises(SpecError, match="is the arm64 image: it cannot run on arch='amd64'"):
        settings.os_for("debian-12-arm64", "amd64")


def test_the_arch_keyword_is_checked_and_normalised():
    assert guest_request(arch="aarch64").arch == "arm64"
    assert guest_request().arch is None
    with pytest.raises(SpecError, match="arch: unknown architecture 'arm'"):
        guest_request(arch="arm")
    with pytest.raises(SpecError, match="arch must be"):
        guest_request(arch=64)
