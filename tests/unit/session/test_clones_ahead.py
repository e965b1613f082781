"""Clones made ahead: one that failed to start is destroyed with one log line (issue 23)."""
import threading

from pytest_kvm.session.background import AheadPool


class FailingGuest:
    name = "pytest-kvm-1-a-3"

    def __init__(self):
        self.started = threading.Event()
        self.destroyed = False

    def start(self):
        raise TimeoutError("login: no answer in 300 s\nconsole tail ...")

    def destroy(self):
        self.destroyed = True


def test_a_clone_made_ahead_that_failed_is_destroyed_with_one_line():
    lines = []
    pool = AheadPool(1, lines.append)
    guest = FailingGuest()
    pool.prepare("k", guest)
    assert pool.take("k") is None and guest.destroyed
    assert lines == ["clone pytest-kvm-1-a-3 made ahead did not start (TimeoutError: login: no "
                     "answer in 300 s); destroyed, making another"]
    pool.close()


class RevertingGuest(FailingGuest):
    def __init__(self, fails=False):
        super().__init__()
        self.fails = fails
        self.reverts = 0

    def revert(self):
        if self.fails:
            raise RuntimeError("reverting the guest in place: QEMU said no")
        self.reverts += 1
        return self


def test_a_recycled_guest_is_reverted_and_handed_to_the_next_taker():
    pool = AheadPool(1)
    guest = RevertingGuest()
    pool.recycle("k", guest)
    assert pool.take("k") is guest and guest.reverts == 1
    assert pool.reverted == 1 and pool.handed_over == 0  # the summary's "reverted in place"
    assert pool.take("k") is None
    pool.close()


def test_a_guest_that_did_not_revert_is_destroyed_with_one_line():
    lines = []
    pool = AheadPool(1, lines.append)
    guest = RevertingGuest(fails=True)
    pool.recycle("k", guest)
    assert pool.take("k") is None and guest.destroyed
    assert lines == ["clone pytest-kvm-1-a-3 reverted in place did not come back (RuntimeError: "
                     "reverting the guest in place: QEMU said no); destroyed, making another"]
    pool.close()


def test_the_pool_is_first_in_first_out_across_made_ahead_and_reverted():
    pool = AheadPool(1)
    made, reverted = RevertingGuest(), RevertingGuest()
    made.start = lambda: made
    pool.prepare("k", made)
    pool.recycle("k", reverted)
    assert pool.take("k") is made and pool.take("k") is reverted
    pool.close()
