"""The catalog of vendor cloud images: ``guest-images/catalog.toml`` plus the user's own files.

A catalog is data: one ``[[image]]`` table per downloadable disk (name, family,
URL, how to verify it, format, compression, firmware, minimum memory, login
user). This module reads and checks catalog files and maps URLs onto a mirror;
:mod:`pytest_kvm.images.vendor` downloads them (with :mod:`pytest_kvm.images.download`) into
the image cache, :mod:`pytest_kvm.images.cache`.
"""
from __future__ import annotations

import hashlib
import json
import re
import tomllib
import urllib.parse
from collections.abc import Iterable
from dataclasses import dataclass, fields, replace
from pathlib import Path

from ..arches import UnknownArch, arch_of, split_image_name
from ..names import NAME_PATTERN, NAME_RULE
from ..errors import ImageError
from ..families import FAMILIES
from .recipes import recipes_dir

CATALOG_FILE = "catalog.toml"

FORMATS = ("qcow2", "raw")
COMPRESSIONS = ("none", "xz")
FIRMWARES = ("bios", "uefi")
ALGORITHMS = {"sha256": 64, "sha512": 128}  # algorithm -> length of its hex digest
URL_SCHEMES = ("http", "https", "file")

_HEX = re.compile(r"[0-9a-f]+\Z")


@dataclass(frozen=True)
class CatalogEntry:
    """One downloadable base image. Exactly one way of verifying it is set:
    a pinned ``sha256``/``sha512``, a vendor ``checksum_url`` (with
    ``checksum_algorithm``), or ``trust_on_first_use``."""

    name: str
    family: str
    url: str
    format: str
    min_memory_mib: int
    login_user: str
    compression: str = "none"
    firmware: str = "bios"
    #: the CPU architecture (Debian's name); other than amd64, the name ends with it
    #: (``debian-12-genericcloud-arm64``: what ``--kvm-arch arm64`` looks up)
    arch: str = "amd64"
    description: str = ""
    sha256: str | None = None
    sha512: str | None = None
    checksum_url: str | None = None
    checksum_algorithm: str | None = None
    trust_on_first_use: bool = False
    source: Path | None = None  # the catalog file it came from

    @property
    def pinned(self) -> tuple[str, str] | None:
        """``(algorithm, hexdigest)`` when the catalog pins the digest itself."""
        if self.sha256:
            return "sha256", self.sha256
        if self.sha512:
            return "sha512", self.sha512
        return None

    @property
    def algorithm(self) -> str:
        """The digest algorithm used to verify the downloaded file."""
        pinned = self.pinned
        if pinned:
            return pinned[0]
        return self.checksum_algorithm or "sha256"

    @property
    def filename(self) -> str:
        """The last component of the URL's path: the name checksum files list."""
        return urllib.parse.unquote(urllib.parse.urlsplit(self.url).path.rsplit("/", 1)[-1])

    @property
    def digest(self) -> str:
        """Changes whenever the bytes this entry stands for may change (URL, checksum,
        format, compression); a cached copy with another digest is fetched again."""
        key = {k: getattr(self, k) for k in ("url", "sha256", "sha512", "checksum_url",
                                             "checksum_algorithm", "trust_on_first_use",
                                             "format", "compression")}
        return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()

    def with_mirror(self, mirror: str | None) -> CatalogEntry:
        """This entry with its URL and checksum URL mapped onto *mirror* (see :func:`mirror_url`)."""
        if not mirror:
            return self
        return replace(self, url=mirror_url(self.url, mirror),
                       checksum_url=mirror_url(self.checksum_url, mirror) if self.checksum_url else None)


_FIELDS = {f.name for f in fields(CatalogEntry)} - {"source"}
_REQUIRED = ("name", "family", "url", "format", "min_memory_mib", "login_user")


def mirror_url(url: str, mirror: str | None) -> str:
    """Map a vendor *url* onto a *mirror* prefix: the mirror, then the original host
    (with its port, if any), then the original path and query.

    ``https://download.freebsd.org/releases/x.qcow2.xz`` with mirror
    ``http://127.0.0.1:8000/mirror`` becomes
    ``http://127.0.0.1:8000/mirror/download.freebsd.org/releases/x.qcow2.xz``,
    so a mirror is a plain directory tree (``wget -x`` lays files out the same way).
    """
    if not mirror:
        return url
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    mapped = f"{mirror.rstrip('/')}/{host}{parts.path or '/'}"
    return f"{mapped}?{parts.query}" if parts.query else mapped


def builtin_catalog(directory: Path | None = None) -> Path:
    """The catalog shipped with pytest-kvm, next to the image recipes."""
    return (directory or recipes_dir()) / CATALOG_FILE


def load_catalog(paths: Iterable[Path]) -> dict[str, CatalogEntry]:
    """Read catalog files in order; an entry in a later file replaces the entry of
    the same name from an earlier one (whole entries are replaced, not merged)."""
    entries: dict[str, CatalogEntry] = {}
    for path in paths:
        entries.update(read_catalog(Path(path)))
    return entries


