"""The snapshot cache's files: loading, damage, listing, rm and prune by size and last use."""
import json
import os
import time

import pytest

from pytest_kvm.guest.golden import Golden
from pytest_kvm.keys import KeyPair
from pytest_kvm.session.snapshots import SnapshotStore
from pytest_kvm.vm.saveimage import SaveImage
from saveimages import write_image


def make_snapshot(store, key, size_mib=1, used_ago=0.0):
    """A complete snapshot directory as a session writes it (a fake disk of *size_mib*)."""
    directory = store.path(key)
    directory.mkdir(parents=True)
    write_image(directory / "memory.save")
    (directory / "disk.qcow2").write_bytes(b"\0" * (size_mib << 20))
    (directory / "seed.iso").write_bytes(b"seed")
    (directory / "console.log").write_text("")
    golden = Golden(key=key, directory=directory, image=SaveImage.read(directory / "memory.save"),
                    login_key=KeyPair.generate("t"), host_public="ssh-ed25519 AAAA host", hostname="g")
    golden.write_meta({"os": "debian-12", "memory_mib": 512}, created=time.time() - used_ago)
    use = store.root / f"{key}.use"
    use.touch()
    os.utime(use, (time.time() - used_ago, time.time() - used_ago))
    return directory


def test_a_complete_snapshot_loads_with_its_login_key(tmp_path):
    store = SnapshotStore(tmp_path)
    make_snapshot(store, "k1")
    golden = store.get_or_create("k1", create=lambda d: pytest.fail("must not boot"), what="t")
    assert golden.hostname == "g" and golden.directory == store.path("k1")
    assert golden.login_key.private_openssh.startswith("-----BEGIN OPENSSH PRIVATE KEY")
    assert oct(golden.login_key_file.stat().st_mode & 0o777) == "0o600"
    assert store.reused == 1 and store.created == 0
    store.release()


def test_a_truncated_snapshot_is_removed_and_made_again(tmp_path):
    messages = []
    store = SnapshotStore(tmp_path, messages.append)
    directory = make_snapshot(store, "k1")
    save = directory / "memory.save"
    save.write_bytes(save.read_bytes()[:-1000])
    made = []

    def create(path):
        made.append(path)
        assert oct(path.stat().st_mode & 0o777) == "0o700"  # the store makes it owner-only
        assert not any(path.iterdir())  # the damaged files are gone
        make_snapshot_files = make_snapshot(SnapshotStore(tmp_path / "other"), "x")
        for f in make_snapshot_files.iterdir():
            (path / f.name).write_bytes(f.read_bytes())
        return Golden.load(path)

    store.get_or_create("k1", create=create, what="t")
    assert made == [directory] and store.created == 1
    assert any("snapshot k1 is damaged" in m and "memory.save" in m for m in messages)
    store.release()


def test_an_incomplete_snapshot_is_named_and_made_again(tmp_path):
    messages = []
    store = SnapshotStore(tmp_path, messages.append)
    (store.path("k1")).mkdir(parents=True)  # a run killed while making it: no meta.json
    made = []
    with pytest.raises(RuntimeError):  # stands for the boot; what matters is that it was tried
        store.get_or_create("k1", create=lambda d: made.append(d) or (_ for _ in ()).throw(RuntimeError()),
                            what="t")
    assert made == [store.path("k1")] and not store.path("k1").exists()
    assert any("snapshot k1 is incomplete" in m for m in messages)


def test_prune_removes_least_recently_used_until_under_the_limit(tmp_path):
    store = SnapshotStore(tmp_path)
    for key, age in (("old", 300), ("mid", 200), ("new", 100)):
        make_snapshot(store, key, size_mib=2, used_ago=age)
    store.path("broken").mkdir()  # no meta.json: incomplete (a killed run)
    sizes = {i.name: i.size for i in store.list()}
    limit = sizes["new"] + sizes["mid"] + 1000
    removed = store.prune(limit)
    assert removed == ["broken", "old"]
    assert sorted(i.name for i in store.list()) == ["mid", "new"]
    assert sum(i.size for i in store.list()) <= limit


