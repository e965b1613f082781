"""``share=`` on a remote host (``--kvm-host``): a copy of the directory on the host.

The directory lives on this machine (the controller), the guest on the host, and virtiofs
runs beside QEMU. So when a guest mounts its shares, each share's directory is copied to
the host, one directory per guest and share, ``SHARES_PATH/<guest name>-<index>`` (a tar
stream over the plugin's SSH link, :meth:`HostLink.stream <.link.HostLink.stream>`), and
virtiofs exports that copy exactly as it exports the directory itself on this machine:
libvirt starts virtiofsd there through the same launcher (:mod:`pytest_kvm.vm.virtiofsd`,
uploaded once as ``SHARES_PATH/.virtiofsd-<sha256>.py``; the host's virtiofsd is the one
its QEMU packages declare, asked on the host), which maps the guest's login user to the
SSH user that owns the copy and keeps a read-only share read-only.

A writable share comes back: what the guest wrote is copied to the directory here when the
guest is destroyed, when its test ends (the session, before destroying it in the
background) and on ``guest.sync_shares()`` (a tar stream back, checked like ``guest.get``:
nothing lands outside the directory). The files land as the user running pytest, as they do
through the launcher locally. The directory mirrors the guest's view (:func:`apply_copy`):
a file the guest changed or made is written here, a file it deleted (that was there when the
copy was made, or at the last sync) is deleted here; a file made here meanwhile stays (the
guest never saw it: the copy is made once, when the shares are mounted). A read-only share
is never copied back. A kept guest's (``--kvm-keep``) writes stay on the host.

The copies go when their guest is destroyed; a dead run's are removed by its watchdog and by
``pytest-kvm reap --host`` (:func:`doomed_entries`: the run id is in the guest's name, so the
owner records on the host tell a live run's copies from a dead one's, as for volumes).
"""
from __future__ import annotations

import filecmp
import hashlib
import os
import shutil
import stat
import tempfile
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import HypervisorError
from ..transport import archive
from ..vm import virtiofsd
from .volumes import RUN_PREFIX

if TYPE_CHECKING:
    from ..spec import Share
    from .link import HostLink

SHARES_PATH = "/var/lib/libvirt/pytest-kvm-shares"  # the copies, on each remote host
LAUNCHER_SUFFIX = ".virtiofsd"  # a copy's virtiofsd launcher: SHARES_PATH/<copy>.virtiofsd

# what the launcher needs on the host: the directory, python3, the SSH user's ids
_SETUP = 'mkdir -p -- "$1" && id -u && id -g && { command -v python3 || echo; }'
# the launcher's code, written under a temporary name and renamed into place
_UPLOAD = 'test -f "$1" || { cat > "$1.$$" && chmod 0644 "$1.$$" && mv -f -- "$1.$$" "$1"; }'
# a copy: made anew (a killed run's leftover of the same name goes), mode as the directory's
_COPY_IN = 'rm -rf -- "$1" && mkdir -p -- "$1" && chmod "$2" "$1" && exec tar -x -p ' \
           '--no-same-owner -f - -C "$1"'
_WRITE = 'cat > "$1" && chmod 0700 "$1"'


def copy_name(guest: str, index: int) -> str:
    """The name of guest *guest*'s copy of its share *index* in :data:`SHARES_PATH`."""
    return f"{guest}-{index}"


def guest_of(entry: str) -> str | None:
    """The guest an entry of :data:`SHARES_PATH` (a copy or its launcher) belongs to, or
    None if it is no run's (the launcher's code, anything else)."""
    if not entry.startswith(RUN_PREFIX):
        return None
    guest, sep, index = entry.removesuffix(LAUNCHER_SUFFIX).rpartition("-")
    return guest if sep and index.isdigit() and guest.startswith(RUN_PREFIX) else None


def doomed_entries(entries: Iterable[str], live: Iterable[str], running: Iterable[str]) -> list[str]:
    """The entries of :data:`SHARES_PATH` of runs that are over: a run's guest's, unless its
    name starts with one of *live* (``pytest-kvm-<run id>-`` of the runs whose owner record
    says they live, see :func:`~.volumes.live_run_prefixes`) or its domain is *running*."""
    live, running = tuple(live), set(running)
    return sorted(entry for entry in entries
                  if (guest := guest_of(entry)) is not None and guest not in running
                  and not guest.startswith(live))


