"""reset="revert": a clone kept after its test and reverted in place (same QEMU) for the
next one, which must find it as fresh as a new clone: files, random state, clock. The
tests run in this order (per OS with several --kvm-os) and share what they saw through
GUESTS and USES (module state, as a user's module would); the session's pool hands out
reverted guests and clones made ahead in turn, so a name comes back every other test. The
first guest may be a clone made ahead for an earlier module's test: its state to revert to
is saved when it is handed over."""
import time

import pytest

from pytest_kvm.errors import KvmError

pytestmark = pytest.mark.guest(reset="revert")

GUESTS: dict[str, dict] = {}  # guest name -> what its earlier test read
USES: list[tuple[str, str, bool]] = []  # (os, guest name, whether it came reverted), in order


def _use(guest):
    """Each test: check what an earlier test did to this guest is gone, then do it again."""
    phases = [p for p, _ in guest.timeline.entries]
    earlier = GUESTS.get(guest.name)
    if earlier is not None:  # this QEMU served a test before: it was reverted in place
        assert phases[0] == "loadvm", phases
        assert "clock+reseed" in phases, phases
        assert guest.run("ls /var/tmp/state /etc/dirty").exit_code != 0
        assert guest.run("pgrep -x sleep").exit_code != 0  # the earlier test's process too
        assert guest.run("head -c 16 /dev/urandom | od -An -tx1").stdout != earlier["random"]
        # the root helper that ran the refresh is back with the loaded state (the reboot
        # test's guest lost it)
        assert guest.run("pgrep -u root -f 'read -r c < /run/pytest-kvm/refresh'").ok
    else:  # a new clone (or one made ahead earlier): its state to revert to was saved
        assert phases[:2] == ["prepare", "restore"], phases
        assert guest.timeline.entries and "savevm" in phases, phases
    assert abs(float(guest.run("date +%s.%N").stdout) - time.time()) < 10
    random = guest.run("head -c 16 /dev/urandom | od -An -tx1").stdout
    guest.run("echo dirty > /var/tmp/state && sudo -n touch /etc/dirty "
              "&& (nohup sleep 1000 >/dev/null 2>&1 &)", check=True)
    GUESTS[guest.name] = {"random": random}
    USES.append((guest.os, guest.name, earlier is not None))


@pytest.mark.parametrize("i", range(4))
def test_each_test_gets_a_fresh_guest(guest, i):
    _use(guest)


def test_a_rebooted_guest_is_reverted_too(guest):
    _use(guest)
    guest.reboot()


def test_after_the_reboot(guest):
    _use(guest)
    mine = [(name, reverted) for os, name, reverted in USES if os == guest.os]
    assert len(mine) == 6, USES
    assert sum(reverted for _, reverted in mine) >= 3, mine
    assert len({name for name, _ in mine}) <= 3, mine  # six tests, at most three QEMUs


def test_a_guest_can_be_reverted_by_the_test_itself(guest):
    guest.run("echo mine > /var/tmp/mine", check=True)
    guest.revert()
    assert guest.run("cat /var/tmp/mine").exit_code != 0
    assert guest.timeline.entries[0][0] == "loadvm"


def test_only_revert_guests_can_revert(kvm):
    with kvm.boot("debian-12", unique=True) as g:  # a clone of its own, never reverted
        with pytest.raises(KvmError, match="reset='revert'"):
            g.revert()
