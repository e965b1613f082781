"""The content-addressed cache of built and downloaded base images: its layout, manifests,
digests, locks, and making, checking, pruning and removing what it holds.

Nothing in a digest directory ever changes once it is cached::

    <cache>/images/NAME.lock           exclusive while NAME is built, downloaded, pruned or removed
    <cache>/images/NAME/current.json   which digest NAME is now, and the recipe or catalog
                                       entry it was made from (replaced with os.replace)
    <cache>/images/NAME/DIGEST/        manifest.json and the image's files, all 0444
    <cache>/images/NAME/DIGEST.use     a shared flock per session (or command) using DIGEST
    <cache>/images/NAME/.stage-*/      a build or download in progress (under NAME.lock)

DIGEST is the sha256 of the manifest's file list: one line ``FILENAME SHA256`` per file
(the disk; the kernel and initrd too for a built image), sorted by file name. It is
:attr:`~pytest_kvm.images.store.BaseImage.digest`, part of every golden's and snapshot's
key. A build or download goes to a staging directory under ``NAME/`` and is renamed to
``NAME/DIGEST/`` once complete; then ``current.json`` names it. A digest directory is never
modified or replaced, so an overlay or golden whose backing file is in it keeps working;
one that is no longer current is removed once no session holds its ``.use`` lock (checked
with an exclusive non-blocking flock): after each new build or download, when a session
that used it ends, and by ``pytest-kvm image rm``. A cache in the flat layout of earlier
versions (``NAME/manifest.json``) counts as not cached: the next build or download
replaces it. Each session checks the files of the digests it uses by hash, once.

What to make and from what is the caller's (:class:`Source`); which name means which
image is :mod:`pytest_kvm.images.store`'s.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..errors import ImageError
from ..files import file_lock, hold_shared, sha256_file, try_lock, writable
from ..names import checked

MANIFEST = "manifest.json"
POINTER = "current.json"
STAGE_PREFIX = ".stage-"
_DIGEST = re.compile(r"[0-9a-f]{64}")


def utc_now() -> str:
    """The time now as the manifests and pointers write it: ``2024-05-01T12:00:00Z``."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def files_digest(manifest: dict) -> str:
    """The sha256 of a manifest's file list: ``FILENAME SHA256`` lines sorted by name. It names
    the image's cache directory and is the base image's digest."""
    listing = "".join(f"{name} {sha}\n" for name, sha in sorted(manifest["sha256"].items()))
    return hashlib.sha256(listing.encode()).hexdigest()


