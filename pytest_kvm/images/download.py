"""Verified downloads of base images into the cache (stdlib only: urllib, hashlib, lzma).

:func:`fetch` streams a file to a temporary name beside its destination,
resumes a dropped or truncated transfer with an HTTP ``Range`` request (and
starts over when the server ignores ``Range``), checks the sha256/sha512 of
what arrived against a pinned digest or the vendor's checksum file *before*
the file enters the cache, decompresses ``xz``, and moves the result in with
``os.replace``. Whatever fails, no temporary file is left behind. Parallel workers
(pytest-xdist) download once because :mod:`pytest_kvm.images.cache` holds the image's
lock around it.
"""
from __future__ import annotations

import contextlib
import hashlib
import lzma
import os
import re
import socket
import tempfile
import time
import urllib.error
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .catalog import ALGORITHMS, CatalogEntry
from ..errors import ImageError

Progress = Callable[[int, "int | None"], None]
Log = Callable[[str], None]

USER_AGENT = "pytest-kvm (urllib)"
CHUNK = 1024 * 1024
MAX_CHECKSUM_FILE = 4 * 1024 * 1024
# Statuses worth asking again for; any other HTTP error is final (404, 403, 410, ...).
RETRY_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})

DEFAULT_HINT = ("If this machine cannot reach the vendor, serve the file from a mirror "
                "(--kvm-mirror URL, ini kvm_mirror: the file is expected at URL/HOST/PATH of "
                "the original address) or boot a disk you have with --kvm-image NAME=PATH.")


@dataclass(frozen=True)
class RetryPolicy:
    """How hard to try. *attempts* bounds consecutive failed requests that brought no
    new bytes (a request that made progress resets the count); the wait between tries
    starts at *backoff* seconds and doubles up to *max_backoff*; *timeout* is the
    socket timeout, in seconds, of every connect and read."""

    attempts: int = 5
    backoff: float = 1.0
    max_backoff: float = 30.0
    timeout: float = 30.0
    sleep: Callable[[float], None] = field(default=time.sleep, compare=False, repr=False)

    def delay(self, failures: int) -> float:
        return min(self.max_backoff, self.backoff * 2 ** max(0, failures - 1))


@dataclass(frozen=True)
class FetchResult:
    url: str  # where it was downloaded from (the mirror's address, through a mirror)
    sha256: str  # of the final (decompressed) file
    source_digest: tuple[str, str]  # (algorithm, hex) of the file as downloaded
    verified_by: str  # where the expected digest came from (see _Source.verified_by)


class _Retry(Exception):
    """A transfer failed in a way that asking again may fix."""


# -- checksum files -------------------------------------------------------------
_BSD_LINE = re.compile(r"(?P<alg>[A-Za-z0-9-]+)\s*\((?P<name>.+)\)\s*=\s*(?P<hash>[0-9a-fA-F]+)\Z")
_GNU_LINE = re.compile(r"(?P<hash>[0-9a-fA-F]+)\s+\*?(?P<name>.+)\Z")


def _basename(name: str) -> str:
    return name.strip().lstrip("*").rsplit("/", 1)[-1]


def _checksum_lines(text: str) -> list[str]:
    """The lines of a checksum file that can hold a checksum: no comments, no PGP armour."""
    lines, in_signature = [], False
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("-----BEGIN PGP SIGNATURE"):
            in_signature = True
        elif line.startswith("-----END PGP SIGNATURE"):
            in_signature = False
        elif not (in_signature or not line or line.startswith("#") or line.startswith("-----")
                  or line.startswith("Hash:")):
            lines.append(line.removeprefix("- "))  # clearsigned dash-escaping
    return lines