def read_catalog(path: Path) -> dict[str, CatalogEntry]:
    """Read and check one catalog file; raise :class:`ImageError` naming the file and entry."""
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError as exc:
        raise ImageError(f"image catalog {path} does not exist") from exc
    except OSError as exc:
        raise ImageError(f"cannot read image catalog {path}: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ImageError(f"image catalog {path} is not valid TOML: {exc}") from exc
    extra = sorted(set(data) - {"image"})
    if extra:
        raise ImageError(f"image catalog {path}: unknown top-level key(s) {', '.join(extra)}; "
                         "each image is an [[image]] table")
    tables = data.get("image", [])
    if not isinstance(tables, list):
        raise ImageError(f"image catalog {path}: `image` must be an array of tables ([[image]])")
    entries: dict[str, CatalogEntry] = {}
    for index, table in enumerate(tables, 1):
        entry = _entry(path, index, table)
        if entry.name in entries:
            raise ImageError(f"image catalog {path}: entry {entry.name!r} is defined twice")
        entries[entry.name] = entry
    return entries


def _arch_mismatch(arch: str, named: str) -> str:
    """Why an entry of architecture *arch*, named as *named*'s images are, is misnamed:
    ``--kvm-os OS --kvm-arch ARCH`` looks up ``OS-ARCH`` (``OS`` on amd64), so the name's
    suffix is the architecture's."""
    if named == "amd64":
        return (f"arch is {arch}, so the name must end with -{arch} "
                f"(--kvm-os <os> --kvm-arch {arch} looks up <os>-{arch})")
    return (f"the name ends with -{named}, the suffix of {named} images: say arch = \"{named}\" "
            f"(or rename it)" + ("" if arch == "amd64" else f"; {arch} images end with -{arch}"))


def _entry(path: Path, index: int, table: dict) -> CatalogEntry:
    name = table.get("name")
    where = f"image catalog {path}: entry {name!r}" if isinstance(name, str) else \
        f"image catalog {path}: image #{index}"

    def bad(message: str) -> ImageError:
        return ImageError(f"{where}: {message}")

    unknown = sorted(set(table) - _FIELDS)
    if unknown:
        raise bad(f"unknown field(s) {', '.join(map(repr, unknown))} "
                  f"(known: {', '.join(sorted(_FIELDS))})")
    missing = [key for key in _REQUIRED if key not in table]
    if missing:
        raise bad(f"missing field(s) {', '.join(missing)}")
    for key in ("name", "family", "url", "format", "login_user", "compression", "firmware",
                "arch", "description", "sha256", "sha512", "checksum_url", "checksum_algorithm"):
        if key in table and not isinstance(table[key], str):
            raise bad(f"{key} must be a string, not {type(table[key]).__name__}")
    if not NAME_PATTERN.match(table["name"]):
        raise bad(f"name must be {NAME_RULE} (it names a directory in the cache)")
    for key, allowed in (("family", FAMILIES), ("format", FORMATS),
                         ("compression", COMPRESSIONS), ("firmware", FIRMWARES)):
        if key in table and table[key] not in allowed:
            raise bad(f"{key} {table[key]!r} is not one of {', '.join(allowed)}")
    try:
        arch = arch_of(table.get("arch", "amd64"))
    except UnknownArch as exc:
        raise bad(f"arch: {exc}") from None
    named = split_image_name(table["name"])[1]
    if named != arch:
        raise bad(_arch_mismatch(arch.debian, named.debian))
    memory = table["min_memory_mib"]
    if isinstance(memory, bool) or not isinstance(memory, int) or memory <= 0:
        raise bad(f"min_memory_mib must be a positive integer (MiB), not {memory!r}")
    if not table["login_user"]:
        raise bad("login_user must not be empty")
    for key in ("url", "checksum_url"):
        if key in table:
            scheme = urllib.parse.urlsplit(table[key]).scheme
            if scheme not in URL_SCHEMES:
                raise bad(f"{key} {table[key]!r} is not an http, https or file URL")
    tofu = table.get("trust_on_first_use", False)
    if not isinstance(tofu, bool):
        raise bad("trust_on_first_use must be true or false")
    ways = [key for key in ("sha256", "sha512", "checksum_url") if key in table] + \
        (["trust_on_first_use"] if tofu else [])
    if not ways:
        raise bad("missing checksum: give sha256 = \"HEX\", sha512 = \"HEX\", or checksum_url "
                  "and checksum_algorithm (or, for a vendor that publishes none, "
                  "trust_on_first_use = true)")
    if len(ways) > 1:
        raise bad(f"give exactly one way to verify the image, not {' and '.join(ways)}")
    values = dict(table, arch=arch.debian)
    for algorithm, length in ALGORITHMS.items():
        if algorithm in values:
            digest = values[algorithm].strip().lower()
            if len(digest) != length or not _HEX.match(digest):
                raise bad(f"{algorithm} must be {length} hex digits, not {values[algorithm]!r}")
            values[algorithm] = digest
    if "checksum_url" in values:
        if "checksum_algorithm" not in values:
            raise bad(f"checksum_url needs checksum_algorithm ({' or '.join(ALGORITHMS)})")
    if "checksum_algorithm" in values:
        if values["checksum_algorithm"] not in ALGORITHMS:
            raise bad(f"checksum_algorithm {values['checksum_algorithm']!r} is not one of "
                      f"{', '.join(ALGORITHMS)}")
        if "checksum_url" not in values:
            raise bad("checksum_algorithm is set but checksum_url is not")
    return CatalogEntry(source=path, **values)
