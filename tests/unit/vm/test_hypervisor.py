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


class FakeAgentError(FakeError):
    def __init__(self, code, message):
        super().__init__(code)
        self.message = message

    def get_error_message(self):
        return self.message

    def get_error_domain(self):
        return libvirt.VIR_FROM_QEMU


def test_an_agents_failure_answer_is_told_from_an_agent_that_does_not_answer():
    """qemu-ga answered (it set the time, then `hwclock -w` failed): AgentCommandFailed, which
    the clone's clock does not retry; not connected yet: a plain HypervisorError, retried."""
    from pytest_kvm.errors import AgentCommandFailed, HypervisorError
    from pytest_kvm.vm.hypervisor import translate
    with pytest.raises(AgentCommandFailed, match="setting the clock: .*hwclock failed"):
        with translate("setting the clock"):
            raise FakeAgentError(libvirt.VIR_ERR_INTERNAL_ERROR, "internal error: unable to "
                                 "execute QEMU agent command 'guest-set-time': hwclock failed")
    with pytest.raises(HypervisorError) as info:
        with translate("setting the clock"):
            raise FakeAgentError(libvirt.VIR_ERR_AGENT_UNRESPONSIVE,
                                 "Guest agent is not responding: QEMU guest agent is not connected")
    assert not isinstance(info.value, AgentCommandFailed)
