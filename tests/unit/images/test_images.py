import hashlib
import io
import json
import lzma
import shutil
import stat
import subprocess
import threading

import pytest

from imageserver import ImageServer
from pytest_kvm import cli
from pytest_kvm.images.download import RetryPolicy
from pytest_kvm.errors import ImageError
from pytest_kvm.images.cache import check_files
from pytest_kvm.images.store import ImageStore
from pytest_kvm.images.recipes import list_recipes, load_recipe
from pytest_kvm.progress import Progress


def fake_cached(cache, name="debian-12"):
    """A cache entry as a build leaves it (``images/NAME/DIGEST/`` and the pointer
    ``images/NAME/current.json``), with tiny stand-in files (no build); its directory."""
    files = {fn: fn.encode() * 100 for fn in ("base.qcow2", "vmlinuz", "initrd.img")}
    recipe_digest = load_recipe(name).digest
    manifest = {"name": name, "family": "linux", "recipe_digest": recipe_digest,
                "kernel_cmdline": "root=LABEL=rootfs", "format": "qcow2", "built_at": "now",
                "sha256": {fn: hashlib.sha256(data).hexdigest() for fn, data in files.items()}}
    listing = "".join(f"{fn} {sha}\n" for fn, sha in sorted(manifest["sha256"].items()))
    digest = hashlib.sha256(listing.encode()).hexdigest()
    dest = cache / "images" / name / digest
    dest.mkdir(parents=True)
    for fn, data in files.items():
        (dest / fn).write_bytes(data)
    (dest / "manifest.json").write_text(json.dumps(manifest))
    (dest.parent / "current.json").write_text(json.dumps(
        {"digest": digest, "source": "recipe", "source_digest": recipe_digest}))
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
    assert image.digest == dest.name  # the directory is named by the digest snapshot keys hold
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


def empty_qcow2(tmp_path_factory, size):
    """The bytes of a real, empty qcow2 disk of virtual *size* (small enough to serve)."""
    if not shutil.which("qemu-img"):
        pytest.skip("qemu-img not installed")
    path = tmp_path_factory.mktemp("src") / "tiny.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), size], check=True)
    return path.read_bytes()


@pytest.fixture(scope="module")
def qcow2(tmp_path_factory):
    return empty_qcow2(tmp_path_factory, "16M")


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
    with store_for(tmp_path, server, catalog, messages) as store:
        image = store.resolve("tiny-linux")
    top = tmp_path / "cache" / "images" / "tiny-linux"
    dest = top / image.digest
    assert image.disk == dest / "disk.qcow2" and image.disk.read_bytes() == qcow2
    assert (image.format, image.family, image.firmware, image.login_user, image.min_memory_mib,
            image.kernel) == ("qcow2", "linux", "uefi", "tiny", 256, None)
    manifest = json.loads((dest / "manifest.json").read_text())
    assert manifest["url"] == f"{VENDOR}/tiny.qcow2.xz"
    assert manifest["downloaded_from"] == server.url(path)
    assert manifest["sha256"] == {"disk.qcow2": hashlib.sha256(qcow2).hexdigest()}
    # what a remote host's upload compares with the host's copy, without hashing it again
    assert image.files_sha256 == (("disk.qcow2", hashlib.sha256(qcow2).hexdigest()),)
    assert manifest["download_digest"] == {"sha256": hashlib.sha256(body).hexdigest()}
    assert (manifest["login_user"], manifest["firmware"], manifest["min_memory_mib"]) == ("tiny", "uefi", 256)
    assert any("downloading base image tiny-linux (not cached)" in m for m in messages)
    # content-addressed: the digest names the directory, the pointer names the digest
    listing = f"disk.qcow2 {hashlib.sha256(qcow2).hexdigest()}\n"
    assert image.digest == hashlib.sha256(listing.encode()).hexdigest()
    assert json.loads((top / "current.json").read_text())["digest"] == image.digest
    assert sorted(p.name for p in top.iterdir()) == sorted([image.digest, f"{image.digest}.use", "current.json"])
    # read-only like a built image (the README's 0444)
    assert {p.name: stat.S_IMODE(p.stat().st_mode) for p in dest.iterdir()} == {
        "disk.qcow2": 0o444, "manifest.json": 0o444}

    # a new session: verified from the cache, nothing downloaded
    with store_for(tmp_path, server, catalog) as store:
        assert store.resolve("tiny-linux") == image and len(server.gets(path)) == 1
        [cached] = store.list_cached()
    assert (cached.name, cached.kind, cached.stale, cached.digest) == ("tiny-linux", "catalog", False, image.digest)

    image.disk.chmod(0o644)  # read-only (a non-root test could not tamper otherwise)
    image.disk.write_bytes(b"tampered")
    with pytest.raises(ImageError, match="changed since it was downloaded.*image fetch --force tiny-linux"):
        with store_for(tmp_path, server, catalog) as store:
            store.resolve("tiny-linux")
    with store_for(tmp_path, server, catalog) as store:
        assert store.remove("tiny-linux").removed == [image.digest] and not top.exists()


