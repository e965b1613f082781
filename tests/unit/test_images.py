import hashlib
import json
import lzma
import shutil
import stat
import subprocess
import threading

import pytest

from imageserver import ImageServer
from pytest_kvm import cli
from pytest_kvm.cache import sha256_file
from pytest_kvm.download import RetryPolicy
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


# -- catalog images (downloaded) ----------------------------------------------------
needs_qemu_img = pytest.mark.skipif(not shutil.which("qemu-img"), reason="qemu-img not installed")
FAST = RetryPolicy(attempts=3, backoff=0.01, timeout=5.0)
VENDOR = "https://images.example.org/tiny"


@pytest.fixture(scope="module")
def qcow2(tmp_path_factory):
    """A real (empty) qcow2 disk, small enough to serve."""
    if not shutil.which("qemu-img"):
        pytest.skip("qemu-img not installed")
    path = tmp_path_factory.mktemp("src") / "tiny.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), "16M"], check=True)
    return path.read_bytes()


@pytest.fixture
def server():
    with ImageServer() as srv:
        yield srv


def tiny_catalog(directory, *, path="tiny.qcow2.xz", fmt="qcow2", compression="xz"):
    catalog = directory / "images.toml"
    catalog.write_text(f"""
[[image]]
name = "tiny-linux"
family = "linux"
url = "{VENDOR}/{path}"
checksum_url = "{VENDOR}/SHA256SUMS"
checksum_algorithm = "sha256"
format = "{fmt}"
compression = "{compression}"
firmware = "uefi"
min_memory_mib = 256
login_user = "tiny"
""")
    return catalog


def serve_tiny(server, disk, path="tiny.qcow2.xz", compress=True, **kw):
    """Serve *disk* where the mirror maps the vendor URL: /mirror/images.example.org/tiny/..."""
    body = lzma.compress(disk) if compress else disk
    server.add(f"/mirror/images.example.org/tiny/{path}", body, **kw)
    server.add("/mirror/images.example.org/tiny/SHA256SUMS",
               f"{hashlib.sha256(body).hexdigest()}  {path}\n".encode())
    return f"/mirror/images.example.org/tiny/{path}", body


def store_for(tmp_path, server, catalog, messages=None):
    return ImageStore(tmp_path / "cache", progress=(messages.append if messages is not None else print),
                      mirror=server.url("/mirror"), catalogs=(catalog,), retry=FAST)


def test_recipe_images_keep_their_defaults(tmp_path):
    fake_cached(tmp_path)
    image = ImageStore(tmp_path).resolve("debian-12")
    assert (image.firmware, image.login_user, image.min_memory_mib) == (None, None, None)  # the family decides


def test_catalog_names_are_known(tmp_path):
    names = ImageStore(tmp_path).known_names()
    assert {"debian-12", "freebsd-14", "ubuntu-24.04", "netbsd-10"} <= set(names)


@needs_qemu_img
def test_catalog_image_downloaded_through_mirror_and_reused(tmp_path, server, qcow2):
    path, body = serve_tiny(server, qcow2)
    catalog = tiny_catalog(tmp_path)
    messages = []
    image = store_for(tmp_path, server, catalog, messages).resolve("tiny-linux")
    dest = tmp_path / "cache" / "images" / "tiny-linux"
    assert image.disk == dest / "disk.qcow2" and image.disk.read_bytes() == qcow2
    assert (image.format, image.family, image.firmware, image.login_user, image.min_memory_mib,
            image.kernel) == ("qcow2", "linux", "uefi", "tiny", 256, None)
    manifest = json.loads((dest / "manifest.json").read_text())
    assert manifest["url"] == f"{VENDOR}/tiny.qcow2.xz"
    assert manifest["downloaded_from"] == server.url(path)
    assert manifest["sha256"] == {"disk.qcow2": hashlib.sha256(qcow2).hexdigest()}
    assert manifest["download_digest"] == {"sha256": hashlib.sha256(body).hexdigest()}
    assert (manifest["login_user"], manifest["firmware"], manifest["min_memory_mib"]) == ("tiny", "uefi", 256)
    assert any("downloading base image tiny-linux (not cached)" in m for m in messages)
    assert sorted(p.name for p in dest.iterdir()) == ["disk.qcow2", "incoming.qcow2.lock", "manifest.json"]
    # read-only like a built image (the README's 0444)
    assert {p.name: stat.S_IMODE(p.stat().st_mode) for p in dest.iterdir() if p.suffix != ".lock"} == {
        "disk.qcow2": 0o444, "manifest.json": 0o444}

    # a new session: verified from the cache, nothing downloaded
    again = store_for(tmp_path, server, catalog).resolve("tiny-linux")
    assert again == image and len(server.gets(path)) == 1
    [cached] = store_for(tmp_path, server, catalog).list_cached()
    assert (cached.name, cached.kind, cached.stale) == ("tiny-linux", "catalog", False)

    image.disk.chmod(0o644)  # read-only (a non-root test could not tamper otherwise)
    image.disk.write_bytes(b"tampered")
    with pytest.raises(ImageError, match="changed since it was downloaded.*image fetch --force tiny-linux"):
        store_for(tmp_path, server, catalog).resolve("tiny-linux")
    assert store_for(tmp_path, server, catalog).remove("tiny-linux") and not dest.exists()