def read_manifest(directory: Path) -> dict | None:
    """The manifest in *directory*; None if it has none (or not one with a file list)."""
    try:
        manifest = json.loads((directory / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) and isinstance(manifest.get("sha256"), dict) else None


def check_files(name: str, dest: Path, manifest: dict, fix: str) -> None:
    """Every file the manifest lists exists and still has its recorded sha256, and the
    directory's name is the digest of that list; else an :class:`ImageError` ending in *fix*."""
    verb = "downloaded" if manifest.get("source") == "catalog" else "built"
    if _DIGEST.fullmatch(dest.name) and files_digest(manifest) != dest.name:
        raise ImageError(f"cached image {name}: {dest / MANIFEST} does not list the "
                         f"files {dest.name} was made of; {fix}")
    for filename, expected in manifest["sha256"].items():
        path = dest / filename
        if not path.is_file():
            raise ImageError(f"cached image {name}: {path} is missing; {fix}")
        if sha256_file(path) != expected:
            raise ImageError(f"cached image {name}: {path} changed since it was {verb} "
                             f"(sha256 mismatch); {fix}")


@dataclass(frozen=True)
class Source:
    """What NAME's current digest must have been made from, and how to make it again."""

    kind: str  # "recipe" (built) or "catalog" (downloaded)
    digest: str  # of the recipe or catalog entry: another one means "made again"
    verb: str  # "build" or "download", for messages
    requested: str  # why it is made, when forced
    changed: str  # why it is made, when the cached one came from another version
    fix: str  # what to do when a cached file was changed
    announce: Callable[[str], None]  # told why, before it is made
    make: Callable[[Path], dict]  # fills an empty staging directory; the manifest

    def matches(self, pointer: dict | None) -> bool:
        return (pointer is not None and pointer.get("source") == self.kind
                and pointer.get("source_digest") == self.digest)


@dataclass(frozen=True)
class Removal:
    """What :meth:`ImageCache.remove` did to one name."""

    removed: list[str]  # digests removed ("old layout": a flat copy of an earlier version)
    left: list[str]  # digests left because a running session uses them
    current: str | None  # the digest that was current


class ImageCache:
    """The ``images/`` directory of one cache, and the use locks this process holds in it."""

    def __init__(self, directory: Path, progress: Callable[[str], None] = lambda msg: None) -> None:
        self.directory = Path(directory)
        self.progress = progress
        self._held: dict[tuple[str, str], int] = {}  # (name, digest) -> fd of our use lock

    # -- the layout ----------------------------------------------------------------------
    def name_dir(self, name: str) -> Path:
        return self.directory / checked("image", name)

    def _lock_file(self, name: str) -> Path:
        return self.directory / f"{checked('image', name)}.lock"

    def _use_file(self, name: str, digest: str) -> Path:
        return self.name_dir(name) / f"{digest}.use"

    def names(self) -> list[str]:
        """The names that have a directory here (cached, or in the old layout)."""
        if not self.directory.is_dir():
            return []
        return sorted(p.name for p in self.directory.iterdir() if p.is_dir() and not p.name.startswith("."))

    def pointer(self, name: str) -> dict | None:
        try:
            pointer = json.loads((self.name_dir(name) / POINTER).read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(pointer, dict) or not _DIGEST.fullmatch(str(pointer.get("digest", ""))):
            return None
        return pointer

    def located(self, name: str) -> tuple[dict, dict] | None:
        """(pointer, manifest) of NAME's current digest; None: not cached (no pointer, or
        its directory is gone or has no manifest)."""
        pointer = self.pointer(name)
        if pointer is None:
            return None
        manifest = read_manifest(self.name_dir(name) / pointer["digest"])
        return None if manifest is None else (pointer, manifest)

    def digests(self, name: str) -> list[str]:
        """The digest directories of NAME, current or not."""
        directory = self.name_dir(name)
        if not directory.is_dir():
            return []
        return sorted(p.name for p in directory.iterdir() if p.is_dir() and _DIGEST.fullmatch(p.name))

    # -- use locks ------------------------------------------------------------------------
    def hold(self, name: str, digest: str) -> bool:
        """Hold a shared use lock on NAME's *digest* until :meth:`close`; False if that
        digest is gone (removed between reading the pointer and locking it)."""
        if (name, digest) in self._held:
            return True
        use = self._use_file(name, digest)
        try:
            with writable(self.directory, f"locking image {name} for this session"):
                fd = hold_shared(use)
        except FileNotFoundError:  # NAME's directory was removed meanwhile
            return False
        try:
            now = os.stat(use)
            same = (now.st_dev, now.st_ino) == (os.fstat(fd).st_dev, os.fstat(fd).st_ino)
        except FileNotFoundError:
            same = False
        # a remover unlinks a use file only after removing its directory, holding it
        # exclusively: our lock counts only if it is on the file there now, and the
        # directory is still there
        if not same or read_manifest(self.name_dir(name) / digest) is None:
            os.close(fd)
            return False
        self._held[(name, digest)] = fd
        return True

    def close(self) -> None:
        """Release our use locks (at the session's end), then remove the old digests nobody
        uses any more of the names we used, unless a build holds their lock."""
        names = sorted({name for name, _ in self._held})
        for fd in self._held.values():
            with contextlib.suppress(OSError):
                os.close(fd)
        self._held.clear()
        for name in names:
            with contextlib.suppress(OSError):
                fd = try_lock(self._lock_file(name))
                if fd is None:  # being built or downloaded: that prunes it
                    continue
                try:
                    removed, _ = self._prune(name)
                finally:
                    os.close(fd)
                for digest in removed:
                    self.progress(f"{name}: old image {digest[:12]} removed (no session uses it now)")

    # -- removing -------------------------------------------------------------------------
    def _remove_digest(self, name: str, digest: str) -> bool:
        """Remove one digest directory and its use file if nobody uses it (we hold NAME's lock)."""
        use = self._use_file(name, digest)
        fd = try_lock(use)
        if fd is None:
            return False
        try:
            target = self.name_dir(name) / digest
            if target.exists():
                shutil.rmtree(target)
            use.unlink(missing_ok=True)  # after the directory: see hold
        finally:
            os.close(fd)
        return True

    def _prune(self, name: str) -> tuple[list[str], list[str]]:
        """Remove NAME's digests that are not current and that no session uses (we hold
        NAME's lock); (removed, left in use)."""
        pointer = self.pointer(name)
        current = pointer["digest"] if pointer else None
        removed, left = [], []
        for digest in self.digests(name):
            if digest != current:
                (removed if self._remove_digest(name, digest) else left).append(digest)
        for use in self.name_dir(name).glob("*.use"):  # use files whose directory is gone
            digest = use.name.removesuffix(".use")
            if digest != current and digest not in left and not (use.parent / digest).exists():
                self._remove_digest(name, digest)
        return removed, left

    def _sweep(self, name: str) -> bool:
        """Remove what killed runs left under NAME (staging and build directories, pointer
        drafts) and a copy in the flat layout of earlier versions (we hold NAME's lock).
        True if there was such a copy."""
        directory = self.name_dir(name)
        old = (directory / MANIFEST).exists()
        if old:  # the manifest first: a crash below leaves "not cached" either way
            (directory / MANIFEST).unlink()
        for path in (directory.iterdir() if directory.is_dir() else ()):
            if path.name.startswith("."):
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    path.unlink(missing_ok=True)
            elif not path.is_dir() and path.name != POINTER and not path.name.endswith(".use"):
                old = True
                path.unlink(missing_ok=True)  # a flat copy's disk, kernel, initrd, lock
        return old

    def remove(self, name: str) -> Removal:
        """Remove every digest of NAME that no running session uses (and a copy in the old
        layout); the current one too, then NAME is not cached any more."""
        directory = self.name_dir(name)
        if not directory.is_dir():
            return Removal([], [], None)
        with file_lock(self._lock_file(name),
                       on_wait=lambda: self.progress(f"waiting for another process building or "
                                                     f"downloading {name}")):
            pointer = self.pointer(name)
            current = pointer["digest"] if pointer else None
            removed = ["old layout"] if self._sweep(name) else []
            left = []
            for digest in self.digests(name):
                (removed if self._remove_digest(name, digest) else left).append(digest)
            if current not in left:
                (directory / POINTER).unlink(missing_ok=True)
            self._prune(name)  # use files left without their directory
            with contextlib.suppress(OSError):
                directory.rmdir()  # only if nothing is left in it
        return Removal(removed, left, current)

    # -- making a digest -------------------------------------------------------------------
    def ensure(self, name: str, source: Source, *, force: bool = False) -> tuple[Path, dict]:
        """NAME's current digest directory and its manifest, made with ``source.make`` if
        it is missing, made from another version of its source, or *force*; held by a use
        lock until :meth:`close`. A digest made earlier has its files checked by hash."""
        if not force:
            for _ in range(3):  # the pointer moves only under NAME's lock, which we do not hold
                found = self.located(name)
                if found is None or not source.matches(found[0]):
                    break
                if self.hold(name, found[0]["digest"]):
                    dest = self.name_dir(name) / found[0]["digest"]
                    check_files(name, dest, found[1], source.fix)
                    return dest, found[1]
        with writable(self.directory, f"locking the cache to {source.verb} {name}"):
            self.directory.mkdir(parents=True, exist_ok=True)
        with file_lock(self._lock_file(name),
                       on_wait=lambda: self.progress(f"waiting for another process to {source.verb} {name}")):
            found = self.located(name)  # another worker may have made it meanwhile
            fresh = force or found is None or not source.matches(found[0])
            with writable(self.directory, f"{source.verb} image {name}"):
                if fresh:
                    old = (self.name_dir(name) / MANIFEST).exists()
                    why = (source.requested if force else source.changed if found is not None
                           else "not cached; the copy an earlier pytest-kvm version left in the old "
                                "layout is replaced" if old else "not cached")
                    source.announce(why)
                    digest = self._make(name, source)
                else:
                    digest = found[0]["digest"]
                if not self.hold(name, digest):  # cannot happen: only we may remove it now
                    raise ImageError(f"cached image {name}: {self.name_dir(name) / digest} vanished")
                removed, left = self._prune(name)
            for old_digest in removed:
                self.progress(f"{name}: old image {old_digest[:12]} removed")
            for old_digest in left:
                self.progress(f"{name}: old image {old_digest[:12]} kept: a running session uses it "
                              "(removed once none does)")
        dest = self.name_dir(name) / digest
        manifest = read_manifest(dest)
        assert manifest is not None  # held, complete
        if not fresh:  # made by another process: checked once per session, like any other
            check_files(name, dest, manifest, source.fix)
        return dest, manifest

    def _make(self, name: str, source: Source) -> str:
        """Make NAME in a staging directory, write its manifest there, rename it to its
        digest, point ``current.json`` at it (we hold NAME's lock); its digest."""
        directory = self.name_dir(name)
        directory.mkdir(parents=True, exist_ok=True)
        if self._sweep(name):
            self.progress(f"{name}: removed the copy an earlier pytest-kvm version left in {directory}")
        staging = Path(tempfile.mkdtemp(prefix=STAGE_PREFIX, dir=directory))
        try:
            manifest = source.make(staging)
            (staging / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
            digest = self._install(name, staging, manifest)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        pointer = {"digest": digest, "source": source.kind, "source_digest": source.digest,
                   "since": utc_now()}
        draft = directory / f".{POINTER}.{os.getpid()}.tmp"
        draft.write_text(json.dumps(pointer, indent=2) + "\n")
        os.replace(draft, directory / POINTER)
        self.progress(f"{name}: image {digest[:12]} in {directory / digest}")
        return digest

    def _install(self, name: str, staging: Path, manifest: dict) -> str:
        """Rename the complete *staging* directory to NAME's digest directory, read-only;
        if that digest is cached already (the same files again), the cached copy stays."""
        digest = files_digest(manifest)
        for path in staging.iterdir():
            if path.name not in manifest["sha256"] and path.name != MANIFEST:
                path.unlink()  # not part of the image: the digest names only the listed files
            else:
                path.chmod(0o444)
        staging.chmod(0o755)
        target = self.name_dir(name) / digest
        if target.exists():
            try:
                cached = read_manifest(target)
                if cached is None:
                    raise ImageError(f"{target / MANIFEST} is missing")
                check_files(name, target, cached, "")
                self.progress(f"{name}: the same files are cached already as {digest[:12]}; that copy stays")
                shutil.rmtree(staging)
                return digest
            except ImageError:  # damaged: replaced unless someone uses it (then fail)
                if not self._remove_digest(name, digest):
                    raise ImageError(f"cached image {name}: {target} is damaged and a running "
                                     "session uses it; try again once it ends") from None
        os.rename(staging, target)
        return digest