def tree_paths(root: Path) -> set[str]:
    """The relative paths (``a``, ``a/b``) of the files, directories and symlinks under
    *root* (what a tar of it holds: :func:`~pytest_kvm.transport.archive.pack` leaves out
    sockets, fifos and devices); links are not followed."""
    found: set[str] = set()
    for directory, dirs, files in os.walk(root):
        rel = os.path.relpath(directory, root)
        for name in dirs + files:
            mode = os.lstat(os.path.join(directory, name)).st_mode
            if stat.S_ISREG(mode) or stat.S_ISDIR(mode) or stat.S_ISLNK(mode):
                found.add(name if rel == "." else f"{rel}/{name}")
    return found


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif os.path.lexists(path):
        path.unlink()


def _unchanged(source: Path, target: Path) -> bool:
    """Whether regular file *target* already is *source*: size, mtime (tar keeps seconds)
    and mode, then the bytes (a same-size write within the same second)."""
    a, b = source.lstat(), target.lstat()
    return (stat.S_ISREG(a.st_mode) and stat.S_ISREG(b.st_mode) and a.st_size == b.st_size
            and int(a.st_mtime) == int(b.st_mtime)
            and stat.S_IMODE(a.st_mode) == stat.S_IMODE(b.st_mode)
            and filecmp.cmp(source, target, shallow=False))


def apply_copy(copy: Path, dest: Path, before: set[str]) -> set[str]:
    """Make *dest* mirror *copy* (a tree that came back from the host, consumed): what is in
    *copy* is moved into *dest* (an unchanged file is left as it is; a file where a directory was, or the reverse, replaces it), and of *before* (the
    paths sent, or found at the last sync) those no longer in *copy* are deleted from
    *dest*. Paths in *dest* that are in neither stay. Returns the paths of *copy*."""
    now = tree_paths(copy)
    dest.mkdir(parents=True, exist_ok=True)
    for rel in sorted(before - now, key=lambda p: p.count("/"), reverse=True):
        _remove(dest / rel)  # deepest first; one under a directory already gone is skipped
    dirs: list[str] = []
    for rel in sorted(now, key=lambda p: (p.count("/"), p)):  # parents first
        source, target = copy / rel, dest / rel
        if source.is_dir() and not source.is_symlink():
            if os.path.lexists(target) and not (target.is_dir() and not target.is_symlink()):
                target.unlink()
            target.mkdir(exist_ok=True)
            dirs.append(rel)
            continue
        if os.path.lexists(target):
            if _unchanged(source, target):
                continue
            _remove(target)
        shutil.move(source, target)  # a rename if on the same file system
    for rel in reversed(dirs):  # modes and mtimes after their contents changed them
        shutil.copystat(copy / rel, dest / rel, follow_symlinks=False)
    return now


@dataclass
class _Copy:
    share: "Share"
    path: str  # on the host
    launcher: str | None = None  # on the host
    seen: set[str] = field(default_factory=set)  # paths the copy held when sent or last synced
    done: bool = True  # nothing (more) comes back: not made yet, or copied back for the last time


@dataclass(frozen=True)
class _Launching:
    """What a launcher needs on the host."""

    python: str
    script: str
    virtiofsd: str
    ids: tuple[int, int]  # the SSH user's: owns the copies


