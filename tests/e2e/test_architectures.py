"""Guests of other CPU architectures than the host's (arm64, riscv64, ppc64el, s390x),
emulated by QEMU: their images built by the plugin itself, their goldens and clones as on
amd64 where the architecture's restore works."""
import re
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def require_built(kvm, name: str, build: str) -> None:
    """Skip unless image *name* is built from its current recipe: an emulated build takes
    20-30 min here, which `./dev.sh test` (CI) does not spend, to stay within 45 min."""
    if not [i for i in kvm.images.list_cached() if i.name == name and not i.stale]:
        pytest.skip(f"{name} is not built (or its recipe changed since): pytest-kvm image build "
                    f"{build}")


MATRIX = '''
def test_uname(guest):
    machine = guest.run("uname -m", check=True).stdout.strip()
    print("ARCH", guest.arch, machine, guest.name, flush=True)
    assert machine == guest.arch
    assert guest.run("python3 -c 'import sys; print(sys.byteorder)'").stdout.strip() == "little"

def test_two_arm64_clones_are_separate_guests(guest_factory):
    first = guest_factory(arch="arm64")
    second = guest_factory(arch="aarch64")
    assert first.cloned and second.cloned and first.name != second.name
    assert first.golden_name == second.golden_name
    first.run("echo mine > /var/tmp/mark", check=True)
    assert second.run("cat /var/tmp/mark").exit_code != 0
    # no VM generation ID on arm64: the plugin reseeds each clone's kernel generator
    random = "head -c 16 /dev/urandom | od -An -tx1"
    assert first.run(random).stdout != second.run(random).stdout
    assert "reseed" in [phase for phase, _ in second.timeline.entries]
    assert first.arch == second.arch == "aarch64"
'''


def test_a_matrix_of_amd64_and_arm64_guests(pytester, kvm):
    """`--kvm-arch amd64 --kvm-arch arm64` runs a test once on each (`uname -m` is
    guest.arch); two arm64 clones of one golden are separate guests. Runs where the arm64
    image is built (the plugin builds it on first use; see require_built)."""
    require_built(kvm, "debian-12-arm64", "debian-12 --arch arm64")
    pytester.makepyfile(MATRIX)
    result = pytester.runpytest_subprocess("-s", "-v", "-p", "no:cacheprovider", "--kvm-arch",
                                           "amd64", "--kvm-arch", "arm64", timeout=3000)
    out = result.stdout.str()
    result.assert_outcomes(passed=3)  # test_uname on each, the clones
    assert "::test_uname[amd64]" in out and "::test_uname[arm64]" in out
    seen = dict(re.findall(r"ARCH (\S+) (\S+)", out))  # guest.arch, `uname -m`
    assert seen == {"x86_64": "x86_64", "aarch64": "aarch64"}, out


def test_a_riscv64_guest_from_the_marker(pytester, kvm):
    """`@pytest.mark.guest(arch="riscv64", os="debian-13")` runs (Debian 12 has no riscv64),
    booted cold (a restored riscv64 clone did not come back: see arches.py). Runs where
    its image is built (see require_built)."""
    require_built(kvm, "debian-13-riscv64", "debian-13 --arch riscv64")
    pytester.makepyfile('''
import pytest

@pytest.mark.guest(arch="riscv64", os="debian-13")
def test_riscv64(guest):
    assert guest.run("uname -m").stdout.strip() == "riscv64" == guest.arch
    assert not guest.cloned  # its restore does not work yet: riscv64 guests boot cold
''')
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", timeout=3000)
    result.assert_outcomes(passed=1)


def test_the_project_in_guest_example_on_arm64(pytester, kvm):
    """examples/test_project_in_guest.py (copy a project in, install it in a virtualenv,
    run its pytest, bring its JUnit XML back) passes unchanged on an arm64 guest. Runs
    where the arm64 image is built (see require_built)."""
    require_built(kvm, "debian-12-arm64", "debian-12 --arch arm64")
    result = pytester.runpytest_subprocess(str(EXAMPLES / "test_project_in_guest.py"), "-v", "-s",
                                           "-p", "no:cacheprovider", "--kvm-arch", "arm64",
                                           timeout=3000)
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*in debian-12-arm64: 3 tests, 0 failures*"])


