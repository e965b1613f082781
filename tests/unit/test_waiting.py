import pytest

from pytest_kvm.errors import BootTimeout, GuestCrashed
from pytest_kvm.waiting import PhaseWaiter, Retry, Timeline, find_panic


def waiter(timeout=2.0, crash=lambda: None):
    return PhaseWaiter(guest_name="g", timeout=timeout, crash_check=crash,
                       console_tail=lambda: "last console line", timeline=Timeline())


def test_phase_returns_first_value_and_records_it():
    tries = iter([None, None, "ready"])
    w = waiter()
    assert w.phase("ssh-banner", lambda remaining: next(tries), interval=0.01) == "ready"
    assert [p for p, _ in w.timeline.entries] == ["ssh-banner"]


def test_timeout_says_phase_and_last_seen():
    def attempt(remaining):
        raise Retry("connection reset")
    with pytest.raises(BootTimeout) as info:
        waiter(timeout=0.3).phase("ssh-auth", attempt, interval=0.05)
    err = info.value
    assert err.phase == "ssh-auth" and err.timeout == 0.3 and err.elapsed >= 0.3
    assert "last seen: Retry: connection reset" in str(err)
    assert "last console line" in str(err) and err.console_tail == "last console line"


def test_crash_fails_at_once():
    with pytest.raises(GuestCrashed, match="panicked.*phase 'ssh-banner'"):
        waiter(timeout=60, crash=lambda: "panicked (x)").phase("ssh-banner", lambda r: None)


def test_other_errors_propagate():
    with pytest.raises(ZeroDivisionError):
        waiter().phase("x", lambda r: 1 / 0)


def test_find_panic():
    assert find_panic("ok\n[ 3.1] Kernel panic - not syncing: VFS: Unable to mount root fs\nmore") == \
        "panicked (Kernel panic - not syncing: VFS: Unable to mount root fs)"
    assert find_panic("all good") is None
