"""Every guest family through the same Guest API. A family's test runs when an image for it
is here (cached, or given with --kvm-image NAME=PATH) and is skipped, naming the image,
otherwise. Set PYTEST_KVM_E2E_DOWNLOAD=1 to let these tests download catalog images (this
project's CI has no internet: only the Linux families are booted there)."""
import os

import pytest

# image name -> (family, a command in the family's shell, what its output starts with)
FAMILY_IMAGES = {
    "debian-13-genericcloud": ("linux", "uname -s", "Linux"),
    "ubuntu-24.04": ("linux", "uname -s", "Linux"),
    "fedora-cloud-44": ("linux", "uname -s", "Linux"),
    "alpine-3.20": ("generic", "uname -s", "Linux"),
    "freebsd-14": ("freebsd", "uname -s", "FreeBSD"),
    "openbsd-7.8": ("openbsd", "uname -s", "OpenBSD"),
    "netbsd-10": ("netbsd", "uname -s", "NetBSD"),
    "omnios-r151054": ("illumos", "uname -s", "SunOS"),
    "windows-2022": ("windows", "ver", "\nMicrosoft Windows"),
}


@pytest.fixture(params=sorted(FAMILY_IMAGES))
def image_name(request, kvm):
    name = request.param
    if not (kvm.images.available(name) or
            (os.environ.get("PYTEST_KVM_E2E_DOWNLOAD") == "1" and name in kvm.images.catalog)):
        how = (f"`pytest-kvm image fetch {name}` (needs the internet or --kvm-mirror), or "
               if name in kvm.images.catalog else "an entry in your kvm_catalog, or ")
        pytest.skip(f"no {name} image here: get one with {how}--kvm-image {name}=PATH")
    return name


# a cold boot, and a warm clone of the family's golden: its clock is set again (without a guest
# agent, by the family's root command) and, where the family can, it gets its own identity
@pytest.mark.parametrize("reset", ["boot", "clone"])
def test_family_guest_reads_the_same(kvm, image_name, reset, tmp_path):
    family, command, expected = FAMILY_IMAGES[image_name]
    unique = reset == "clone" and family != "windows"
    with kvm.boot(image_name, reset=reset, unique=unique) as g:
        assert (g.os, g.family) == (image_name, family)
        assert g.run(command).stdout.startswith(expected)
        assert g.run("exit 3").exit_code == 3
        if family != "windows":  # root through the family's privilege tool, as the seed granted it
            assert g.run("id -u", sudo=True, cwd="/tmp").stdout.strip() == "0"
        if unique:
            assert g.run("hostname").stdout.strip() == g.hostname
        (tmp_path / "up").write_bytes(b"\x00pytest-kvm\n" * 1000)
        remote = "C:\\Windows\\Temp\\up" if family == "windows" else "/tmp/up"
        g.put(tmp_path / "up", remote)
        g.get(remote, tmp_path / "down")
        assert (tmp_path / "down").read_bytes() == (tmp_path / "up").read_bytes()
        if family == "windows":
            assert g.run_ps("$PSVersionTable.PSVersion.Major").stdout.strip().isdigit()
