"""What guests of another architecture than the host's are refused, each with its reason
(pure logic: the request and the guest's config decide)."""
import types
from pathlib import Path

import pytest

from pytest_kvm.arches import ARCHES
from pytest_kvm.families import family
from pytest_kvm.session.session import KvmSession
from pytest_kvm.spec import SpecError, guest_request


def config(arch: str, **image):
    base = types.SimpleNamespace(kernel=Path("/c/vmlinuz"), firmware=None, **image)
    return types.SimpleNamespace(os=f"debian-12-{arch}", arch=ARCHES[arch], family=family("linux"),
                                 image=base)


@pytest.mark.parametrize("arch, reason", [
    ("s390x", "virtiofsd on this little-endian host does not serve a big-endian guest"),
    ("ppc64el", "pseries hot-plug needs rtas_errd and drmgr"),
    ("riscv64", "its guest did not mount a share hot-plugged"),
])
def test_shares_are_refused_where_the_architecture_cannot_have_them(arch, reason):
    with pytest.raises(SpecError, match=f"share: debian-12-{arch} \\({arch}\\): shared folders "
                                        f"are not offered on {arch}: {reason}"):
        KvmSession._refuse_foreign(guest_request(None, share={"/mnt/s": "."}), config(arch))


def test_arm64_guests_get_shares_but_not_networks():
    KvmSession._refuse_foreign(guest_request(None, share={"/mnt/s": "."}), config("arm64"))
    with pytest.raises(SpecError, match="networks: .*only offered on the host's architecture"):
        KvmSession._refuse_foreign(guest_request(None, networks=("lan",)), config("arm64"))