@needs_qemu_img
def test_an_arm64_entry_is_what_the_arm64_matrix_downloads(tmp_path, server, qcow2):
    """``--kvm-os tiny-linux --kvm-arch arm64`` means catalog entry tiny-linux-arm64,
    downloaded and verified like any other (checksum file from the server)."""
    from pytest_kvm.config import Settings
    catalog = tmp_path / "arm.toml"
    catalog.write_text(tiny_catalog(tmp_path).read_text()
                       .replace('name = "tiny-linux"', 'name = "tiny-linux-arm64"\narch = "arm64"'))
    serve_tiny(server, qcow2)
    name = Settings.build(os_names=("tiny-linux",), archs=("arm64",)).os_for(None, None)
    assert name == "tiny-linux-arm64"
    with store_for(tmp_path, server, catalog) as store:
        image = store.resolve(name)
        assert store.catalog[name].arch == "arm64"
    assert (image.firmware, image.kernel, image.disk.read_bytes()) == ("uefi", None, qcow2)


@needs_qemu_img
def test_changed_entry_is_downloaded_again(tmp_path, server, qcow2):
    serve_tiny(server, qcow2)
    with store_for(tmp_path, server, tiny_catalog(tmp_path)) as store:
        first = store.resolve("tiny-linux")
    new_path, _ = serve_tiny(server, qcow2, path="tiny-v2.qcow2.xz")
    catalog = tiny_catalog(tmp_path, path="tiny-v2.qcow2.xz")
    with store_for(tmp_path, server, catalog) as store:
        assert [c.stale for c in store.list_cached()] == [True]
    messages = []
    with store_for(tmp_path, server, catalog, messages) as store:
        again = store.resolve("tiny-linux")
    assert len(server.gets(new_path)) == 1
    assert any("catalog entry changed since it was downloaded" in m for m in messages)
    # the same bytes: the same digest, whose directory stays as it was; the pointer now
    # says it is the new entry's, so the next session downloads nothing
    assert again.digest == first.digest and any("that copy stays" in m for m in messages)
    with store_for(tmp_path, server, catalog) as store:
        assert store.resolve("tiny-linux") == again and [c.stale for c in store.list_cached()] == [False]
    assert len(server.gets(new_path)) == 1


@needs_qemu_img
def test_declared_format_is_checked(tmp_path, server, qcow2):
    serve_tiny(server, qcow2, path="tiny.img", compress=False)
    store = store_for(tmp_path, server, tiny_catalog(tmp_path, path="tiny.img", fmt="raw", compression="none"))
    with pytest.raises(ImageError, match=r"says format 'raw' but .*tiny\.img is 'qcow2'; fix the entry"):
        store.resolve("tiny-linux")
    dest = tmp_path / "cache" / "images" / "tiny-linux"
    assert list(dest.iterdir()) == [] and store.list_cached() == []  # the staging directory is gone


def test_bad_checksum_leaves_nothing_usable(tmp_path, server):
    server.add("/mirror/images.example.org/tiny/tiny.qcow2.xz", lzma.compress(b"disk"))
    server.add("/mirror/images.example.org/tiny/SHA256SUMS", f"{'0' * 64}  tiny.qcow2.xz\n".encode())
    store = store_for(tmp_path, server, tiny_catalog(tmp_path))
    with pytest.raises(ImageError, match="checksum mismatch.*not used"):
        store.resolve("tiny-linux")
    dest = tmp_path / "cache" / "images" / "tiny-linux"
    assert list(dest.iterdir()) == [] and store.list_cached() == []  # the staging directory is gone


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
    fetched = capsys.readouterr().out.strip()
    digest = fetched.split("/")[-2]
    assert fetched.endswith(f"images/tiny-linux/{digest}/disk.qcow2") and len(digest) == 64
    assert cli.main(base + ["list"]) == 0
    line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("tiny-linux"))
    assert "catalog" in line and "ready" in line and line.endswith(f" {digest[:12]}")
    assert cli.main(base + ["list", "--long"]) == 0
    listed = capsys.readouterr().out.splitlines()
    row = next(i for i, line in enumerate(listed) if line.startswith("tiny-linux"))
    assert listed[row + 1] == f"  disk sha256 {hashlib.sha256(qcow2).hexdigest()}"
    assert max(map(len, listed)) <= cli.WIDTH
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
    with store_for(tmp_path, server, catalog, messages) as store:
        store.resolve("tiny-linux")
    digest = hashlib.sha256(body).hexdigest()
    assert any("publishes no checksum" in m and f'sha256 = "{digest}"' in m for m in messages)
    assert server.gets("/mirror/images.example.org/tiny/SHA256SUMS") == []