def parse_checksums(text: str, filename: str, algorithm: str, *, source: str = "checksum file") -> str:
    """The *algorithm* digest of *filename* in a checksum file, in any common format:

    - ``HASH  filename`` or ``HASH *filename`` (``sha256sum``; Debian, Ubuntu, AlmaLinux),
    - ``SHA256 (filename) = HASH`` (BSD ``sha256 -r`` style; FreeBSD, Fedora, Rocky),
      optionally PGP-clearsigned with ``#`` comments (Fedora's ``CHECKSUM``),
    - a file holding nothing but the hash (a per-file ``.sha512``).

    Names match on their last path component (``images/x.qcow2`` lists ``x.qcow2``).
    """
    length = ALGORITHMS[algorithm]
    want = _basename(filename)
    lines = _checksum_lines(text)
    seen = []
    for line in lines:
        bsd = _BSD_LINE.match(line)
        if bsd:
            name = _basename(bsd["name"])
            seen.append(name)
            if bsd["alg"].lower().replace("-", "") == algorithm and name == want \
                    and len(bsd["hash"]) == length:
                return bsd["hash"].lower()
            continue
        gnu = _GNU_LINE.match(line)
        if gnu and len(gnu["hash"]) == length:
            name = _basename(gnu["name"])
            seen.append(name)
            if name == want:
                return gnu["hash"].lower()
    if len(lines) == 1 and len(lines[0]) == length and re.fullmatch(r"[0-9a-fA-F]+", lines[0]):
        return lines[0].lower()
    listed = ", ".join(seen[:8]) + (", ..." if len(seen) > 8 else "") if seen else "no usable lines"
    raise ImageError(f"{source} has no {algorithm} checksum for {want} (it lists: {listed})")


# -- HTTP -------------------------------------------------------------------------
def _host(url: str) -> str:
    return urllib.parse.urlsplit(url).netloc or url


def _open(url: str, policy: RetryPolicy, offset: int = 0):
    import urllib.request  # noqa: PLC0415 - http.client, ssl: only when downloading
    headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=policy.timeout)


def _content_range(resp) -> tuple[int | None, int | None]:
    """(first byte, total size) from ``Content-Range: bytes FIRST-LAST/TOTAL``."""
    match = re.match(r"bytes\s+(\d+)-\d+/(\d+|\*)", resp.headers.get("Content-Range", ""))
    if not match:
        return None, None
    return int(match[1]), (int(match[2]) if match[2] != "*" else None)


def _final_error(url: str, exc: BaseException, hint: str) -> ImageError | None:
    """The error to raise at once for failures that asking again cannot fix, else None."""
    if isinstance(exc, urllib.error.HTTPError):
        if exc.code in RETRY_STATUSES:
            return None
        return ImageError(f"cannot download {url}: HTTP {exc.code} {exc.reason}. {hint}")
    if isinstance(exc, urllib.error.URLError) and isinstance(exc.reason, socket.gaierror):
        return ImageError(f"cannot download {url}: host {_host(url)} not found "
                          f"({exc.reason.strerror or exc.reason}). {hint}")
    if isinstance(exc, urllib.error.URLError) and isinstance(exc.reason, (str, FileNotFoundError)):
        return ImageError(f"cannot download {url}: {exc.reason}. {hint}")  # unknown scheme, no file
    return None


def _describe(exc: BaseException) -> str:
    import http.client  # noqa: PLC0415 - only when downloading
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code} {exc.reason}"
    if isinstance(exc, urllib.error.URLError):
        return f"cannot connect: {exc.reason}"
    if isinstance(exc, (TimeoutError, socket.timeout)):
        return "timed out"
    if isinstance(exc, http.client.IncompleteRead):
        return "connection closed before the end of the body"
    return str(exc) or type(exc).__name__


