import hashlib
import lzma
import os
import stat

import pytest

from imageserver import ImageServer, closed_port
from pytest_kvm.images.catalog import CatalogEntry
from pytest_kvm.images.download import RetryPolicy, fetch, parse_checksums
from pytest_kvm.errors import ImageError

DATA = os.urandom(300_000)
SHA256 = hashlib.sha256(DATA).hexdigest()
SHA512 = hashlib.sha512(DATA).hexdigest()


def fast(attempts=4, timeout=5.0):
    """Retries without real waiting, so the tests stay fast."""
    return RetryPolicy(attempts=attempts, backoff=0.01, max_backoff=0.02, timeout=timeout)


def entry(url, **verify):
    """A catalog entry for the disk at *url*, verified as *verify* says (``sha256=``,
    ``checksum_url=`` with ``checksum_algorithm=``, ...), or compressed (``compression=``)."""
    return CatalogEntry(name="disk", family="linux", url=url, format="qcow2", min_memory_mib=256,
                        login_user="user", **verify)


def leftovers(directory):
    """Files in the staging directory other than the image."""
    return sorted(p.name for p in directory.iterdir() if p.name != "disk.qcow2")


@pytest.fixture
def server():
    with ImageServer() as srv:
        yield srv


def test_good_file_verified_and_moved_in(server, tmp_path):
    url = server.add("/img/disk.qcow2", DATA)
    seen = []
    result = fetch(entry(url, sha256=SHA256), tmp_path / "disk.qcow2", policy=fast(),
                   progress=lambda done, total: seen.append((done, total)))
    assert result.sha256 == SHA256 and result.url == url
    assert result.verified_by == "sha256 pinned in the catalog"
    assert (tmp_path / "disk.qcow2").read_bytes() == DATA
    assert stat.S_IMODE((tmp_path / "disk.qcow2").stat().st_mode) == 0o444  # cached images are read-only
    assert seen[-1] == (len(DATA), len(DATA))
    assert leftovers(tmp_path) == []


def test_wrong_checksum_never_enters_the_cache(server, tmp_path):
    url = server.add("/img/disk.qcow2", DATA)
    wrong = "0" * 64
    with pytest.raises(ImageError) as info:
        fetch(entry(url, sha256=wrong), tmp_path / "disk.qcow2", policy=fast())
    message = str(info.value)
    assert f"expected sha256 {wrong}" in message and f"got {SHA256}" in message
    assert url in message and "not used" in message
    assert not (tmp_path / "disk.qcow2").exists()
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("fault", ["truncate", "reset"])
def test_interrupted_body_resumed_with_range(server, tmp_path, fault):
    url = server.add("/img/disk.qcow2", DATA, faults=[fault])
    log = []
    result = fetch(entry(url, sha512=SHA512), tmp_path / "disk.qcow2", policy=fast(), log=log.append)
    assert (tmp_path / "disk.qcow2").read_bytes() == DATA
    first, second = server.gets("/img/disk.qcow2")
    assert first is None and second == f"bytes={len(DATA) // 2}-"
    assert result.source_digest == ("sha512", SHA512)
    assert any("resuming at byte" in line for line in log)
    assert leftovers(tmp_path) == []


def test_server_ignoring_range_restarts_from_zero(server, tmp_path):
    url = server.add("/img/disk.qcow2", DATA, faults=["truncate"], ignore_range=True)
    log = []
    result = fetch(entry(url, sha256=SHA256), tmp_path / "disk.qcow2", policy=fast(), log=log.append)
    assert (tmp_path / "disk.qcow2").read_bytes() == DATA and result.sha256 == SHA256
    assert len(server.gets("/img/disk.qcow2")) == 2
    assert any("ignores Range" in line for line in log)


def test_stalled_request_times_out_and_is_retried(server, tmp_path):
    server.stall = 1.0
    url = server.add("/img/disk.qcow2", DATA, faults=["stall"])
    fetch(entry(url, sha256=SHA256), tmp_path / "disk.qcow2", policy=fast(timeout=0.2))
    assert (tmp_path / "disk.qcow2").read_bytes() == DATA
    assert len(server.gets("/img/disk.qcow2")) == 2