def test_available_means_bootable_without_a_download(tmp_path):
    fake_cached(tmp_path)
    store = ImageStore(tmp_path, {"mine": tmp_path / "mine.qcow2"})
    assert store.available("debian-12") and store.available("mine")
    assert "freebsd-14" in store.catalog and not store.available("freebsd-14")
    assert not store.available("no-such-os")


@pytest.fixture(scope="module")
def qcow2_v2(tmp_path_factory):
    """Another qcow2 disk (other bytes than *qcow2*): a vendor's new release."""
    return empty_qcow2(tmp_path_factory, "32M")


@needs_qemu_img
@pytest.mark.parametrize("held", [True, False], ids=["in-use", "unused"])
def test_a_new_download_never_touches_the_digest_a_session_uses(tmp_path, server, qcow2, qcow2_v2, held):
    serve_tiny(server, qcow2)
    user = store_for(tmp_path, server, tiny_catalog(tmp_path))  # a session on the first release
    old = user.resolve("tiny-linux")
    if not held:
        user.close()
    serve_tiny(server, qcow2_v2, path="tiny-v2.qcow2.xz")
    messages = []
    with store_for(tmp_path, server, tiny_catalog(tmp_path, path="tiny-v2.qcow2.xz"), messages) as store:
        new = store.resolve("tiny-linux")
    top = tmp_path / "cache" / "images" / "tiny-linux"
    assert new.digest != old.digest and new.disk.read_bytes() == qcow2_v2
    assert json.loads((top / "current.json").read_text())["digest"] == new.digest
    if held:
        # intact, readable, still what its manifest says: overlays on it keep working
        assert old.disk.read_bytes() == qcow2
        check_files("tiny-linux", old.disk.parent,
                    json.loads((old.disk.parent / "manifest.json").read_text()), "")
        assert any(f"old image {old.digest[:12]} kept: a running session uses it" in m for m in messages)
        with store_for(tmp_path, server, tiny_catalog(tmp_path)) as lister:
            [cached] = lister.list_cached()
        assert (cached.digest, cached.older) == (new.digest, 1)
        user.close()  # the session ends: the old digest goes with it
    else:
        assert any(f"old image {old.digest[:12]} removed" in m for m in messages)
    assert not old.disk.parent.exists() and not (top / f"{old.digest}.use").exists()
    assert sorted(p.name for p in top.iterdir()) == sorted([new.digest, f"{new.digest}.use", "current.json"])


@needs_qemu_img
def test_a_download_is_a_bar_on_a_terminal_and_one_line_otherwise(tmp_path, server, qcow2):
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    serve_tiny(server, qcow2 + b"\0" * (3 << 20))  # a few chunks
    catalog = tiny_catalog(tmp_path)
    lines, screen = [], Terminal()
    with ImageStore(tmp_path / "tty", progress=Progress(lines.append, screen),
                    mirror=server.url("/mirror"), catalogs=(catalog,), retry=FAST) as store:
        store.ensure_downloaded("tiny-linux")
    assert "downloading tiny-linux" in screen.getvalue() and "100%" in screen.getvalue()
    lines, pipe = [], io.StringIO()
    with ImageStore(tmp_path / "pipe", progress=Progress(lines.append, pipe),
                    mirror=server.url("/mirror"), catalogs=(catalog,), retry=FAST) as store:
        store.ensure_downloaded("tiny-linux")
    assert pipe.getvalue() == ""
    [done] = [line for line in lines if "tiny-linux:" in line and "MiB" in line]
    assert done.startswith("downloaded tiny-linux: ") and "verified by sha256" in done
    assert len(lines) <= 4, lines  # announced, downloaded, cached: no line per chunk
