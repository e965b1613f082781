"""Many sessions on one snapshot cache (issue 23, findings 1 and 2): a snapshot in use is
never removed, not by a session whose first clone of it failed either; ``KEY.lock``
makes a snapshot once even while ``snapshot rm`` and ``prune`` unlink lock files.
Separate processes (and separate stores, whose flocks conflict as other processes'
would) stand for sessions and xdist workers; a fake golden maker copies ready files."""
import multiprocessing
import os
import shutil
import time
import traceback

import pytest

from pytest_kvm.files import file_lock
from pytest_kvm.guest.golden import Golden
from pytest_kvm.session.snapshots import SnapshotStore

from test_snapshots import make_snapshot

FORK = multiprocessing.get_context("fork")


@pytest.fixture
def template(tmp_path):
    """A complete snapshot's files, copied by the fake makers."""
    return make_snapshot(SnapshotStore(tmp_path / "template"), "t")


def copy_maker(template, made=None):
    def create(directory):
        for f in template.iterdir():
            shutil.copy2(f, directory / f.name)
        if made is not None:
            made.append(directory)
        return Golden.load(directory)
    return create


def test_a_failed_first_clone_leaves_a_snapshot_others_use_and_makes_a_new_generation(
        tmp_path, template):
    other, me = SnapshotStore(tmp_path), SnapshotStore(tmp_path)
    make_snapshot(other, "k1")
    theirs = other.get_or_create("k1", create=lambda d: pytest.fail("must not boot"), what="t")
    mine = me.get_or_create("k1", create=lambda d: pytest.fail("must not boot"), what="t")
    made = []
    new = me.replace("k1", mine.directory, copy_maker(template, made), why="boot timeout", what="t")
    assert made == [tmp_path / "snapshots" / "k1-g1"] and new.directory == made[0]
    assert Golden.load(theirs.directory).key == "k1"  # their files are all still there
    # a third session takes the newest generation; the old one stays while it is used
    third = SnapshotStore(tmp_path)
    assert third.get_or_create("k1", create=lambda d: pytest.fail("must not boot"),
                               what="t").directory == new.directory
    assert sorted(i.name for i in third.list()) == ["k1", "k1-g1"]
    assert third.prune(None) == []  # superseded, but in use
    other.release()
    assert third.prune(None) == ["k1"]  # superseded and unused: gone
    for store in (me, third):
        store.release()


def test_a_failed_first_clone_nobody_else_uses_is_made_again_in_place(tmp_path, template):
    messages = []
    me = SnapshotStore(tmp_path, messages.append)
    make_snapshot(me, "k1")
    mine = me.get_or_create("k1", create=lambda d: pytest.fail("must not boot"), what="t")
    made = []
    new = me.replace("k1", mine.directory, copy_maker(template, made), why="boot timeout", what="t")
    assert made == [me.path("k1")] == [new.directory]
    assert any("snapshot k1 removed: boot timeout" in m for m in messages)
    me.release()


def test_a_session_that_made_it_anew_first_is_followed(tmp_path, template):
    """Two sessions' first clones of one snapshot fail: the second takes the generation
    the first made instead of making a third."""
    a, b = SnapshotStore(tmp_path), SnapshotStore(tmp_path)
    make_snapshot(a, "k1")
    old_a = a.get_or_create("k1", create=lambda d: pytest.fail("must not boot"), what="t")
    old_b = b.get_or_create("k1", create=lambda d: pytest.fail("must not boot"), what="t")
    new_a = a.replace("k1", old_a.directory, copy_maker(template), why="x", what="t")
    new_b = b.replace("k1", old_b.directory, lambda d: pytest.fail("must not boot"), why="x", what="t")
    assert new_a.directory == new_b.directory == tmp_path / "snapshots" / "k1-g1"
    a.release()
    b.release()


def _hold_lock_then_log(path, log, go, entered):
    go.wait(10)
    with file_lock(path):
        entered.set()
        with open(log, "a") as fh:
            fh.write(f"in {time.monotonic()}\n")
        time.sleep(0.5)
        with open(log, "a") as fh:
            fh.write(f"out {time.monotonic()}\n")


def test_a_lock_file_unlinked_by_its_holder_is_never_held_twice(tmp_path):
    """Finding 2: rm/prune unlink KEY.lock while another process waits on it; the waiter
    must not end up holding a deleted file while a third holds the new one."""
    lock, log = tmp_path / "k.lock", tmp_path / "log"
    go, entered = FORK.Event(), FORK.Event()
    waiter = FORK.Process(target=_hold_lock_then_log, args=(lock, log, go, entered))
    waiter.start()  # before we lock: a forked child would inherit our lock
    with file_lock(lock):
        go.set()
        time.sleep(1.0)  # the waiter blocks in flock on this file
        lock.unlink()  # what `snapshot rm` does holding it
    assert entered.wait(10)
    with file_lock(lock):  # the third process
        third = time.monotonic()
    waiter.join(10)
    (inside, outside) = [float(line.split()[1]) for line in log.read_text().splitlines()]
    assert not inside < third < outside, "two processes held the lock at once"


def _session_loop(root, template, key, seconds, errors):
    """A session: get_or_create, check the files stay while held, release; repeat."""
    try:
        deadline = time.monotonic() + seconds
        making = root / f"making-{key}"

        def create(directory):
            try:
                fd = os.open(making, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                errors.put(f"two processes made snapshot {key} at once")
                raise
            try:
                time.sleep(0.02)
                return copy_maker(template)(directory)
            finally:
                os.close(fd)
                os.unlink(making)

        while time.monotonic() < deadline:
            store = SnapshotStore(root)
            golden = store.get_or_create(key, create=create, what="t")
            time.sleep(0.01)
            if not (golden.directory / "memory.save").is_file():
                errors.put(f"snapshot {golden.directory.name} removed while in use")
            store.release()
    except Exception:  # noqa: BLE001 - reported to the test
        errors.put(traceback.format_exc())


def _janitor_loop(root, seconds, errors):
    """`snapshot prune --max-gb 0` and `snapshot rm` in a loop."""
    try:
        deadline = time.monotonic() + seconds
        store = SnapshotStore(root)
        while time.monotonic() < deadline:
            store.prune(0)
            for info in store.list():
                store.remove(info.name)
    except Exception:  # noqa: BLE001 - reported to the test
        errors.put(traceback.format_exc())


def test_sessions_make_each_snapshot_once_while_rm_and_prune_loop(tmp_path, template):
    errors = FORK.Queue()
    procs = [FORK.Process(target=_session_loop, args=(tmp_path, template, key, 3.0, errors))
             for key in ("k1", "k1", "k1", "k2")]
    procs += [FORK.Process(target=_janitor_loop, args=(tmp_path, 3.0, errors)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    found = []
    while not errors.empty():
        found.append(errors.get())
    assert found == []
    assert [p.exitcode for p in procs] == [0] * len(procs)