def test_retries_are_bounded(server, tmp_path):
    url = server.add("/img/disk.qcow2", DATA, faults=["500"] * 10)
    with pytest.raises(ImageError, match=r"3 attempts in a row.*HTTP 500"):
        fetch(entry(url, sha256=SHA256), tmp_path / "disk.qcow2", policy=fast(attempts=3))
    assert len(server.gets("/img/disk.qcow2")) == 3
    assert leftovers(tmp_path) == []


def test_xz_is_verified_compressed_then_decompressed(server, tmp_path):
    packed = lzma.compress(DATA, format=lzma.FORMAT_XZ)
    url = server.add("/img/disk.qcow2.xz", packed)
    result = fetch(entry(url, sha256=hashlib.sha256(packed).hexdigest(), compression="xz"),
                   tmp_path / "disk.qcow2", policy=fast())
    assert (tmp_path / "disk.qcow2").read_bytes() == DATA
    assert result.sha256 == SHA256
    assert result.source_digest == ("sha256", hashlib.sha256(packed).hexdigest())
    assert leftovers(tmp_path) == []


def test_corrupt_xz_with_matching_checksum_is_refused(server, tmp_path):
    junk = b"not xz at all" * 100
    url = server.add("/img/disk.qcow2.xz", junk)
    with pytest.raises(ImageError, match="not valid xz"):
        fetch(entry(url, sha256=hashlib.sha256(junk).hexdigest(), compression="xz"),
              tmp_path / "disk.qcow2", policy=fast())
    assert not (tmp_path / "disk.qcow2").exists() and leftovers(tmp_path) == []


def test_checksum_file_from_the_server(server, tmp_path):
    url = server.add("/img/disk.qcow2", DATA)
    sums = server.add("/img/SHA512SUMS", f"{'1' * 128}  other.qcow2\n{SHA512}  disk.qcow2\n".encode())
    result = fetch(entry(url, checksum_url=sums, checksum_algorithm="sha512"),
                   tmp_path / "disk.qcow2", policy=fast())
    assert result.source_digest == ("sha512", SHA512)
    assert server.gets("/img/SHA512SUMS") == [None]


@pytest.mark.parametrize("mirrored", [False, True], ids=["vendor", "mirror"])
def test_a_checksum_file_from_a_mirror_is_called_what_it_is(server, tmp_path, mirrored):
    """Through --kvm-mirror the checksum file is the mirror's copy: the plugin says so (a
    warning, the manifest's words, the mismatch message) instead of promising that it
    caught a mirror serving another file."""
    good = hashlib.sha512(DATA).hexdigest()
    served = "/mirror/vendor.invalid/img" if mirrored else "/img"  # the mirror: URL/HOST/PATH
    # through the mirror, the vendor's host is never contacted (nor resolvable: .invalid)
    vendor, prefix = (("http://vendor.invalid/img", server.url("/mirror")) if mirrored
                      else (server.url("/img"), None))
    server.add(f"{served}/disk.qcow2", DATA)
    server.add(f"{served}/SHA512SUMS", f"{good}  disk.qcow2\n".encode())
    log = []
    image = entry(f"{vendor}/disk.qcow2", checksum_url=f"{vendor}/SHA512SUMS",
                  checksum_algorithm="sha512")
    result = fetch(image, tmp_path / "disk.qcow2", mirror=prefix, policy=fast(), log=log.append)
    warned = [line for line in log if "comes from the mirror too" in line]
    assert bool(warned) == mirrored
    assert ("mirror's copy" in result.verified_by) == mirrored
    assert result.verified_by.startswith("sha512 from ")
    # the same files, one byte changed in the image: the message blames the right party
    server.add(f"{served}/disk.qcow2", DATA[:-1] + b"!")
    with pytest.raises(ImageError) as info:
        fetch(image, tmp_path / "again.qcow2", mirror=prefix, policy=fast())
    message = str(info.value)
    assert f"expected sha512 {good}" in message
    assert ("its own checksum file disagree" in message) == mirrored
    assert ("If the vendor replaced the file" in message) == (not mirrored)


def test_checksum_file_404_fails_before_the_image_is_fetched(server, tmp_path):
    url = server.add("/img/disk.qcow2", DATA)
    with pytest.raises(ImageError, match=r"/img/SHA256SUMS: HTTP 404"):
        fetch(entry(url, checksum_url=server.url("/img/SHA256SUMS"), checksum_algorithm="sha256"),
              tmp_path / "disk.qcow2", policy=fast())
    assert server.gets("/img/disk.qcow2") == []


