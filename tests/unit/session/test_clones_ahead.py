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
