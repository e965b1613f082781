import json

import pytest

from pytest_kvm.cache import sha256_file
from pytest_kvm.errors import ImageError
from pytest_kvm.images import ImageStore
from pytest_kvm.recipes import list_recipes, load_recipe


def fake_cached(cache, name="debian-12"):
    """A cache entry as the builder leaves it, with tiny stand-in files (no build)."""
    dest = cache / "images" / name
    dest.mkdir(parents=True)
    for fn in ("base.qcow2", "vmlinuz", "initrd.img"):
        (dest / fn).write_bytes(fn.encode() * 100)
    manifest = {"name": name, "family": "linux", "recipe_digest": load_recipe(name).digest,
                "kernel_cmdline": "root=LABEL=rootfs", "format": "qcow2", "built_at": "now",
                "sha256": {fn: sha256_file(dest / fn) for fn in ("base.qcow2", "vmlinuz", "initrd.img")}}
    (dest / "manifest.json").write_text(json.dumps(manifest))
    return dest


def test_recipes_shipped():
    assert {"debian-12", "debian-13"} <= set(list_recipes())
    r = load_recipe("debian-13")
    assert r.suite == "trixie" and "cloud-init" in r.packages
    assert "etc/cloud/cloud.cfg.d/90-pytest-kvm.cfg" in r.files  # from debian-common.toml


def test_unknown_name_lists_known(tmp_path):
    store = ImageStore(tmp_path)
    with pytest.raises(ImageError, match=r"unknown guest OS 'plan9'.*debian-12.*--kvm-image"):
        store.resolve("plan9")


def test_cached_image_verified(tmp_path):
    dest = fake_cached(tmp_path)
    image = ImageStore(tmp_path).resolve("debian-12")
    assert image.disk == dest / "base.qcow2" and image.kernel == dest / "vmlinuz"
    assert [c.name for c in ImageStore(tmp_path).list_cached()] == ["debian-12"]


def test_changed_base_is_an_error_not_used(tmp_path):
    dest = fake_cached(tmp_path)
    (dest / "base.qcow2").write_bytes(b"tampered")
    with pytest.raises(ImageError, match="sha256 mismatch.*--force debian-12"):
        ImageStore(tmp_path).resolve("debian-12")


def test_local_image_names(tmp_path):
    store = ImageStore(tmp_path, {"win": tmp_path / "win.qcow2"})
    assert "win" in store.known_names()
    with pytest.raises(ImageError, match=r"win\.qcow2 does not exist"):
        store.resolve("win")
