import textwrap
from dataclasses import replace

import pytest

from pytest_kvm.images.catalog import builtin_catalog, load_catalog, mirror_url, read_catalog
from pytest_kvm.errors import ImageError
from pytest_kvm.images.store import ImageStore

ENTRY = """
[[image]]
name = "tiny"
family = "linux"
url = "https://images.example.org/tiny/disk.qcow2"
sha256 = "{sha}"
format = "qcow2"
min_memory_mib = 256
login_user = "tiny"
"""


def write(tmp_path, text, name="catalog.toml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def test_builtin_catalog_lists_the_vendor_images():
    entries = read_catalog(builtin_catalog())
    wanted = {"debian-12-genericcloud", "debian-13-genericcloud", "ubuntu-22.04", "ubuntu-24.04",
              "almalinux-9", "rocky-9", "alpine-3.20", "freebsd-14", "netbsd-10"}
    assert wanted <= set(entries)
    assert any(n.startswith("fedora-cloud-") for n in entries)
    assert any(n.startswith("openbsd-7.") for n in entries)
    assert {e.family for e in entries.values()} == {"linux", "generic", "freebsd", "openbsd", "netbsd",
                                                    "illumos"}
    assert entries["freebsd-14"].compression == "xz" and entries["freebsd-14"].url.endswith(".qcow2.xz")
    assert entries["freebsd-14"].checksum_url.endswith("/CHECKSUM.SHA512")
    # every image is verified somehow; the only one on trust is the one with no published checksum
    assert {n for n, e in entries.items() if e.trust_on_first_use} == {"netbsd-10"}
    assert all(e.pinned or e.checksum_url for n, e in entries.items() if n != "netbsd-10")
    assert all(e.url.startswith("https://") for e in entries.values())


def test_builtin_catalog_has_arm64_images_named_for_their_architecture():
    """What ``--kvm-os debian-12-genericcloud --kvm-arch arm64`` looks up, booted with
    AAVMF (UEFI): each arm64 entry is the <os>-arm64 of an amd64 entry of the same vendor."""
    entries = read_catalog(builtin_catalog())
    arm64 = {n: e for n, e in entries.items() if e.arch == "arm64"}
    assert {"debian-12-genericcloud-arm64", "debian-13-genericcloud-arm64",
            "ubuntu-24.04-arm64"} <= set(arm64)
    assert any(n.startswith("fedora-cloud-") for n in arm64)
    for name, entry in arm64.items():
        assert entry.firmware == "uefi" and entry.family == "linux"
        assert name.removesuffix("-arm64") in entries  # its amd64 sibling
        assert "arm64" in entry.url or "aarch64" in entry.url
        assert entry.checksum_url or entry.pinned
    assert {e.arch for e in entries.values()} == {"amd64", "arm64"}


@pytest.mark.parametrize("name, arch, message", [
    ("tiny-arm64", None, r"the name ends with -arm64, the suffix of arm64 images: say arch = \"arm64\""),
    ("tiny", "arm64", r"arch is arm64, so the name must end with -arm64"),
    ("tiny-riscv64", "arm64", r"ends with -riscv64.*; arm64 images end with -arm64"),
    ("tiny", "sparc", r"arch: unknown architecture 'sparc'"),
])
def test_an_entrys_architecture_agrees_with_its_name(tmp_path, name, arch, message):
    text = ENTRY.format(sha="a" * 64).replace('name = "tiny"', f'name = "{name}"')
    if arch:
        text += f'arch = "{arch}"\n'
    with pytest.raises(ImageError, match=message):
        read_catalog(write(tmp_path, text))


def test_an_entrys_architecture_takes_either_spelling(tmp_path):
    text = ENTRY.format(sha="a" * 64).replace('name = "tiny"', 'name = "tiny-arm64"')
    entry = read_catalog(write(tmp_path, text + 'arch = "aarch64"\n'))["tiny-arm64"]
    assert entry.arch == "arm64"
    assert read_catalog(write(tmp_path, ENTRY.format(sha="a" * 64)))["tiny"].arch == "amd64"


def test_user_catalog_overrides_and_adds(tmp_path):
    user = write(tmp_path, """
        [[image]]
        name = "ubuntu-24.04"
        family = "linux"
        url = "https://mirror.example.org/noble.img"
        sha256 = "%s"
        format = "qcow2"
        min_memory_mib = 2048
        login_user = "ci"

        [[image]]
        name = "windows-2022"
        family = "windows"
        url = "file:///srv/images/windows-2022.qcow2"
        sha512 = "%s"
        format = "qcow2"
        firmware = "uefi"
        min_memory_mib = 4096
        login_user = "Admin"
        """ % ("a" * 64, "B" * 128))
    entries = load_catalog([builtin_catalog(), user])
    assert entries["ubuntu-24.04"].url == "https://mirror.example.org/noble.img"
    assert entries["ubuntu-24.04"].checksum_url is None  # replaced whole, not merged
    assert entries["ubuntu-24.04"].source == user
    win = entries["windows-2022"]
    assert (win.family, win.firmware, win.pinned) == ("windows", "uefi", ("sha512", "b" * 128))
    assert "debian-13-genericcloud" in entries


@pytest.mark.parametrize("change, message", [
    ('sha265 = "x"', r"entry 'tiny': unknown field\(s\) 'sha265'"),
    ('family = "plan9"', r"entry 'tiny': family 'plan9' is not one of linux, freebsd"),
    ('format = "vmdk"', r"format 'vmdk' is not one of qcow2, raw"),
    ('compression = "zstd"', r"compression 'zstd' is not one of none, xz"),
    ('firmware = "coreboot"', r"firmware 'coreboot'"),
    ('min_memory_mib = "1G"', r"min_memory_mib must be a positive integer"),
    ('name = "Tiny Linux"', r"name must be letters"),
    ('url = "ftp://x/y"', r"url 'ftp://x/y' is not an http, https or file URL"),
    ('sha256 = "abc"', r"sha256 must be 64 hex digits"),
])
def test_bad_entries_name_file_and_entry(tmp_path, change, message):
    key = change.split(" = ")[0]
    lines = [line for line in ENTRY.format(sha="a" * 64).splitlines()
             if not line.startswith(f"{key} =")] + [change]
    path = write(tmp_path, "\n".join(lines))
    with pytest.raises(ImageError, match=message) as info:
        read_catalog(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("checksum, message", [
    ("", "missing checksum"),
    ('checksum_url = "https://x/SUMS"\nchecksum_algorithm = "md5"',
     r"checksum_algorithm 'md5' is not one of sha256, sha512"),
    ('checksum_url = "https://x/SUMS"', "checksum_url needs checksum_algorithm"),
    ('checksum_algorithm = "sha256"', r"missing checksum"),
    (f'sha256 = "{"a" * 64}"\nchecksum_url = "https://x/SUMS"\nchecksum_algorithm = "sha256"',
     "exactly one way to verify the image, not sha256 and checksum_url"),
    ("trust_on_first_use = 1", "trust_on_first_use must be true or false"),
])
def test_checksum_rules(tmp_path, checksum, message):
    text = ENTRY.replace('sha256 = "{sha}"\n', checksum + "\n")
    with pytest.raises(ImageError, match=message):
        read_catalog(write(tmp_path, text))


def test_missing_fields_and_duplicates(tmp_path):
    with pytest.raises(ImageError, match=r"image #1: missing field\(s\) name"):
        read_catalog(write(tmp_path, ENTRY.format(sha="a" * 64).replace('name = "tiny"', "")))
    with pytest.raises(ImageError, match="entry 'tiny' is defined twice"):
        read_catalog(write(tmp_path, ENTRY.format(sha="a" * 64) * 2))


def test_not_toml_or_wrong_shape(tmp_path):
    with pytest.raises(ImageError, match="is not valid TOML"):
        read_catalog(write(tmp_path, "[[image]\n"))
    with pytest.raises(ImageError, match=r"unknown top-level key\(s\) tiny.*\[\[image\]\]"):
        read_catalog(write(tmp_path, '[tiny]\nfamily = "linux"\n'))
    with pytest.raises(ImageError, match="does not exist"):
        read_catalog(tmp_path / "nope.toml")


def test_mirror_prefix_mapping():
    mirror = "http://127.0.0.1:8000/mirror"
    assert mirror_url("https://download.freebsd.org/path/x.qcow2.xz", mirror) == \
        "http://127.0.0.1:8000/mirror/download.freebsd.org/path/x.qcow2.xz"
    assert mirror_url("https://h.example:8443/a/b?x=1", mirror + "/") == \
        "http://127.0.0.1:8000/mirror/h.example:8443/a/b?x=1"
    assert mirror_url("https://h.example/a", None) == "https://h.example/a"
    assert mirror_url("https://h.example/a", "file:///srv/mirror") == "file:///srv/mirror/h.example/a"


def test_entry_with_mirror_maps_checksum_url_too():
    entry = read_catalog(builtin_catalog())["freebsd-14"]
    mapped = entry.with_mirror("http://127.0.0.1:8000/mirror")
    assert mapped.url.startswith("http://127.0.0.1:8000/mirror/download.freebsd.org/releases/")
    assert mapped.checksum_url == \
        "http://127.0.0.1:8000/mirror/download.freebsd.org/releases/VM-IMAGES/14.4-RELEASE/amd64/Latest/CHECKSUM.SHA512"
    assert mapped.filename == entry.filename == "FreeBSD-14.4-RELEASE-amd64-BASIC-CLOUDINIT-ufs.qcow2.xz"
    assert entry.with_mirror(None) is entry


def test_digest_follows_the_bytes_not_the_metadata():
    entry = read_catalog(builtin_catalog())["rocky-9"]
    assert replace(entry, login_user="someone", min_memory_mib=4096).digest == entry.digest
    assert replace(entry, url=entry.url + "?v=2").digest != entry.digest
    assert replace(entry, compression="xz").digest != entry.digest


def test_catalog_name_may_not_shadow_a_recipe(tmp_path):
    user = write(tmp_path, ENTRY.format(sha="a" * 64).replace('"tiny"', '"debian-12"', 1))
    store = ImageStore(tmp_path / "cache", catalogs=[user])
    with pytest.raises(ImageError, match="entry 'debian-12' has the name of an image recipe"):
        store.known_names()
