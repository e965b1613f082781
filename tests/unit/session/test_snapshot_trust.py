"""Nothing in the snapshot cache is trusted that someone else could have written (issue 23,
finding 3): a cache, ``snapshots/`` or snapshot directory another user owns or that its
group or everyone can write is refused with one error naming the path and the fix; a file
changed since it was saved is caught by its sha256."""
import os

import pytest

from pytest_kvm.errors import StorageError
from pytest_kvm.session.snapshots import SnapshotStore

from test_snapshots import make_snapshot


def never_boot(directory):
    pytest.fail("an untrusted cache must not be used")


@pytest.mark.parametrize("where", ["snapshots", "snapshot", "cache"])
def test_a_world_writable_directory_is_never_used_for_a_clone(tmp_path, where):
    cache = tmp_path / "cache"
    store = SnapshotStore(cache)
    directory = make_snapshot(store, "k1")
    path = {"snapshots": store.root, "snapshot": directory, "cache": cache}[where]
    os.chmod(path, 0o777)
    with pytest.raises(StorageError) as err:
        store.get_or_create("k1", create=never_boot, what="t")
    assert str(path) in str(err.value) and "mode 0777" in str(err.value)
    assert f"chmod go-w {path}" in str(err.value)


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root")
def test_a_snapshot_directory_owned_by_another_user_is_refused(tmp_path):
    store = SnapshotStore(tmp_path)
    directory = make_snapshot(store, "k1")
    os.chown(directory, 65534, 65534)
    with pytest.raises(StorageError, match="owned by uid 65534"):
        store.get_or_create("k1", create=never_boot, what="t")


def test_a_symlinked_snapshots_directory_is_refused(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "snapshots").symlink_to(elsewhere)
    with pytest.raises(StorageError, match="a symbolic link"):
        SnapshotStore(tmp_path / "cache").get_or_create("k1", create=never_boot, what="t")


def test_a_file_changed_since_it_was_saved_is_caught_by_its_sha256(tmp_path):
    """Same size, other bytes: the stamp (size, mtime, inode) differs, so the file is
    hashed, and the hash differs: the snapshot is made again, not cloned."""
    messages = []
    store = SnapshotStore(tmp_path, messages.append)
    directory = make_snapshot(store, "k1")
    save = directory / "memory.save"
    data = bytearray(save.read_bytes())
    data[-1] ^= 0xFF
    save.write_bytes(bytes(data))
    made = []
    with pytest.raises(RuntimeError):
        store.get_or_create("k1", create=lambda d: made.append(d) or (_ for _ in ()).throw(RuntimeError()),
                            what="t")
    assert made == [directory]
    assert any("memory.save changed since it was saved" in m for m in messages)


def test_a_copied_snapshot_with_the_same_bytes_loads(tmp_path):
    """A cache restored elsewhere (new inodes and mtimes): hashed, equal, used."""
    import shutil
    store = SnapshotStore(tmp_path / "a")
    make_snapshot(store, "k1")
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    loaded = SnapshotStore(tmp_path / "b").get_or_create("k1", create=never_boot, what="t")
    assert loaded.directory == tmp_path / "b" / "snapshots" / "k1"