def test_prune_and_rm_leave_a_snapshot_in_use_alone(tmp_path):
    user, janitor = SnapshotStore(tmp_path), SnapshotStore(tmp_path)
    make_snapshot(user, "busy", used_ago=1000)
    make_snapshot(user, "idle", used_ago=10)
    user.get_or_create("busy", create=lambda d: pytest.fail("must not boot"), what="t")
    assert janitor.prune(0) == ["idle"]
    assert janitor.remove("busy") == "in use by a running session; left alone"
    assert [(i.name, i.in_use) for i in janitor.list()] == [("busy", True)]
    user.release()
    assert janitor.remove("busy") == "removed"
    assert janitor.list() == [] and janitor.remove("busy") == "no such snapshot"


def test_list_shows_key_fields(tmp_path):
    store = SnapshotStore(tmp_path)
    make_snapshot(store, "k1")
    (info,) = store.list()
    assert info.complete and not info.in_use
    assert info.fields == {"os": "debian-12", "memory_mib": 512}
    meta = json.loads((info.path / "meta.json").read_text())
    assert "PRIVATE" not in json.dumps(meta)  # the key lives in its own 0600 file


def test_a_remote_golden_keeps_its_head_here_and_its_files_on_the_host(tmp_path):
    """A golden saved on a --kvm-host: meta.json names the host's volumes, the directory
    holds the save image's head (no saved state, disk or seed), and it loads back whole."""
    from pytest_kvm.guest.golden import HostFiles
    from pytest_kvm.workdir import HEAD_FILE

    store = SnapshotStore(tmp_path)
    directory = store.path("r1")
    directory.mkdir(parents=True)
    whole = write_image(tmp_path / "whole.save")
    image = SaveImage.read(whole)
    (directory / HEAD_FILE).write_bytes(whole.read_bytes()[:image.stream_offset])
    (directory / "console.log").write_text("")
    files = HostFiles(host="ci@hv1_22", prefix="snap-r1-abcd", save="/pool/snap-r1-abcd.save",
                      disk="/pool/snap-r1-abcd.qcow2", seed="/pool/snap-r1-abcd.seed.img",
                      capacity=2**30)
    remote_image = SaveImage.parse((directory / HEAD_FILE).read_bytes(), files.save, image.size)
    golden = Golden(key="r1", directory=directory, image=remote_image,
                    login_key=KeyPair.generate("t"), host_public="ssh-ed25519 AAAA host",
                    hostname="g", host_files=files)
    golden.write_meta({"os": "debian-12", "host": "ci@hv1_22"}, created=time.time())
    assert not (directory / "memory.save").exists() and not (directory / "disk.qcow2").exists()
    loaded = store.get_or_create("r1", create=lambda d: pytest.fail("must not boot"), what="t")
    assert loaded.host_files == files
    assert str(loaded.frozen_disk) == files.disk and str(loaded.seed) == files.seed
    assert loaded.image.xml == image.xml and str(loaded.image.path) == files.save
    assert loaded.image.size == image.size
    store.release()
    # a head cut short is a damaged snapshot: made again, not used
    (directory / HEAD_FILE).write_bytes(b"x")
    made = []
    store.get_or_create("r1", create=lambda d: made.append(d) or golden, what="t")
    assert made == [directory]
    store.release()


def test_snapshot_list_names_a_remote_snapshots_host(tmp_path):
    """`pytest-kvm snapshot list` shows the host= key field of a remote host's snapshot."""
    import subprocess
    import sys

    store = SnapshotStore(tmp_path)
    directory = make_snapshot(store, "k2")
    meta = json.loads((directory / "meta.json").read_text())
    meta["fields"]["host"] = "ci@hv1_22"
    (directory / "meta.json").write_text(json.dumps(meta))
    make_snapshot(store, "k3")
    done = subprocess.run([sys.executable, "-m", "pytest_kvm.cli", "--cache-dir", str(tmp_path),
                           "snapshot", "list"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    rows = {line.split()[0]: line for line in done.stdout.splitlines() if line.startswith("k")}
    assert "host=ci@hv1_22" in rows["k2"] and "host=" not in rows["k3"]
    assert "all have: os=debian-12 memory_mib=512" in done.stdout  # not repeated per row
    assert "os=" not in rows["k3"] and max(map(len, done.stdout.splitlines())) <= 100