class RemoteShares:
    """The copies of the shares of the guests on one host, through *link*."""

    def __init__(self, link: "HostLink") -> None:
        self.link = link
        self._copies: dict[str, dict[int, _Copy]] = {}  # guest -> share index -> its copy
        self._lock = threading.Lock()
        self._launching: _Launching | None | bool = False  # False: not asked yet

    def export(self, guest: str, index: int, share: "Share",
               guest_ids: Callable[[], tuple[int, int]]) -> tuple[Path, Path | None]:
        """The host path of guest *guest*'s copy of *share* (made the first time) and the
        virtiofsd launcher to export it with (None: libvirt's plain virtiofsd)."""
        with self._lock:
            copy = self._copies.setdefault(guest, {}).get(index)
        if copy is None:
            copy = _Copy(share, f"{SHARES_PATH}/{copy_name(guest, index)}")
            with self._lock:  # registered first: a failed copy is removed with the guest
                self._copies[guest][index] = copy
            mode = f"{stat.S_IMODE(share.source.stat().st_mode):o}"
            seen = tree_paths(share.source)
            try:
                self.link.stream(["sh", "-c", _COPY_IN, "copy-in", copy.path, mode],
                                 send=lambda out: archive.pack(share.source, out))
            except HypervisorError as exc:
                raise HypervisorError(f"copying share {share.source} ({share.mount_point}) to "
                                      f"{copy.path} on host {self.link.host.label} (the SSH "
                                      f"user must be able to write {SHARES_PATH}): {exc}") from exc
            copy.seen, copy.done = seen, False  # a partial copy never comes back
        if copy.launcher is None:
            launching = self._launcher_setup()
            if launching is None:
                return Path(copy.path), None
            uid, gid = guest_ids()
            text = virtiofsd.launcher_text(virtiofsd.launcher_argv(
                launching.virtiofsd, copy.path, uid, gid, writable=share.writable,
                python=launching.python, script=launching.script, host_ids=launching.ids))
            launcher = copy.path + LAUNCHER_SUFFIX
            self.link.stream(["sh", "-c", _WRITE, "launcher", launcher],
                             send=lambda out: out.write(text.encode()))
            copy.launcher = launcher
        return Path(copy.path), Path(copy.launcher)

    def _launcher_setup(self) -> _Launching | None:
        """Upload the launcher's code once; None if the host has no python3 or no virtiofsd
        its QEMU declares (then libvirt's own choice runs, without id mapping)."""
        with self._lock:
            if self._launching is not False:
                return self._launching or None
        code = Path(virtiofsd.__file__).read_bytes()
        script = f"{SHARES_PATH}/.virtiofsd-{hashlib.sha256(code).hexdigest()[:16]}.py"
        uid, gid, python = (self.link.run(["sh", "-c", _SETUP, "setup", SHARES_PATH])
                            .split("\n") + ["", "", ""])[:3]
        launching = None
        if python.strip():
            self.link.stream(["sh", "-c", _UPLOAD, "upload", script], send=lambda out: out.write(code))
            found = self.link.run([python.strip(), "-I", script, "--find-virtiofsd"]).strip()
            if found:
                launching = _Launching(python.strip(), script, found, (int(uid), int(gid)))
        with self._lock:
            self._launching = launching
        return launching

    def sync(self, guest: str, *, last: bool = False) -> None:
        """Copy what guest *guest* wrote to its writable shares back here (see the module);
        *last*: nothing more comes back when it is destroyed."""
        with self._lock:
            copies = list(self._copies.get(guest, {}).values())
        for copy in copies:
            if copy.share.writable and not copy.done:
                self._copy_back(copy)
                copy.done = last

    def _copy_back(self, copy: _Copy) -> None:
        dest = copy.share.source
        try:  # beside the directory: the moves into it are renames
            temp = Path(tempfile.mkdtemp(prefix=".pytest-kvm-share-", dir=dest.parent))
        except OSError:
            temp = Path(tempfile.mkdtemp(prefix="pytest-kvm-share-"))
        try:
            self.link.stream(["tar", "-c", "-f", "-", "-C", copy.path, "."],
                             receive=lambda stream: archive.extract(stream, temp))
            copy.seen = apply_copy(temp, dest, copy.seen)
        except (OSError, archive.UnsafeArchive) as exc:
            raise HypervisorError(f"copying the writable share {copy.share.mount_point} back "
                                  f"from {copy.path} on host {self.link.host.label} to {dest}: "
                                  f"{exc}") from exc
        finally:
            shutil.rmtree(temp, ignore_errors=True)

    def remove(self, guest: str) -> None:
        """Copy guest *guest*'s writable shares back (unless done) and remove its copies
        from the host; both are tried, the first failure is raised."""
        errors: list[BaseException] = []
        try:
            self.sync(guest, last=True)
        except (HypervisorError, OSError) as exc:
            errors.append(exc)
        with self._lock:
            copies = self._copies.pop(guest, {})
        if copies:
            try:
                self.link.run(["rm", "-rf", "--", *[c.path for c in copies.values()],
                               *[c.path + LAUNCHER_SUFFIX for c in copies.values()]])
            except HypervisorError as exc:
                errors.append(exc)
        if errors:
            raise errors[0]


def list_entries(link: "HostLink") -> list[str]:
    """The names in :data:`SHARES_PATH` on *link*'s host (none if it does not exist)."""
    out = link.run(["sh", "-c", 'test ! -d "$1" || ls -A -- "$1"', "list", SHARES_PATH])
    return out.split()


def remove_entries(link: "HostLink", names: Iterable[str]) -> list[str]:
    """Remove *names* from :data:`SHARES_PATH` on *link*'s host; returns them."""
    names = [n for n in names if n and "/" not in n and n not in (".", "..")]
    if names:
        link.run(["rm", "-rf", "--", *[f"{SHARES_PATH}/{n}" for n in names]])
    return names


def remove_run_shares(uri: str, prefix: str) -> list[str]:
    """Remove the copies of the guests whose name starts with *prefix* (a dead run's, its
    watchdog's job) on the host of the ``--kvm-host`` URI *uri*, over a link of its own."""
    from .link import HostLink  # noqa: PLC0415 - paramiko only here
    from .uris import parse_host  # noqa: PLC0415
    link = HostLink(parse_host(uri)).connect()
    try:
        return remove_entries(link, [entry for entry in list_entries(link)
                                     if (guest_of(entry) or "").startswith(prefix)])
    finally:
        link.close()