def test_an_arm64_clone_mounts_a_share(pytester, kvm):
    """Shares are hot-plugged into a clone after its restore: on arm64 into one of the
    spare PCI Express root ports its domain has (nothing plugs into the virt machine's
    root complex). Runs where the arm64 image is built (see require_built)."""
    require_built(kvm, "debian-12-arm64", "debian-12 --arch arm64")
    (pytester.path / "src").mkdir()
    (pytester.path / "src" / "hello.txt").write_text("from the host\n")
    pytester.makepyfile('''
import pytest

@pytest.mark.guest(arch="arm64", share={"/mnt/src": "src"})
def test_share(guest):
    assert guest.cloned
    assert guest.run("cat /mnt/src/hello.txt", check=True).stdout == "from the host\\n"
    assert guest.run("touch /mnt/src/new").exit_code != 0  # read-only unless writable
''')
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", timeout=3000)
    result.assert_outcomes(passed=1)


def test_a_ppc64el_guest_from_the_marker(pytester, kvm):
    """`@pytest.mark.guest(arch="ppc64el")`: a pseries guest, little-endian, booted cold
    (QEMU 7.2 does not save its decrementer under TCG: see arches.py); `ppc64le` is the
    same architecture. Runs where its image is built (see require_built)."""
    require_built(kvm, "debian-12-ppc64el", "debian-12 --arch ppc64el")
    pytester.makepyfile('''
import pytest

@pytest.mark.guest(arch="ppc64le")
def test_ppc64el(guest):
    assert guest.run("uname -m").stdout.strip() == "ppc64le" == guest.arch
    assert guest.run("python3 -c 'import sys; print(sys.byteorder)'").stdout.strip() == "little"
    assert not guest.cloned
''')
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", timeout=3000)
    result.assert_outcomes(passed=1)


def test_s390x_guests_are_big_endian_clones_on_channel_io(pytester, kvm):
    """`@pytest.mark.guest(arch="s390x")`: a big-endian guest whose devices are on channel
    I/O (its user NIC is virtio-net-ccw, matched by the image as ccw-0.0.001e); warm clones
    of one golden are separate guests with their own random numbers. Runs where its image
    is built (see require_built)."""
    require_built(kvm, "debian-12-s390x", "debian-12 --arch s390x")
    pytester.makepyfile('''
import pytest

@pytest.mark.guest(arch="s390x")
def test_s390x(guest):
    machine, order = guest.run("uname -m; python3 -c 'import sys; print(sys.byteorder)'",
                               check=True).stdout.split()
    assert (machine, order) == ("s390x", "big") and guest.arch == "s390x"
    assert guest.run("readlink /sys/class/net/*/device/driver", check=True).stdout.strip() \\
        .endswith("virtio_net")
    assert guest.cloned

def test_two_s390x_clones(guest_factory):
    first, second = guest_factory(arch="s390x"), guest_factory(arch="s390x")
    first.run("echo mine > /var/tmp/mark", check=True)
    assert second.run("cat /var/tmp/mark").exit_code != 0
    random = "head -c 16 /dev/urandom | od -An -tx1"
    assert first.run(random).stdout != second.run(random).stdout
''')
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", timeout=3000)
    result.assert_outcomes(passed=2)


def test_a_foreign_image_without_a_kernel_of_its_own_needs_uefi(pytester, tmp_path):
    """A disk of another architecture that the plugin did not build has no kernel to boot
    directly: an arm64 one needs a catalog entry saying firmware = "uefi" (AAVMF), a
    riscv64 one cannot boot (no UEFI firmware for it on Debian 12): one clear error each,
    before anything starts."""
    import subprocess
    disk = tmp_path / "disk.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), "64M"], check=True)
    pytester.makepyfile("def test_it(guest):\n    pass\n")
    for name, why in (("mine-arm64", 'give it a catalog entry with firmware = "uefi"'),
                      ("mine-riscv64", "no UEFI firmware for it is packaged here")):
        result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--kvm-os", name,
                                               "--kvm-image", f"{name}={disk}", timeout=600)
        result.assert_outcomes(errors=1)
        result.stdout.fnmatch_lines([f"*{name} (*): the image has no kernel of its own for a "
                                     f"direct boot*only with UEFI: {why}*"])