def _stream(url: str, fh, algorithms: set[str], *, progress: Progress | None, policy: RetryPolicy,
            log: Log, hint: str) -> tuple[dict[str, "hashlib._Hash"], int]:
    """Write the body at *url* into *fh*, resuming after failures; return the hashes of
    what was written and its size."""
    import http.client  # noqa: PLC0415 - only when downloading
    hashers = {alg: hashlib.new(alg) for alg in algorithms}
    done, total, failures = 0, None, 0

    def restart() -> None:
        nonlocal hashers, done
        fh.seek(0)
        fh.truncate()
        hashers = {alg: hashlib.new(alg) for alg in algorithms}
        done = 0

    while True:
        before = done
        try:
            with _open(url, policy, done) as resp:
                status = getattr(resp, "status", None) or 200  # file: URLs have no status
                first, range_total = _content_range(resp) if status == 206 else (None, None)
                if done and status == 206 and first != done:
                    restart()
                    raise _Retry(f"server answered another range ({resp.headers.get('Content-Range')})")
                if done and status != 206:
                    log(f"{url}: the server ignores Range requests; starting over")
                    restart()
                length = resp.headers.get("Content-Length")
                if status == 206:
                    total = range_total if range_total is not None else \
                        (done + int(length) if length and length.isdigit() else None)
                else:
                    total = int(length) if length and length.isdigit() else None
                read = getattr(resp, "read1", resp.read)  # what has arrived: keep it if a reset follows
                while chunk := read(CHUNK):
                    fh.write(chunk)
                    for hasher in hashers.values():
                        hasher.update(chunk)
                    done += len(chunk)
                    if progress is not None:
                        progress(done, total)
                if total is not None and done < total:
                    raise _Retry(f"connection closed after {done} of {total} bytes")
                if total is not None and done > total:
                    restart()
                    raise _Retry(f"received more bytes than announced ({total})")
                return hashers, done
        except urllib.error.HTTPError as exc:
            exc.close()
            if exc.code == 416 and done and total == done:  # asked to resume a complete file
                return hashers, done
            error = _final_error(url, exc, hint)
            if error:
                raise error from exc
            reason = _describe(exc)
        except (_Retry, OSError, http.client.HTTPException) as exc:
            error = _final_error(url, exc, hint)
            if error:
                raise error from exc
            reason = _describe(exc)
        failures = 0 if done > before else failures + 1
        if failures >= policy.attempts:
            raise ImageError(f"cannot download {url}: {failures} attempts in a row failed "
                             f"without progress; last error: {reason}. {hint}")
        delay = policy.delay(failures)
        where = f"resuming at byte {done}" if done else "retrying"
        log(f"{url}: {reason}; {where} in {delay:g} s")
        policy.sleep(delay)


def fetch_text(url: str, *, policy: RetryPolicy, log: Log, hint: str) -> str:
    """A small text file (a checksum list), with the same retries as an image."""
    with tempfile.TemporaryFile() as fh:
        _, size = _stream(url, fh, set(), progress=None, policy=policy, log=log, hint=hint)
        if size > MAX_CHECKSUM_FILE:
            raise ImageError(f"{url} is {size} bytes; a checksum file should be small")
        fh.seek(0)
        return fh.read().decode("utf-8", errors="replace")


# -- fetch ------------------------------------------------------------------------
@dataclass(frozen=True)
class _Source:
    """Where a catalog entry is fetched from and how it is verified."""

    url: str
    filename: str
    algorithm: str
    pinned: str | None
    checksum_url: str | None
    compression: str
    #: the checksum file is the mirror's copy: it proves the transfer, not the mirror
    checksum_from_mirror: bool = False

    @classmethod
    def of(cls, entry: CatalogEntry, mirror: str | None) -> _Source:
        mirrored = entry.with_mirror(mirror)
        return cls(url=mirrored.url, filename=entry.filename, algorithm=entry.algorithm,
                   pinned=entry.pinned[1] if entry.pinned else None,
                   checksum_url=mirrored.checksum_url, compression=entry.compression,
                   checksum_from_mirror=bool(mirror and entry.checksum_url and not entry.pinned))

    def verified_by(self) -> str:
        """The algorithm and where the expected digest came from, in words (messages and
        the manifest)."""
        if self.pinned:
            return f"{self.algorithm} pinned in the catalog"
        if self.checksum_url:
            whose = "the mirror's copy of the checksum file" if self.checksum_from_mirror \
                else "the checksum file"
            return f"{self.algorithm} from {whose} {self.checksum_url}"
        return "nothing: trusted on first use"


