"""The snapshot cache: goldens kept across runs in ``CACHE/snapshots/KEY/`` (0700).

KEY hashes everything that can make a saved state wrong (see ``KvmSession``): the
base image's sha256, the domain definition, the seed and its user data, the QEMU
and libvirt versions and the firmware files QEMU loads. A later session (or a CI
job that restored the cache directory) clones from a snapshot without booting.

Locks, beside each snapshot: ``KEY.lock`` (exclusive) while a session makes or
removes one, so concurrent sessions and xdist workers boot it once (a remover may unlink
it: :func:`~pytest_kvm.files.file_lock` re-checks the file after locking); ``NAME.use``
(shared) held by every session that clones from snapshot NAME, so ``rm``, ``prune`` and a
session whose first clone failed leave a snapshot in use alone. The modification time of
``NAME.use`` is its last use.

Generations: NAME is KEY, or ``KEY-gN`` when a session's first clone of KEY failed while
other sessions used it: the session boots a new generation beside theirs instead of
removing it (on a remote host its volumes get the new name too). Sessions take the newest
complete generation; older ones go once nobody uses them.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from ..files import file_lock, hold_shared, refuse_untrusted, try_lock, writable
from ..names import checked
from ..guest.golden import Golden
from ..workdir import META_FILE

SNAPSHOTS_DIR = "snapshots"
SUMMARY_FIELDS = ("os", "arch", "family", "memory_mib", "cpus", "accel", "machine", "qemu", "libvirt", "base",
                  "user_data", "host")  # the key fields `pytest-kvm snapshot list` shows


@dataclass(frozen=True)
class SnapshotInfo:
    name: str
    path: Path
    size: int  # bytes, every file
    created: float
    last_used: float
    fields: dict
    in_use: bool
    complete: bool


GENERATION = "-g"  # KEY-gN: the Nth generation of snapshot KEY


def split_name(name: str) -> tuple[str, int]:
    """(KEY, generation) of a snapshot directory's name."""
    key, sep, number = name.rpartition(GENERATION)
    if sep and key and number.isdigit():
        return key, int(number)
    return name, 0


def generation_name(key: str, generation: int) -> str:
    return key if generation == 0 else f"{key}{GENERATION}{generation}"