def test_404_names_url_and_the_way_out(server, tmp_path):
    url = server.url("/img/missing.qcow2")
    with pytest.raises(ImageError) as info:
        fetch(entry(url, sha256=SHA256), tmp_path / "disk.qcow2", policy=fast())
    assert url in str(info.value) and "HTTP 404" in str(info.value)
    assert "--kvm-mirror" in str(info.value) and "--kvm-image disk=PATH" in str(info.value)
    assert len(server.gets("/img/missing.qcow2")) == 1  # a 404 is final: no retries


def test_unreachable_host(tmp_path):
    sleeps = []
    policy = RetryPolicy(attempts=3, backoff=0.01, timeout=2.0, sleep=sleeps.append)
    url = f"http://127.0.0.1:{closed_port()}/disk.qcow2"
    with pytest.raises(ImageError, match=r"cannot download .*127\.0\.0\.1.*refused.*--kvm-image"):
        fetch(entry(url, sha256=SHA256), tmp_path / "disk.qcow2", policy=policy)
    assert sleeps == [0.01, 0.02]  # three attempts, doubling backoff in between
    assert leftovers(tmp_path) == []


def test_file_url_for_air_gapped_use(tmp_path):
    src = tmp_path / "src.qcow2"
    src.write_bytes(DATA)
    (tmp_path / "cache").mkdir()
    result = fetch(entry(src.as_uri(), sha256=SHA256), tmp_path / "cache" / "disk.qcow2", policy=fast())
    assert result.sha256 == SHA256 and (tmp_path / "cache" / "disk.qcow2").read_bytes() == DATA


# -- checksum file formats ------------------------------------------------------------
H256 = "ab" * 32
H512 = "cd" * 64
FEDORA = f"""-----BEGIN PGP SIGNED MESSAGE-----
Hash: SHA256

# Fedora-Cloud-Base-Generic-44-1.7.x86_64.qcow2: 556335104 bytes
SHA256 (Fedora-Cloud-Base-Generic-44-1.7.x86_64.qcow2) = {H256}
# Fedora-Cloud-Base-AmazonEC2-44-1.7.x86_64.raw.xz: 1 bytes
SHA256 (Fedora-Cloud-Base-AmazonEC2-44-1.7.x86_64.raw.xz) = {"ef" * 32}
-----BEGIN PGP SIGNATURE-----

iQIzBAEBCAAdFiEE{"x" * 60}
-----END PGP SIGNATURE-----
"""


@pytest.mark.parametrize("text, name, algorithm, expected", [
    (f"{'00' * 32}  other.img\n{H256}  disk.img\n", "disk.img", "sha256", H256),  # sha256sum
    (f"{H256} *ubuntu-24.04-server-cloudimg-amd64.img\n", "ubuntu-24.04-server-cloudimg-amd64.img",
     "sha256", H256),  # binary-mode marker
    (f"{H256}  images/openbsd-min.qcow2\n", "openbsd-min.qcow2", "sha256", H256),  # path prefix
    (f"SHA512 (FreeBSD-14.4-RELEASE-amd64-BASIC-CLOUDINIT-ufs.qcow2.xz) = {H512}\n",
     "FreeBSD-14.4-RELEASE-amd64-BASIC-CLOUDINIT-ufs.qcow2.xz", "sha512", H512),  # BSD style
    (FEDORA, "Fedora-Cloud-Base-Generic-44-1.7.x86_64.qcow2", "sha256", H256),  # clearsigned
    (f"{H512.upper()}\n", "nocloud_alpine.qcow2", "sha512", H512),  # a lone hash
    (f"{H256}  disk.img\n{H512}  disk.img\n", "disk.img", "sha512", H512),  # length picks algorithm
])
def test_checksum_formats(text, name, algorithm, expected):
    assert parse_checksums(text, name, algorithm) == expected


def test_checksum_file_without_the_name():
    with pytest.raises(ImageError, match=r"SUMS has no sha256 checksum for disk\.img.*other\.img"):
        parse_checksums(f"{H256}  other.img\n", "disk.img", "sha256", source="SUMS")


def test_bsd_line_of_another_algorithm_is_not_used():
    with pytest.raises(ImageError, match="no sha512 checksum"):
        parse_checksums(f"SHA256 (disk.img) = {H256}\n", "disk.img", "sha512")
