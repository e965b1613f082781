"""The cache directory: where base images live, how it is locked and hashed."""
from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import stat
from collections.abc import Iterator
from pathlib import Path

from .errors import StorageError

CACHE_ENV = "PYTEST_KVM_CACHE_DIR"


def default_cache_dir() -> Path:
    """``$PYTEST_KVM_CACHE_DIR``, else ``$XDG_CACHE_HOME/pytest-kvm``, else ``~/.cache/pytest-kvm``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "pytest-kvm"


def _same_file(fd: int, path: Path) -> bool:
    """Whether *fd* is the file at *path* now (not one unlinked, or replaced, meanwhile)."""
    try:
        now, held = os.stat(path), os.fstat(fd)
    except FileNotFoundError:
        return False
    return (now.st_dev, now.st_ino) == (held.st_dev, held.st_ino)


@contextlib.contextmanager
def file_lock(path: Path, *, on_wait=None) -> Iterator[None]:
    """An exclusive ``flock`` on *path*, held for the ``with`` block.

    Parallel workers (pytest-xdist) use it to do once-per-cache work, such as
    building an image, exactly once. *on_wait* is called once if the lock is
    held by someone else, before blocking. A holder may unlink *path* (``snapshot rm``):
    a lock taken on a file no longer at *path* is dropped and taken again on the one
    there, so two processes never both hold "the" lock.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    waited = False
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if on_wait is not None and not waited:
                    on_wait()
                waited = True
                fcntl.flock(fd, fcntl.LOCK_EX)
        except BaseException:
            os.close(fd)
            raise
        if _same_file(fd, path):
            break
        os.close(fd)
    try:
        yield
    finally:
        os.close(fd)  # closing releases the lock


def try_lock(path: Path) -> int | None:
    """Take an exclusive lock without waiting; return the fd holding it, or None (also
    if the file was unlinked by its holder meanwhile: see :func:`file_lock`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    if not _same_file(fd, path):
        os.close(fd)
        return None
    return fd


def write_owner_only(path: Path, data: bytes) -> Path:
    """Write *data* to *path* readable by its owner only (0600), even if it existed."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.chmod(path, 0o600)
    return path


def sha256_file(path: Path, chunk: int = 4 * 1024 * 1024) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


@contextlib.contextmanager
def writable(path: Path, what: str) -> Iterator[None]:
    """Turn "read-only" and "disk full" errors met while writing under *path* into one
    clear :class:`StorageError` that says what to do."""
    try:
        yield
    except OSError as exc:
        if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
            raise StorageError(
                f"{what}: {path} is not writable ({exc.strerror}). pytest-kvm keeps base images "
                "and per-run work files in its cache directory: make it writable or pass "
                "--kvm-cache-dir DIR.") from exc
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise StorageError(
                f"{what}: no space left under {path} ({exc.strerror}). Free some space "
                "(`pytest-kvm reap` removes leftovers of dead runs) or pass --kvm-cache-dir DIR.") from exc
        raise


def hold_shared(use: Path) -> int:
    """A shared ``flock`` on the use file *use* (made if missing; its mtime becomes now):
    the fd holding it, until closed. Whoever wants to remove what *use* guards takes an
    exclusive lock on it without waiting (:func:`try_lock`) and leaves it
    alone if that fails. Snapshots and base images (``images/cache.py``) use it."""
    fd = os.open(use, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
        os.utime(use)
    except BaseException:
        os.close(fd)
        raise
    return fd


def refuse_untrusted(path: Path, what: str, *, follow: bool = True) -> os.stat_result:
    """*path*'s stat if only this user can write it (owned by us, not group- or
    world-writable; not a symlink unless *follow*), as ssh wants of a key file; else one
    :class:`StorageError` that names the path and the fix. What such a directory holds
    becomes a QEMU command line and a guest's memory: anyone else who could write it could
    run code on this machine."""
    st = os.stat(path) if follow else os.lstat(path)
    problems = []
    if not follow and stat.S_ISLNK(st.st_mode):
        problems.append("a symbolic link")
    if st.st_uid != os.geteuid():
        problems.append(f"owned by uid {st.st_uid}, not by this user (uid {os.geteuid()})")
    if st.st_mode & 0o022:
        problems.append(f"writable by its group or by everyone (mode {st.st_mode & 0o7777:04o})")
    if problems:
        raise StorageError(
            f"{what}: {path} is {' and '.join(problems)}: pytest-kvm restores guests from what "
            "it holds, so whoever else can write it could run code on this machine. Make it "
            f"yours and private (`chown {os.geteuid()} {path}; chmod go-w {path}`), remove it, or "
            "pass --kvm-cache-dir DIR (or --kvm-snapshots off).")
    return st
