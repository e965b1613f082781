"""Directory trees as one uncompressed tar stream, for ``guest.put`` and ``guest.get``.

One stream over one SSH channel instead of an SFTP round trip per file. On ``put`` we pack
and the guest's tar extracts; on ``get`` the guest's tar packs and we extract. That second
stream is untrusted: whatever runs in the guest (a test can break it on purpose) must not be
able to write outside the target directory on the host. Debian 12's Python 3.11.2 has no
tarfile extraction filters, so every check is written out here.
"""
from __future__ import annotations

import fnmatch
import os
import posixpath
import shlex
import shutil
import tarfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import BinaryIO

from ..errors import KvmError

# rwx for everyone plus the sticky bit: never setuid or setgid from a guest
STREAM_BUFFER = 64 * tarfile.RECORDSIZE  # 640 KiB reads and writes: fewer Python-level calls per MB
MODE_BITS = 0o1777
SPECIAL_KINDS = {tarfile.CHRTYPE: "a character device", tarfile.BLKTYPE: "a block device",
                 tarfile.FIFOTYPE: "a fifo"}


class UnsafeArchive(KvmError):
    """A member of a tree from the guest would land outside the target, or is a device."""

    def __init__(self, member: str, reason: str) -> None:
        self.member = member
        self.reason = reason
        super().__init__(f"refusing {member!r} from the guest: {reason}")


# -- exclusion ------------------------------------------------------------------------------
def _pattern(pattern: str) -> str:
    """``.git/`` and ``./build`` mean ``.git`` and ``build``: tar matches names without them."""
    pattern = pattern.rstrip("/")
    while pattern.startswith("./"):
        pattern = pattern[2:]
    return pattern


def excluded(relpath: str, patterns: Sequence[str]) -> bool:
    """Whether a member is left out, in both directions.

    A pattern (fnmatch, where ``*`` also matches ``/``) excludes a member when it matches
    the member's name, its whole relative path, or any trailing part of it ("pkg/*.pyc"
    matches "src/pkg/mod.pyc"); and it excludes everything under a directory it excludes.
    That is what GNU tar's and bsdtar's default ``--exclude`` do, so the guest's tar and
    :func:`extract` drop the same members.
    """
    wanted = [p for p in map(_pattern, patterns) if p]
    parts = [p for p in relpath.split("/") if p not in ("", ".")]
    for end in range(1, len(parts) + 1):  # each parent directory, then the member itself
        for start in range(end):
            candidate = "/".join(parts[start:end])
            if any(fnmatch.fnmatchcase(candidate, p) for p in wanted):
                return True
    return False


# -- put: pack here -------------------------------------------------------------------------
def _walk(directory: Path, prefix: str, exclude: Sequence[str]) -> Iterator[tuple[Path, str]]:
    """Every entry under *directory*, sorted by name, parents first; links are not followed
    and excluded directories are not entered."""
    with os.scandir(directory) as entries:
        ordered = sorted(entries, key=lambda e: e.name)
    for entry in ordered:
        relpath = posixpath.join(prefix, entry.name)
        if excluded(relpath, exclude):
            continue
        yield Path(entry.path), relpath
        if entry.is_dir(follow_symlinks=False):
            yield from _walk(Path(entry.path), relpath, exclude)


def pack(source: Path, fileobj: BinaryIO, *, exclude: Sequence[str] = ()) -> int:
    """Write the contents of directory *source* to *fileobj* as a PAX tar stream.

    Member names are relative ("pkg/mod.py"). Modes and mtimes are kept, symlinks stay
    symlinks, empty directories are members, files linked to each other are hard links.
    Owners are blanked so that the guest user who extracts owns the files. Sockets, fifos
    and devices are skipped: the guest could not use them, and they would stop the copy of
    a tree that merely holds a stale socket. Returns the number of members written.
    """
    if not os.path.isdir(source):
        raise ValueError(f"{source} is not a directory; copy a single file with SFTP")
    count = 0
    with tarfile.open(fileobj=fileobj, mode="w|", format=tarfile.PAX_FORMAT,
                      bufsize=STREAM_BUFFER) as tar:
        for path, relpath in _walk(source, "", exclude):
            info = tar.gettarinfo(path, arcname=relpath)  # lstat: a symlink stays one
            if info is None or not (info.isreg() or info.isdir() or info.issym() or info.islnk()):
                continue
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            if info.isreg():
                with open(path, "rb") as data:
                    tar.addfile(info, data)
            else:
                tar.addfile(info)
            count += 1
    return count


