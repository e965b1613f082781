"""``--kvm-mirror`` through a real pytest run: a user catalog (ini ``kvm_catalog``) whose entry's
host is unreachable, and a mirror on 127.0.0.1 laid out as MIRROR/HOST/PATH. The run
downloads the image and its checksum file from the mirror, verifies it and caches it.

No guest boots here: a catalog image boots from its own bootloader, and the only disks this
machine has (the built Debian images) have none, so the run stops at the verified image the
plugin would boot (``kvm.images.resolve``, what the ``guest`` fixture calls first). Nothing
leaves 127.0.0.0/8: the vendor's host is a closed port on 127.0.0.1."""
import hashlib
import json
import lzma
import subprocess

import pytest

from imageserver import ImageServer, closed_port

NAME = "mirrored-disk"

CHILD = """
import json, os

def test_the_image_comes_from_the_mirror(kvm):
    image = kvm.images.resolve(kvm.settings.default_os)
    with open(os.environ["RESULT_FILE"], "w") as fh:
        json.dump({"disk": str(image.disk), "format": image.format, "family": image.family,
                   "login_user": image.login_user}, fh)
"""


@pytest.fixture
def disk(tmp_path) -> bytes:
    """A small qcow2 image (what a vendor would publish, in miniature)."""
    path = tmp_path / "made.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), "16M"], check=True)
    return path.read_bytes()


@pytest.fixture
def run(pytester, tmp_path, monkeypatch):
    """run(server) -> (pytest result, what the child test saw): a pytest run with the user
    catalog and --kvm-mirror pointing at *server*'s /mirror."""
    vendor = f"127.0.0.1:{closed_port()}"  # unreachable: nothing listens there
    pytester.makefile(".toml", images=f"""
[[image]]
name = "{NAME}"
family = "linux"
url = "https://{vendor}/releases/1.0/disk.qcow2.xz"
checksum_url = "https://{vendor}/releases/1.0/SHA256SUMS"
checksum_algorithm = "sha256"
format = "qcow2"
compression = "xz"
min_memory_mib = 512
login_user = "vendoruser"
""")
    pytester.makeini("[pytest]\nkvm_catalog = images.toml\n")
    pytester.makepyfile(CHILD)
    result_file = tmp_path / "result.json"
    monkeypatch.setenv("RESULT_FILE", str(result_file))

    def go(server: ImageServer):
        result_file.unlink(missing_ok=True)
        # --opt=VALUE: pytest takes a separate argument naming an existing directory for a
        # test path when it looks for the rootdir and ini file
        result = pytester.runpytest("--kvm-os", NAME, f"--kvm-cache-dir={tmp_path / 'cache'}",
                                    "--kvm-mirror", server.url("/mirror"), "-p", "no:cacheprovider")
        seen = json.loads(result_file.read_text()) if result_file.exists() else None
        return result, seen

    go.vendor = vendor
    return go


def serve(server: ImageServer, vendor: str, disk: bytes, *, listed: bytes | None = None) -> None:
    """The mirror's copy of the vendor's directory: the xz image and its SHA256SUMS (listing
    the digest of *listed*, by default of what is served)."""
    packed = lzma.compress(disk)
    digest = hashlib.sha256(packed if listed is None else listed).hexdigest()
    server.add(f"/mirror/{vendor}/releases/1.0/disk.qcow2.xz", packed)
    server.add(f"/mirror/{vendor}/releases/1.0/SHA256SUMS", f"{digest}  disk.qcow2.xz\n".encode())


def test_a_run_downloads_through_the_mirror_verifies_and_caches(run, disk, tmp_path):
    with ImageServer() as server:
        serve(server, run.vendor, disk)
        result, seen = run(server)
        result.assert_outcomes(passed=1)
        image_url = server.url(f"/mirror/{run.vendor}/releases/1.0/disk.qcow2.xz")
        result.stdout.fnmatch_lines([f"*downloading base image {NAME} (not cached) from {image_url}*"])
        asked = [path for path, _ in server.requests]
        assert sorted(set(asked)) == [f"/mirror/{run.vendor}/releases/1.0/SHA256SUMS",
                                      f"/mirror/{run.vendor}/releases/1.0/disk.qcow2.xz"]
        # what the plugin would boot: the decompressed image, in the run's cache, as published
        cached = tmp_path / "cache"
        assert seen["disk"].startswith(str(cached))
        with open(seen["disk"], "rb") as fh:
            assert hashlib.sha256(fh.read()).hexdigest() == hashlib.sha256(disk).hexdigest()
        assert (seen["format"], seen["family"], seen["login_user"]) == ("qcow2", "linux", "vendoruser")

        # the next run uses the cached copy: nothing is downloaded again
        before = len(server.requests)
        result, again = run(server)
        result.assert_outcomes(passed=1)
        assert again == seen
        assert len(server.requests) == before
        assert "downloading base image" not in result.stdout.str()


def test_a_mirror_copy_that_disagrees_with_its_checksum_file_is_refused(run, disk, tmp_path):
    with ImageServer() as server:
        serve(server, run.vendor, disk, listed=b"another image: a damaged or partial copy")
        result, seen = run(server)
    result.assert_outcomes(failed=1)
    assert seen is None
    result.stdout.fnmatch_lines(["*ImageError: checksum mismatch for http://127.0.0.1:*/mirror/*"
                                 "/disk.qcow2.xz*"])
    cached = [p for p in (tmp_path / "cache").rglob("*") if p.is_file() and "qcow2" in p.name]
    assert cached == []  # the download was deleted, never cached
