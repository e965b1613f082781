"""The clock thread of a warm clone stops as soon as the clone is destroyed (a clone that
failed while its clock was being set must not keep calling its gone domain)."""
import threading
import time
import types

import pytest

from pytest_kvm.errors import AgentCommandFailed, HypervisorError
from pytest_kvm.guest.clone import clock_by_agent


class AgentNeverAnswers:
    def __init__(self):
        self.calls = 0

    def set_time(self, dom, epoch, timeout):
        self.calls += 1
        raise HypervisorError("the guest agent is not connected")


def test_clock_thread_stops_when_the_clone_is_destroyed():
    guest = types.SimpleNamespace(name="clone", dom=object(), destroyed=False,
                                  host=AgentNeverAnswers())  # what clock_by_agent reads
    errors = []
    thread = threading.Thread(target=lambda: errors.append(
        pytest.raises(HypervisorError, clock_by_agent, guest, 60)))
    thread.start()
    time.sleep(0.5)
    guest.destroyed = True
    thread.join(timeout=2)
    assert not thread.is_alive(), "the clock thread kept calling a destroyed clone's domain"
    assert "destroyed" in str(errors[0].value)
    calls = guest.host.calls
    time.sleep(0.3)
    assert guest.host.calls == calls


class AgentFailsTheCommand(AgentNeverAnswers):
    def set_time(self, dom, epoch, timeout):
        self.calls += 1
        raise AgentCommandFailed("unable to execute QEMU agent command 'guest-set-time': "
                                 "hwclock failed to set hardware clock to system time")


def test_an_agent_that_answers_with_a_failure_is_not_asked_again():
    """s390x: qemu-ga sets the time, then fails on `hwclock -w` (no RTC); retrying it
    until the deadline cost every clone 5 s before the clock command ran."""
    guest = types.SimpleNamespace(name="clone", dom=object(), destroyed=False,
                                  host=AgentFailsTheCommand())
    with pytest.raises(AgentCommandFailed, match="hwclock"):
        clock_by_agent(guest, 60)
    assert guest.host.calls == 1