# -- get: extract here ----------------------------------------------------------------------
def _escape(name: str, target: Path) -> str | None:
    """Why *name*, relative to the root of the tree, is not a plain path inside it (or None)."""
    if name.startswith("/"):
        return f"it is an absolute path, outside {target}"
    if ".." in name.split("/"):
        resolved = posixpath.normpath(name)
        if resolved == ".." or resolved.startswith("../"):
            return f"it would land outside {target}"
        return "it has a '..' component"
    return None


def _parts(name: str) -> list[str]:
    return [p for p in name.split("/") if p not in ("", ".")]


def _symlink_escape(parts: list[str], linkname: str, target: Path) -> str | None:
    """Why a symlink at *parts* to *linkname* could lead outside the tree (or None).

    Resolved lexically from the link's own directory, without following anything on disk.
    A ``..`` is allowed only at the start: there it climbs real directories (the link's
    parents, which this extraction checked are not symlinks). After a name it is refused,
    because that name may be, or later become, a symlink ("s/../../x" with s -> ".").
    """
    if not linkname:
        return "it is a symlink with an empty target"
    if linkname.startswith("/"):
        return f"it is a symlink to the absolute path {linkname!r}"
    ups, named = 0, False
    for part in linkname.split("/"):
        if part == "..":
            if named:
                return (f"it is a symlink to {linkname!r}, "
                        f"whose '..' follows a name that may be a symlink")
            ups += 1
        elif part not in ("", "."):
            named = True
    if ups > len(parts) - 1:
        return f"it is a symlink to {linkname!r}, which points outside {target}"
    return None


class _Extraction:
    """One :func:`extract` call: what it wrote so far, which later members may rely on."""

    def __init__(self, target: Path) -> None:
        self.target = target
        self.files: set[str] = set()  # regular files written: the only valid hard-link targets
        self.dirs: list[tuple[Path, int, float]] = []  # modes and mtimes, applied at the end

    def refusal(self, member: tarfile.TarInfo, parts: list[str]) -> str | None:
        """Why *member*, at *parts* under the target, must not be written (or None)."""
        if not (member.isreg() or member.isdir() or member.issym() or member.islnk()):
            kind = SPECIAL_KINDS.get(member.type, f"a member of unknown type {member.type!r}")
            return f"it is {kind}, which is never extracted"
        for end in range(1, len(parts)):  # a symlink parent, ours or on disk, leads anywhere
            if os.path.islink(self.target.joinpath(*parts[:end])):
                return (f"its parent {'/'.join(parts[:end])!r} is a symlink, "
                        f"which could lead outside {self.target}")
        if member.issym():
            return _symlink_escape(parts, member.linkname, self.target)
        if member.islnk():
            if _escape(member.linkname, self.target):
                return (f"it is a hard link to {member.linkname!r}, "
                        f"which is not a plain path inside {self.target}")
            if "/".join(_parts(member.linkname)) not in self.files:
                return (f"it is a hard link to {member.linkname!r}, "
                        f"which this extraction has not written as a file")
        return None

    def write(self, tar: tarfile.TarFile, member: tarfile.TarInfo, parts: list[str]) -> None:
        relpath = "/".join(parts)
        path = self.target.joinpath(*parts)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.files.discard(relpath)
        # Remove what the member replaces, so nothing is written through an existing
        # symlink. A real directory stays (a file member then fails with FileExistsError).
        if os.path.lexists(path) and not (os.path.isdir(path) and not os.path.islink(path)):
            os.unlink(path)
        if member.isdir():
            path.mkdir(exist_ok=True)
            self.dirs.append((path, member.mode & MODE_BITS, member.mtime))
        elif member.issym():
            os.symlink(member.linkname, path)
        elif member.islnk():
            source = self.target.joinpath(*_parts(member.linkname))
            os.link(source, path, follow_symlinks=False)
            self.files.add(relpath)
        else:
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
            with os.fdopen(os.open(path, flags, 0o600), "wb") as out:
                shutil.copyfileobj(tar.extractfile(member), out)
            os.chmod(path, member.mode & MODE_BITS)
            os.utime(path, (member.mtime, member.mtime))
            self.files.add(relpath)

    def finish(self) -> None:
        """Directory modes last, so a read-only directory could still be filled, and mtimes
        after their contents changed them."""
        for path, mode, mtime in reversed(self.dirs):
            os.chmod(path, mode)
            os.utime(path, (mtime, mtime))


