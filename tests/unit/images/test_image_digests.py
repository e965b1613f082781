"""Immutable, content-addressed base images (``images/NAME/DIGEST/``): rebuilds beside
an image in use, old digests removed only when no session uses them, the old flat
layout replaced, ``pytest-kvm image rm``, and the digest in snapshot keys. The build is
faked (``build.build_image`` writes tiny files); a real one is an e2e matter."""
import dataclasses
import hashlib
import json
import stat
from pathlib import Path

import pytest

from pytest_kvm import cli

from pytest_kvm.images import build
from pytest_kvm.images.cache import MANIFEST
from pytest_kvm.guest.golden import digest as key_of
from pytest_kvm.config import Settings
from pytest_kvm.guest.config import GuestConfig
from pytest_kvm.images.store import ImageStore
from pytest_kvm.keys import KeyPair
from pytest_kvm.images.recipes import load_recipe
from pytest_kvm.session.session import KvmSession

FILES = (build.DISK, build.KERNEL, build.INITRD)


@pytest.fixture
def builds(monkeypatch):
    """``build.build_image`` replaced by a fake that writes tiny files; set ``builds.release``
    to change what the next build makes (a real build never makes the same bytes twice)."""
    class Builds:
        release = "v1"
        count = 0

    def build_image(recipe, out, progress):
        Builds.count += 1
        assert out.is_dir() and list(out.iterdir()) == [] and out.name.startswith(".stage-")
        for name in FILES:
            (out / name).write_bytes(f"{name} {Builds.release}".encode() * 50)
        manifest = {"name": recipe.name, "source": "recipe", "family": recipe.family,
                    "recipe_digest": recipe.digest, "kernel_cmdline": recipe.kernel_cmdline,
                    "format": "qcow2", "built_at": Builds.release,
                    "sha256": {name: hashlib.sha256((out / name).read_bytes()).hexdigest() for name in FILES}}
        return manifest

    monkeypatch.setattr(build, "build_image", build_image)
    return Builds


def store(cache, messages=None):
    return ImageStore(cache, progress=messages.append if messages is not None else lambda m: None)


def top(cache, name="debian-12"):
    return cache / "images" / name


def pointer(cache, name="debian-12"):
    return json.loads((top(cache, name) / "current.json").read_text())


def test_a_build_is_staged_then_renamed_to_its_digest_read_only(tmp_path, builds):
    with store(tmp_path) as s:
        image = s.resolve("debian-12")
        dest = image.disk.parent
        assert dest.parent == top(tmp_path) and dest.name == image.digest
        listing = "".join(f"{n} {hashlib.sha256((dest / n).read_bytes()).hexdigest()}\n" for n in sorted(FILES))
        assert image.digest == hashlib.sha256(listing.encode()).hexdigest()
        assert pointer(tmp_path) == {**pointer(tmp_path), "digest": image.digest, "source": "recipe",
                                     "source_digest": load_recipe("debian-12").digest}
        assert {p.name: stat.S_IMODE(p.stat().st_mode) for p in dest.iterdir()} == dict.fromkeys(
            [*FILES, MANIFEST], 0o444)
        assert sorted(p.name for p in top(tmp_path).iterdir()) == sorted(
            [image.digest, f"{image.digest}.use", "current.json"])  # no staging left
    with store(tmp_path) as s:  # the next session: cached, not built again
        assert s.resolve("debian-12") == image and builds.count == 1


