import pytest

from pytest_kvm.errors import BootTimeout, GuestCrashed
from pytest_kvm.waiting import Limit, PhaseWaiter, Retry, Timeline, find_panic

LIMIT = Limit(2.0, "kvm_boot_timeout = 0.5 s x4 under TCG")


def waiter(crash=lambda: None):
    return PhaseWaiter(guest_name="g", crash_check=crash,
                       console_tail=lambda: "last console line", timeline=Timeline())


def test_phase_returns_first_value_and_records_it():
    tries = iter([None, None, "ready"])
    w = waiter()
    assert w.phase("ssh-banner", lambda remaining: next(tries), LIMIT, interval=0.01) == "ready"
    assert [p for p, _ in w.timeline.entries] == ["ssh-banner"]


def test_timeout_says_phase_and_last_seen():
    def attempt(remaining):
        raise Retry("connection reset")
    with pytest.raises(BootTimeout) as info:
        waiter().phase("ssh-auth", attempt, Limit(0.3, "kvm_ssh_timeout = 0.3 s"), interval=0.05)
    err = info.value
    assert err.phase == "ssh-auth" and err.timeout == 0.3 and err.elapsed >= 0.3
    assert "last seen: Retry: connection reset" in str(err)
    assert "within 0.3 s (kvm_ssh_timeout = 0.3 s;" in str(err)
    assert "last console line" in str(err) and err.console_tail == "last console line"


def test_crash_fails_at_once():
    with pytest.raises(GuestCrashed, match="panicked.*phase 'ssh-banner'"):
        waiter(crash=lambda: "panicked (x)").phase("ssh-banner", lambda r: None, LIMIT)


def test_other_errors_propagate():
    with pytest.raises(ZeroDivisionError):
        waiter().phase("x", lambda r: 1 / 0, LIMIT)


def test_find_panic():
    assert find_panic("ok\n[ 3.1] Kernel panic - not syncing: VFS: Unable to mount root fs\nmore") == \
        "panicked (Kernel panic - not syncing: VFS: Unable to mount root fs)"
    assert find_panic("all good") is None


def test_phases_have_their_own_limits():
    w = waiter()
    w.phase("a", lambda r: "ok", Limit(0.2, "a"))
    import time
    time.sleep(0.3)  # longer than a's limit: b must still get its own
    assert w.phase("b", lambda r: r if r > 0.5 else None, Limit(1.0, "b")) > 0.5