def extract(fileobj: BinaryIO, target: Path, *, exclude: Sequence[str] = ()) -> int:
    """Extract the tar stream *fileobj* (read once, never seeked: a pipe or an SSH channel)
    under *target*, created if missing.

    Refused with :class:`UnsafeArchive`: absolute names and names with ``..``; symlinks
    that are absolute or lead outside (see :func:`_symlink_escape`); hard links to anything
    but a file this call already wrote; devices and fifos; any member below a symlink. The
    stream is checked as it is read, so the members before a refused one are already on
    disk, all under *target*. Permission bits are kept without setuid and setgid; owners
    are not. Excluded members are skipped. Returns the number of members written (the
    root member "./" is not one). A stream that is not tar raises ``tarfile.TarError``:
    the caller has the guest's exit status and stderr that say why.
    """
    target.mkdir(parents=True, exist_ok=True)
    extraction = _Extraction(target)
    count = 0
    with tarfile.open(fileobj=fileobj, mode="r|", bufsize=STREAM_BUFFER) as tar:
        for member in tar:
            reason = _escape(member.name, target)
            if reason:
                raise UnsafeArchive(member.name, reason)
            parts = _parts(member.name)
            if not parts:  # the root of the tree: it is *target*, which stays as it is
                if not member.isdir():
                    raise UnsafeArchive(member.name, "the root of the tree is not a directory")
                continue
            if excluded("/".join(parts), exclude):
                continue
            reason = extraction.refusal(member, parts)
            if reason:
                raise UnsafeArchive(member.name, reason)
            extraction.write(tar, member, parts)
            count += 1
    extraction.finish()
    return count


# -- the guest's side -----------------------------------------------------------------------
def remote_pack_command(path: str, exclude: Sequence[str] = ()) -> str:
    """The sh command that writes a tar of the contents of directory *path* to stdout.

    GNU tar and bsdtar both take ``-C`` and ``--exclude``; GNU tar applies an exclude only
    to the names after it, hence before ".".
    """
    argv = ["tar", "-c", "-f", "-", "-C", path]
    argv += [f"--exclude={p}" for p in map(_pattern, exclude) if p]
    return shlex.join([*argv, "."])


def remote_unpack_command(path: str) -> str:
    """The sh command that extracts a tar from stdin into directory *path*, created if missing.

    ``-p`` keeps modes despite the umask; ``--no-same-owner`` keeps a root login from
    chowning to the ids in the archive (GNU tar and bsdtar take both).
    """
    mkdir = shlex.join(["mkdir", "-p", "--", path])
    untar = shlex.join(["tar", "-x", "-p", "--no-same-owner", "-f", "-", "-C", path])
    return f"{mkdir} && {untar}"


class OverLimit(KvmError):
    """A stream from the guest longer than the bytes it was allowed."""


class LimitedReader:
    """*stream* read through, counting: :class:`OverLimit` as soon as more than *limit*
    bytes came (a guest file that never ends, such as a link to ``/dev/zero``, stops at
    the limit instead of the timeout). Pair it with :func:`bounded_command`, which makes
    the guest stop sending one byte past the limit."""

    def __init__(self, stream: BinaryIO, limit: int) -> None:
        self.stream, self.limit, self.count = stream, limit, 0

    def read(self, size: int = -1) -> bytes:
        data = self.stream.read(size)
        self.count += len(data)
        if self.count > self.limit:
            raise OverLimit(f"more than {self.limit} bytes: stopped at the size limit")
        return data


def bounded_command(command: str, limit: int) -> str:
    """*command* whose output the guest cuts one byte past *limit* (then the reader knows it
    was over, and the command ends instead of streaming on)."""
    return f"{command} | head -c {int(limit) + 1}"