def test_a_failed_build_leaves_no_staging_and_the_current_image(tmp_path, builds, monkeypatch):
    with store(tmp_path) as s:
        before = s.resolve("debian-12")

    def broken(recipe, out, progress):
        (out / build.DISK).write_bytes(b"half")
        raise build.ImageError("debootstrap failed")

    monkeypatch.setattr(build, "build_image", broken)
    with store(tmp_path) as s, pytest.raises(build.ImageError, match="debootstrap"):
        s.ensure_built("debian-12", force=True)
    assert pointer(tmp_path)["digest"] == before.digest and before.disk.is_file()
    assert not [p for p in top(tmp_path).iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("held", [True, False], ids=["in-use", "unused"])
def test_a_rebuild_never_touches_the_digest_a_session_uses(tmp_path, builds, held):
    user_messages = []
    user = store(tmp_path, user_messages)  # a session booting guests from the first build
    old = user.resolve("debian-12")
    if not held:
        user.close()
    builds.release = "v2"
    messages = []
    with store(tmp_path, messages) as s:
        new = s.ensure_built("debian-12", force=True)
    assert new.digest != old.digest and pointer(tmp_path)["digest"] == new.digest
    if held:
        assert old.disk.read_bytes().startswith(b"base.qcow2 v1") and old.kernel.is_file()
        assert any(f"old image {old.digest[:12]} kept: a running session uses it" in m for m in messages)
        with store(tmp_path) as s:
            [cached] = s.list_cached()
            assert (cached.digest, cached.older, cached.stale) == (new.digest, 1, False)
            assert s.resolve("debian-12") == new  # a new session gets the new one
        builds.release = "v3"
        with store(tmp_path, messages) as s:  # another rebuild: the one in use is still left
            newer = s.ensure_built("debian-12", force=True)
        assert old.disk.is_file() and not new.disk.exists()
        del user_messages[:]
        user.close()  # the session ends, and removes the old digest nobody uses now
        assert user_messages == [f"debian-12: old image {old.digest[:12]} removed (no session uses it now)"]
        new = newer
    else:
        assert any(f"old image {old.digest[:12]} removed" in m for m in messages)
    assert not old.disk.parent.exists() and not (top(tmp_path) / f"{old.digest}.use").exists()
    assert sorted(p.name for p in top(tmp_path).iterdir()) == sorted(
        [new.digest, f"{new.digest}.use", "current.json"])


def test_a_changed_recipe_is_built_again_beside_the_old_one(tmp_path, builds):
    with store(tmp_path) as s:
        old = s.resolve("debian-12")
    data = pointer(tmp_path)
    (top(tmp_path) / "current.json").write_text(json.dumps({**data, "source_digest": "an older recipe"}))
    with store(tmp_path) as s:
        assert [c.stale for c in s.list_cached()] == [True]
    builds.release = "v2"
    messages = []
    with store(tmp_path, messages) as s:
        new = s.resolve("debian-12")
    assert any("building base image debian-12 (recipe changed since it was built)" in m for m in messages)
    assert new.digest != old.digest and pointer(tmp_path)["source_digest"] == load_recipe("debian-12").digest


def test_a_session_that_lost_the_race_for_a_removed_digest_reads_the_pointer_again(tmp_path, builds):
    with store(tmp_path) as s:
        old = s.resolve("debian-12")
    reader = store(tmp_path)
    builds.release = "v2"
    with store(tmp_path) as s:  # rebuilt and the old digest removed before the reader locks it
        new = s.ensure_built("debian-12", force=True)
    assert not reader.cache.hold("debian-12", old.digest)
    assert reader.resolve("debian-12") == new
    reader.close()


def test_what_a_killed_build_left_is_swept_by_the_next(tmp_path, builds):
    stage = top(tmp_path) / ".stage-killed"
    stage.mkdir(parents=True)
    (stage / build.DISK).write_bytes(b"half a disk")
    (top(tmp_path) / ".current.json.123.tmp").write_text("{")  # a pointer draft
    with store(tmp_path) as s:
        image = s.resolve("debian-12")
    assert sorted(p.name for p in top(tmp_path).iterdir()) == sorted(
        [image.digest, f"{image.digest}.use", "current.json"])


def old_layout(cache, name="debian-12"):
    """What earlier versions left: the image's files flat in ``images/NAME/`` (0444)."""
    dest = top(cache, name)
    dest.mkdir(parents=True)
    for fn in FILES:
        (dest / fn).write_bytes(fn.encode() * 100)
    (dest / MANIFEST).write_text(json.dumps({
        "name": name, "family": "linux", "recipe_digest": load_recipe(name).digest,
        "kernel_cmdline": "root=LABEL=rootfs", "format": "qcow2", "built_at": "long ago",
        "sha256": {fn: hashlib.sha256(fn.encode() * 100).hexdigest() for fn in FILES}}))
    for path in dest.iterdir():
        path.chmod(0o444)
    (cache / "images" / f"{name}.lock").touch()
    return dest


def test_the_old_flat_layout_is_not_cached_and_replaced(tmp_path, builds, capsys):
    dest = old_layout(tmp_path)
    with store(tmp_path) as s:
        [cached] = s.list_cached()
        assert (cached.old_layout, cached.stale, cached.digest) == (True, True, "")
        assert not s.available("freebsd-14")
    assert cli.main(["--cache-dir", str(tmp_path), "image", "list"]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("debian-12 "))
    assert "old layout" in line
    messages = []
    with store(tmp_path, messages) as s:
        image = s.resolve("debian-12")
    assert builds.count == 1 and image.disk.parent.parent == dest
    assert any("(not cached; the copy an earlier pytest-kvm version left in the old layout is replaced)"
               in m for m in messages)
    assert sorted(p.name for p in dest.iterdir()) == sorted(
        [image.digest, f"{image.digest}.use", "current.json"])  # the flat files are gone


def test_image_rm_removes_every_digest_no_session_uses(tmp_path, builds, capsys):
    cache = ["--cache-dir", str(tmp_path)]
    user = store(tmp_path)
    old = user.resolve("debian-12")
    builds.release = "v2"
    with store(tmp_path) as s:
        new = s.ensure_built("debian-12", force=True)
    assert cli.main([*cache, "image", "rm", "debian-12"]) == 1
    out = capsys.readouterr().out
    assert f"debian-12: removed {new.digest[:12]} (current)" in out
    assert f"debian-12: left {old.digest[:12]}: a running session uses it" in out
    assert old.disk.read_bytes().startswith(b"base.qcow2 v1") and not new.disk.parent.exists()
    assert not (top(tmp_path) / "current.json").exists()  # not cached any more
    assert cli.main([*cache, "image", "list"]) == 0
    assert "not built" in next(x for x in capsys.readouterr().out.splitlines() if x.startswith("debian-12 "))
    user.close()  # the last user ends: its digest, no longer current, goes
    assert not top(tmp_path).exists() or list(top(tmp_path).iterdir()) == []
    assert cli.main([*cache, "image", "rm", "debian-12"]) == 1  # as `snapshot rm` of none
    assert "debian-12: not cached" in capsys.readouterr().err


def test_image_rm_of_the_old_layout(tmp_path, capsys):
    old_layout(tmp_path)
    assert cli.main(["--cache-dir", str(tmp_path), "image", "rm", "debian-12"]) == 0
    assert "debian-12: removed old layout" in capsys.readouterr().out
    assert not top(tmp_path).exists()


def test_the_session_releases_its_images_at_close(tmp_path, builds):
    kvm = KvmSession(Settings(cache_dir=tmp_path))
    image = kvm.images.resolve("debian-12")
    with store(tmp_path) as s:
        assert s.remove("debian-12").left == [image.digest]
    kvm.close()
    with store(tmp_path) as s:
        assert s.remove("debian-12").removed == [image.digest]


class FakeHv:
    uri, embed_index = "test:///fake", None

    def versions(self):
        return {"libvirt": "9.0.0", "qemu": "7.2.0"}

    def close(self):
        pass


def test_the_base_digest_is_in_the_snapshot_key(tmp_path, builds):
    """Two builds of one recipe give two golden/snapshot keys: a golden never meets a base
    other than its own."""
    kvm = KvmSession(Settings(cache_dir=tmp_path / "cache"))
    kvm._hv = kvm.host._hv = FakeHv()
    required = [f.name for f in dataclasses.fields(GuestConfig)
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    keys = {}
    for release in ("v1", "v2"):
        builds.release = release
        image = kvm.images.ensure_built("debian-12", force=True)
        config = GuestConfig(**{**dict.fromkeys(required), "name": "g", "os": "debian-12", "image": image,
                                "memory_mib": 512, "cpus": 1, "virt_type": "qemu", "workdir": Path("/w"),
                                "login_key_file": Path("/k"), "metadata": {},
                                "login_key": KeyPair("private", "ssh-ed25519 AAAA x")})
        fields = kvm.goldens.fields(config)
        assert fields["base"] == image.digest
        keys[release] = key_of(fields)
    assert keys["v1"] != keys["v2"]
    kvm.close()
