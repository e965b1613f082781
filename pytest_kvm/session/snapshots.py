"""The snapshot cache: goldens kept across runs in ``CACHE/snapshots/KEY/`` (0700).

KEY hashes everything that can make a saved state wrong (see ``KvmSession``): the
base image's sha256, the domain definition, the seed and its user data, the QEMU
and libvirt versions and the firmware files QEMU loads. A later session (or a CI
job that restored the cache directory) clones from a snapshot without booting.

Locks, beside each snapshot: ``KEY.lock`` (exclusive) while a session makes or
removes it, so concurrent sessions and xdist workers boot it once; ``KEY.use``
(shared) held by every session that clones from it, so ``rm`` and ``prune`` leave
a snapshot in use alone. The modification time of ``KEY.use`` is its last use.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from ..files import file_lock, hold_shared, writable
from ..names import checked
from ..guest.golden import Golden
from ..workdir import META_FILE

SNAPSHOTS_DIR = "snapshots"
SUMMARY_FIELDS = ("os", "family", "memory_mib", "cpus", "accel", "machine", "qemu", "libvirt", "base",
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


class SnapshotStore:
    """The snapshot directory of one cache, and the use locks this process holds."""

    def __init__(self, cache_dir: Path, progress: Callable[[str], None] = lambda msg: None) -> None:
        self.root = cache_dir / SNAPSHOTS_DIR
        self.progress = progress
        self._held: dict[str, int] = {}  # key -> fd with our shared use lock
        self.reused = 0
        self.created = 0

    def path(self, key: str) -> Path:
        return self.root / checked("snapshot", key)

    def _mkroot(self) -> None:
        with writable(self.root.parent, "creating the snapshot cache"):
            self.root.mkdir(mode=0o700, parents=True, exist_ok=True)

    # -- a session's use ---------------------------------------------------------------
    def get_or_create(self, key: str, create: Callable[[Path], Golden], *, what: str) -> Golden:
        """The snapshot *key*: loaded when complete, else made by ``create(directory)``
        (which boots and saves a golden there) under the snapshot's lock. Either way
        this process holds a shared use lock on it until :meth:`release`."""
        self._mkroot()
        with file_lock(self.root / f"{key}.lock",
                       on_wait=lambda: self.progress(f"waiting for another session making "
                                                     f"snapshot {key} ({what})")):
            golden = self._load(key)
            if golden is None:
                directory = self.path(key)
                shutil.rmtree(directory, ignore_errors=True)  # an incomplete one (a killed run)
                with writable(self.root, f"making snapshot {key}"):
                    directory.mkdir(mode=0o700)
                try:
                    golden = create(directory)
                except BaseException:
                    shutil.rmtree(directory, ignore_errors=True)
                    raise
                self.created += 1
            else:
                self.reused += 1
            self._hold(key)
        return golden

    def _load(self, key: str) -> Golden | None:
        directory = self.path(key)
        if not directory.exists():
            return None
        if not (directory / META_FILE).is_file():
            self.progress(f"snapshot {key} is incomplete (made by a run that did not finish); "
                          "removed, booting the guest cold")
            return None
        try:
            return Golden.load(directory)
        except (OSError, ValueError, KeyError) as exc:
            self.progress(f"snapshot {key} is damaged ({exc}); removed, booting the guest cold")
            shutil.rmtree(directory, ignore_errors=True)
            return None

    def _hold(self, key: str) -> None:
        if key in self._held:
            return
        self._held[key] = hold_shared(self.root / f"{key}.use")

    def discard(self, key: str, why: str) -> None:
        """Remove snapshot *key*, which failed this session (a stale cache never fails a
        test: the caller boots the guest cold and saves it again)."""
        self.progress(f"snapshot {key} removed: {why}")
        with file_lock(self.root / f"{key}.lock"):
            shutil.rmtree(self.path(key), ignore_errors=True)

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
            key = directory.name
            complete = (directory / META_FILE).is_file()
            meta: dict = {}
            if complete:
                with contextlib.suppress(OSError, ValueError):
                    meta = json.loads((directory / META_FILE).read_text())
            size = sum(p.stat().st_size for p in directory.iterdir() if p.is_file())
            use = self.root / f"{key}.use"
            created = meta.get("created") or directory.stat().st_mtime
            last_used = use.stat().st_mtime if use.exists() else created
            found.append(SnapshotInfo(name=key, path=directory, size=size, created=created,
                                      last_used=last_used, fields=meta.get("fields", {}),
                                      in_use=self._in_use(key), complete=complete))
        return found

    def _in_use(self, key: str) -> bool:
        if key in self._held:
            return True
        with self._try_exclusive(key) as free:
            return not free

    @contextlib.contextmanager
    def _try_exclusive(self, key: str) -> Iterator[bool]:
        """Hold the snapshot exclusively (no session using or making it) if possible."""
        self._mkroot()
        fds = []
        try:
            for suffix in ("lock", "use"):
                fd = os.open(self.root / f"{key}.{suffix}", os.O_RDWR | os.O_CREAT, 0o600)
                fds.append(fd)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    yield False
                    return
            yield True
        finally:
            for fd in fds:
                os.close(fd)

    def remove(self, key: str) -> str:
        """Remove snapshot *key* unless a session uses it; says what happened."""
        if not self.path(key).exists():
            return "no such snapshot"
        with self._try_exclusive(key) as free:
            if not free:
                return "in use by a running session; left alone"
            shutil.rmtree(self.path(key), ignore_errors=True)
            for suffix in ("lock", "use"):
                (self.root / f"{key}.{suffix}").unlink(missing_ok=True)
        return "removed"

    def prune(self, max_bytes: int | None) -> list[str]:
        """Remove incomplete snapshots, then the least recently used ones until the rest
        fit in *max_bytes* (None: no limit). Snapshots in use are never removed."""
        removed = []
        snapshots = self.list()
        for info in snapshots:
            if not info.complete and self.remove(info.name) == "removed":
                removed.append(info.name)
        total = sum(s.size for s in snapshots if s.complete)
        if max_bytes is None:
            return removed
        for info in sorted((s for s in snapshots if s.complete), key=lambda s: s.last_used):
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