class SnapshotStore:
    """The snapshot directory of one cache, and the use locks this process holds."""

    def __init__(self, cache_dir: Path, progress: Callable[[str], None] = lambda msg: None) -> None:
        self.root = cache_dir / SNAPSHOTS_DIR
        self.progress = progress
        self._held: dict[str, int] = {}  # snapshot name -> fd with our shared use lock
        self.reused = 0
        self.created = 0

    def path(self, name: str) -> Path:
        return self.root / checked("snapshot", name)

    def _lock_file(self, name: str) -> Path:
        return self.root / f"{checked('snapshot', split_name(name)[0])}.lock"

    def _use_file(self, name: str) -> Path:
        return self.root / f"{checked('snapshot', name)}.use"

    def _mkroot(self) -> None:
        with writable(self.root.parent, "creating the snapshot cache"):
            self.root.mkdir(mode=0o700, parents=True, exist_ok=True)

    def _trusted_root(self) -> None:
        """Refuse a cache directory or ``snapshots/`` that anyone else could write."""
        self._mkroot()
        refuse_untrusted(self.root.parent, "the cache directory")
        refuse_untrusted(self.root, "the snapshot cache", follow=False)

    def generations(self, key: str) -> list[str]:
        """The names of KEY's snapshot directories, oldest generation first."""
        if not self.root.is_dir():
            return []
        found = []
        for directory in self.root.iterdir():
            name_key, number = split_name(directory.name)
            if name_key == key and directory.is_dir():
                found.append((number, directory.name))
        return [name for _, name in sorted(found)]

    # -- a session's use ---------------------------------------------------------------
    def get_or_create(self, key: str, create: Callable[[Path], Golden], *, what: str) -> Golden:
        """The newest generation of snapshot *key*: loaded when complete, else made by
        ``create(directory)`` (which boots and saves a golden there) under the snapshot's
        lock. Either way this process holds a shared use lock on it until :meth:`release`."""
        self._trusted_root()
        with self._locked(key, what):
            golden = self._newest(key)
            if golden is None:
                golden = self._make(key, create)
            else:
                self.reused += 1
            self._hold(golden.directory.name)
        return golden

    def replace(self, key: str, failed: Path, create: Callable[[Path], Golden], *, why: str,
                what: str) -> Golden:
        """The first clone of snapshot directory *failed* failed this session (a stale cache
        never fails a test): remove it if no other session uses it, else leave it to them,
        and make a new generation (or take one another session made meanwhile)."""
        self._trusted_root()
        with self._locked(key, what):
            names = self.generations(key)
            if names and names[-1] != failed.name:  # made anew by another session meanwhile
                golden = self._load(names[-1])
                if golden is not None:
                    self.reused += 1
                    self._hold(golden.directory.name)
                    return golden
            self._release(failed.name)
            if self._remove_unused(failed.name):
                self.progress(f"snapshot {failed.name} removed: {why}")
            else:
                self.progress(f"snapshot {failed.name} failed this session ({why}); other "
                              "sessions use it: left to them, making a new generation")
            golden = self._make(key, create)
            self._hold(golden.directory.name)
        return golden

    def _locked(self, key: str, what: str):
        return file_lock(self._lock_file(key),
                         on_wait=lambda: self.progress(f"waiting for another session making "
                                                       f"snapshot {key} ({what})"))

    def _newest(self, key: str) -> Golden | None:
        """The newest generation of *key* if it loads; older generations nobody uses, and a
        damaged or incomplete newest one nobody uses, are removed (we hold KEY's lock)."""
        names = self.generations(key)
        for name in names[:-1]:
            self._remove_unused(name)
        if not names:
            return None
        golden = self._load(names[-1])
        if golden is None:
            self._remove_unused(names[-1])
        return golden

    def _make(self, key: str, create: Callable[[Path], Golden]) -> Golden:
        """Make the next generation of *key* (we hold KEY's lock)."""
        names = self.generations(key)
        number = split_name(names[-1])[1] + 1 if names else 0
        directory = self.path(generation_name(key, number))
        with writable(self.root, f"making snapshot {directory.name}"):
            directory.mkdir(mode=0o700)
        try:
            golden = create(directory)
        except BaseException:
            shutil.rmtree(directory, ignore_errors=True)
            raise
        self.created += 1
        return golden

    def _remove_unused(self, name: str) -> bool:
        """Remove snapshot directory *name* unless a session (this one too) uses it (we
        hold its KEY's lock)."""
        if name in self._held:
            return False
        use = self._use_file(name)
        fd = try_lock(use)
        if fd is None:
            return False
        try:
            shutil.rmtree(self.path(name), ignore_errors=True)
            use.unlink(missing_ok=True)  # nobody waits on it: use locks are taken under KEY.lock
        finally:
            os.close(fd)
        return True

    def _load(self, name: str) -> Golden | None:
        directory = self.path(name)
        if not directory.exists():
            return None
        refuse_untrusted(directory, f"snapshot {name}", follow=False)
        if not (directory / META_FILE).is_file():
            self.progress(f"snapshot {name} is incomplete (made by a run that did not finish); "
                          "booting the guest cold")
            return None
        try:
            return Golden.load(directory)
        except (OSError, ValueError, KeyError) as exc:
            self.progress(f"snapshot {name} is damaged ({exc}); booting the guest cold")
            return None

    def _hold(self, name: str) -> None:
        if name in self._held:
            return
        self._held[name] = hold_shared(self._use_file(name))

    def _release(self, name: str) -> None:
        fd = self._held.pop(name, None)
        if fd is not None:
            os.close(fd)

    def release(self) -> None:
        """Drop this process's use locks (at the session end)."""
        for fd in self._held.values():
            with contextlib.suppress(OSError):
                os.close(fd)
        self._held.clear()

    # -- the `pytest-kvm snapshot` command ----------------------------------------------
    def list(self) -> list[SnapshotInfo]:
        found = []
        if not self.root.is_dir():
            return found
        for directory in sorted(p for p in self.root.iterdir() if p.is_dir()):
            try:
                found.append(self._info(directory))
            except FileNotFoundError:  # removed meanwhile (another session's rm or prune)
                continue
        return found

    def _info(self, directory: Path) -> SnapshotInfo:
        name = directory.name
        complete = (directory / META_FILE).is_file()
        meta: dict = {}
        if complete:
            with contextlib.suppress(OSError, ValueError):
                meta = json.loads((directory / META_FILE).read_text())
        size = sum(p.stat().st_size for p in directory.iterdir() if p.is_file())
        use = self._use_file(name)
        created = meta.get("created") or directory.stat().st_mtime
        last_used = use.stat().st_mtime if use.exists() else created
        return SnapshotInfo(name=name, path=directory, size=size, created=created,
                            last_used=last_used, fields=meta.get("fields", {}),
                            in_use=self._in_use(name), complete=complete)

    def _in_use(self, name: str) -> bool:
        if name in self._held:
            return True
        with self._try_exclusive(name) as free:
            return not free

    @contextlib.contextmanager
    def _try_exclusive(self, name: str) -> Iterator[bool]:
        """Hold snapshot *name* exclusively (no session using it, none making or removing
        a generation of its KEY) if possible."""
        self._mkroot()
        fds = []
        try:
            for path in (self._lock_file(name), self._use_file(name)):
                fd = try_lock(path)
                if fd is None:
                    yield False
                    return
                fds.append(fd)
            yield True
        finally:
            for fd in fds:
                os.close(fd)

    def remove(self, name: str) -> str:
        """Remove snapshot *name* unless a session uses it; says what happened."""
        if not self.path(name).exists():
            return "no such snapshot"
        with self._try_exclusive(name) as free:
            if not free:
                return "in use by a running session; left alone"
            shutil.rmtree(self.path(name), ignore_errors=True)
            self._use_file(name).unlink(missing_ok=True)
            if not self.generations(split_name(name)[0]):
                # held by us: a waiter finds it unlinked after locking and takes the new one
                self._lock_file(name).unlink(missing_ok=True)
        return "removed"

    def prune(self, max_bytes: int | None) -> list[str]:
        """Remove incomplete snapshots and generations superseded by a newer one, then the
        least recently used ones until the rest fit in *max_bytes* (None: no limit).
        Snapshots in use are never removed."""
        removed = []
        snapshots = self.list()
        newest: dict[str, int] = {}
        for info in snapshots:
            key, number = split_name(info.name)
            newest[key] = max(newest.get(key, 0), number)
        for info in snapshots:
            key, number = split_name(info.name)
            if (not info.complete or number < newest[key]) and self.remove(info.name) == "removed":
                removed.append(info.name)
        kept = [s for s in snapshots if s.complete and s.name not in removed]
        total = sum(s.size for s in kept)
        if max_bytes is None:
            return removed
        for info in sorted(kept, key=lambda s: s.last_used):
            if total <= max_bytes:
                break
            if self.remove(info.name) == "removed":
                removed.append(info.name)
                total -= info.size
        return removed


def age(seconds: float) -> str:
    """``3m``, ``5h``, ``2d``: how long ago, for listings."""
    delta = max(0.0, time.time() - seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if delta >= size:
            return f"{delta / size:.0f}{unit}"
    return f"{delta:.0f}s"
