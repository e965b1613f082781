"""The one libvirt boundary: which errors a call may ignore."""
import libvirt
import pytest

from pytest_kvm.vm.hypervisor import _unless


class FakeError(libvirt.libvirtError):
    def __init__(self, code):  # libvirtError's own __init__ asks libvirt for the last error
        Exception.__init__(self, f"code {code}")
        self.code = code

    def get_error_code(self):
        return self.code


def test_a_volume_gone_since_the_listing_is_ignored_and_other_errors_are_not():
    with _unless("VIR_ERR_NO_STORAGE_VOL"):
        raise FakeError(libvirt.VIR_ERR_NO_STORAGE_VOL)
    with pytest.raises(libvirt.libvirtError):
        with _unless("VIR_ERR_NO_STORAGE_VOL"):
            raise FakeError(libvirt.VIR_ERR_NO_DOMAIN)