def _temp(dest: Path, tag: str) -> Path:
    fd, name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.{tag}.", suffix=".part")
    os.close(fd)
    return Path(name)


def _decompress_xz(src: Path, out: Path, url: str) -> str:
    """Decompress *src* into *out*; the sha256 of what was written."""
    digest = hashlib.sha256()
    try:
        with lzma.open(src) as zin, out.open("wb") as zout:
            while block := zin.read(CHUNK):
                zout.write(block)
                digest.update(block)
            zout.flush()
            os.fsync(zout.fileno())
    except (lzma.LZMAError, EOFError) as exc:
        raise ImageError(f"{url} matched its checksum but is not valid xz data ({exc}); "
                         "the image was not used") from exc
    return digest.hexdigest()


def fetch(entry: CatalogEntry, dest: Path, *, mirror: str | None = None,
          progress: Progress | None = None, policy: RetryPolicy = RetryPolicy(),
          log: Log = lambda msg: None) -> FetchResult:
    """Download catalog *entry* to *dest* (in a directory only the caller writes to: the
    image cache's staging directory), verified, decompressed, read-only.

    *mirror* maps the URL and checksum URL with :func:`~pytest_kvm.images.catalog.mirror_url`.
    *progress* is called with (bytes done, total or None) as data arrives; *log* gets
    one line per retry.
    """
    src = _Source.of(entry, mirror)
    hint = DEFAULT_HINT.replace("NAME=PATH", f"{entry.name}=PATH")
    expected = src.pinned
    if expected is None and src.checksum_url:
        if src.checksum_from_mirror:
            log(f"warning: {src.filename}: the checksum file comes from the mirror too "
                f"({src.checksum_url}): this catches a damaged or partial copy, not a mirror "
                f"that serves another image; to verify the vendor's own digest, pin "
                f"{src.algorithm} in a catalog file of yours (kvm_catalog)")
        text = fetch_text(src.checksum_url, policy=policy, log=log, hint=hint)
        expected = parse_checksums(text, src.filename, src.algorithm, source=src.checksum_url)
    temps: list[Path] = []
    try:
        download = _temp(dest, "download")
        temps.append(download)
        algorithms = {src.algorithm} | ({"sha256"} if src.compression == "none" else set())
        with download.open("r+b") as fh:
            hashers, _ = _stream(src.url, fh, algorithms, progress=progress, policy=policy,
                                 log=log, hint=hint)
            fh.flush()
            os.fsync(fh.fileno())
        got = hashers[src.algorithm].hexdigest()
        if expected is not None and got != expected:
            cause = ("The mirror's image and its own checksum file disagree: its copy is "
                     "damaged or incomplete (sync it again), or a proxy altered the download."
                     if src.checksum_from_mirror else
                     "If the vendor replaced the file, update the catalog entry; otherwise "
                     "a proxy or the mirror altered it.")
            raise ImageError(
                f"checksum mismatch for {src.url}: expected {src.algorithm} {expected} "
                f"({src.verified_by()}), "
                f"got {got}. The download was deleted and the image was not used. {cause}")
        if src.compression == "xz":
            final = _temp(dest, "unxz")
            temps.append(final)
            final_sha256 = _decompress_xz(download, final, src.url)
        else:
            final, final_sha256 = download, hashers["sha256"].hexdigest()
        os.chmod(final, 0o444)  # cached images are read-only, like built ones
        os.replace(final, dest)
    finally:
        for temp in temps:
            with contextlib.suppress(OSError):
                temp.unlink(missing_ok=True)
    return FetchResult(url=src.url, sha256=final_sha256, source_digest=(src.algorithm, got),
                       verified_by=src.verified_by())