@needs_qemu_img
def test_changed_entry_is_downloaded_again(tmp_path, server, qcow2):
    serve_tiny(server, qcow2)
    store_for(tmp_path, server, tiny_catalog(tmp_path)).resolve("tiny-linux")
    new_path, _ = serve_tiny(server, qcow2, path="tiny-v2.qcow2.xz")
    catalog = tiny_catalog(tmp_path, path="tiny-v2.qcow2.xz")
    assert [c.stale for c in store_for(tmp_path, server, catalog).list_cached()] == [True]
    messages = []
    store_for(tmp_path, server, catalog, messages).resolve("tiny-linux")
    assert len(server.gets(new_path)) == 1
    assert any("catalog entry changed since it was downloaded" in m for m in messages)


@needs_qemu_img
def test_declared_format_is_checked(tmp_path, server, qcow2):
    serve_tiny(server, qcow2, path="tiny.img", compress=False)
    store = store_for(tmp_path, server, tiny_catalog(tmp_path, path="tiny.img", fmt="raw", compression="none"))
    with pytest.raises(ImageError, match=r"says format 'raw' but .*tiny\.img is 'qcow2'; fix the entry"):
        store.resolve("tiny-linux")
    dest = tmp_path / "cache" / "images" / "tiny-linux"
    assert not (dest / "disk.raw").exists() and not (dest / "manifest.json").exists()


def test_bad_checksum_leaves_nothing_usable(tmp_path, server):
    server.add("/mirror/images.example.org/tiny/tiny.qcow2.xz", lzma.compress(b"disk"))
    server.add("/mirror/images.example.org/tiny/SHA256SUMS", f"{'0' * 64}  tiny.qcow2.xz\n".encode())
    store = store_for(tmp_path, server, tiny_catalog(tmp_path))
    with pytest.raises(ImageError, match="checksum mismatch.*not used"):
        store.resolve("tiny-linux")
    dest = tmp_path / "cache" / "images" / "tiny-linux"
    assert sorted(p.name for p in dest.iterdir()) == ["incoming.qcow2.lock"]
    assert store.list_cached() == []


@needs_qemu_img
def test_parallel_sessions_download_once(tmp_path, server, qcow2):
    path, _ = serve_tiny(server, qcow2, chunk_delay=0.02)
    catalog = tiny_catalog(tmp_path)
    images, errors = [], []

    def session():
        try:
            images.append(store_for(tmp_path, server, catalog, []).resolve("tiny-linux"))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=session) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert errors == [] and len(images) == 3 and len({i.disk for i in images}) == 1
    assert len(server.gets(path)) == 1


@needs_qemu_img
def test_cli_fetch_and_list(tmp_path, server, qcow2, capsys):
    serve_tiny(server, qcow2)
    base = ["--cache-dir", str(tmp_path / "cache"), "--catalog", str(tiny_catalog(tmp_path)), "image"]
    assert cli.main(base + ["list"]) == 0
    listed = capsys.readouterr().out
    assert "tiny-linux" in listed and "not fetched" in listed and "freebsd-14" in listed
    assert cli.main(base + ["fetch", "tiny-linux", "--mirror", server.url("/mirror")]) == 0
    assert capsys.readouterr().out.strip().endswith("images/tiny-linux/disk.qcow2")
    assert cli.main(base + ["list"]) == 0
    line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("tiny-linux"))
    assert "catalog" in line and "ready" in line and hashlib.sha256(qcow2).hexdigest() in line
    assert cli.main(base + ["fetch", "tiny-linux", "--force", "--mirror", server.url("/nowhere")]) == 1
    err = capsys.readouterr().err
    assert "HTTP 404" in err and "--kvm-image tiny-linux=PATH" in err
    # the failed re-download left the verified copy in place
    assert cli.main(base + ["list"]) == 0
    assert "ready" in next(line for line in capsys.readouterr().out.splitlines() if line.startswith("tiny-linux"))


@needs_qemu_img
def test_trust_on_first_use_prints_the_digest_to_pin(tmp_path, server, qcow2):
    path, body = serve_tiny(server, qcow2)
    catalog = tiny_catalog(tmp_path)
    text = catalog.read_text().replace('checksum_url = "https://images.example.org/tiny/SHA256SUMS"\n'
                                       'checksum_algorithm = "sha256"', "trust_on_first_use = true")
    catalog.write_text(text)
    messages = []
    store_for(tmp_path, server, catalog, messages).resolve("tiny-linux")
    digest = hashlib.sha256(body).hexdigest()
    assert any("publishes no checksum" in m and f'sha256 = "{digest}"' in m for m in messages)
    assert server.gets("/mirror/images.example.org/tiny/SHA256SUMS") == []


def test_available_means_bootable_without_a_download(tmp_path):
    fake_cached(tmp_path)
    store = ImageStore(tmp_path, {"mine": tmp_path / "mine.qcow2"})
    assert store.available("debian-12") and store.available("mine")
    assert "freebsd-14" in store.catalog and not store.available("freebsd-14")
    assert not store.available("no-such-os")
