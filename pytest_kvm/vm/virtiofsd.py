"""virtiofsd in a user namespace, so a share reads and writes as the host user.

QEMU 7.2's virtiofsd (C) passes the guest's user ids through and has no id translation; the
guest kernel checks permissions against the host's ids, so a 0700 directory of the host
user (pytest's ``tmp_path``) is closed to the guest's login user. libvirt starts virtiofsd
itself, from the ``<binary path>`` of the ``<filesystem>``; that path is a small script
(:func:`write_launcher`) that runs this file, which

- enters a new user namespace whose ids map the guest's login user to the host user and every
  other guest id (guest root too) to an unprivileged range far above real users
  (:data:`UNPRIVILEGED_BASE`): the login user reads what the host user can and its files land
  as the host user; guest root's files land as an id no one has; in the namespace virtiofsd
  has no capability over the host (no ``mknod`` of devices, no file of another host user);
- enters a new mount namespace and bind-mounts the shared directory onto itself ``nosuid``,
  ``nodev`` and, unless the share is writable, read-only: a read-only share stays so even if
  guest root remounts it read-write;
- then execs virtiofsd with libvirt's arguments (same process: libvirt's pid file holds).

Only root may map several ids (without the setuid ``newuidmap``); another user gets the plain
virtiofsd (libvirt 9.0 refuses virtiofs to unprivileged users anyway).

This file runs as a script (``python -I FILE``, libvirt clears the environment): stdlib only.
On a remote host (``--kvm-host``) the plugin uploads it and asks it there which virtiofsd the
host's QEMU declares (``--find-virtiofsd``); see :mod:`pytest_kvm.hosts.shares`.
"""
from __future__ import annotations

import argparse
import ctypes
import json
import os
import shlex
import sys
from pathlib import Path

#: the first host id of the range guest ids other than the login user's map to: far above
#: the ids of real users and the usual subordinate ranges of /etc/subuid (100000 and up)
UNPRIVILEGED_BASE = 1_000_000_000
ID_COUNT = 65536  # guest ids 0..65535 are mapped; a file of another id shows as nobody

CLONE_NEWNS = 0x00020000
CLONE_NEWUSER = 0x10000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_NOATIME, MS_NODIRATIME, MS_REMOUNT, MS_BIND = 1024, 2048, 32, 4096
MS_REC, MS_PRIVATE, MS_RELATIME = 16384, 1 << 18, 1 << 21
ST_NOEXEC, ST_NOATIME, ST_NODIRATIME, ST_RELATIME = 8, 1024, 2048, 4096

#: where QEMU's packages describe their vhost-user back ends (the "fs" one is virtiofsd)
VHOST_USER_DIRS = (Path("/etc/qemu/vhost-user"), Path("/usr/share/qemu/vhost-user"))


def id_map(guest_id: int, host_id: int) -> str:
    """The ``uid_map`` (or ``gid_map``) text: *guest_id* is *host_id*, every other id of
    0..65535 an unprivileged one."""
    if not 0 <= guest_id < ID_COUNT:
        raise ValueError(f"guest id {guest_id} is not below {ID_COUNT}")
    ranges = [(0, UNPRIVILEGED_BASE, guest_id), (guest_id, host_id, 1),
              (guest_id + 1, UNPRIVILEGED_BASE + guest_id + 1, ID_COUNT - guest_id - 1)]
    return "".join(f"{inside} {outside} {count}\n" for inside, outside, count in ranges if count)


def find_virtiofsd(dirs: tuple[Path, ...] = VHOST_USER_DIRS) -> Path | None:
    """The virtiofsd QEMU's packages declare (as libvirt finds it), or None."""
    for directory in dirs:
        for descriptor in sorted(directory.glob("*.json")) if directory.is_dir() else ():
            try:
                data = json.loads(descriptor.read_text())
            except (OSError, ValueError):
                continue
            if data.get("type") == "fs" and Path(data.get("binary", "")).is_file():
                return Path(data["binary"])
    return None


def launcher_argv(virtiofsd: Path | str, source: Path | str, guest_uid: int, guest_gid: int, *,
                  writable: bool, python: str = sys.executable, script: str | None = None,
                  host_ids: tuple[int, int] | None = None) -> list[str]:
    """The command the launcher script execs, libvirt's arguments appended. *script*: this
    file where it runs (default: here); *host_ids*: the host uid and gid the guest's login
    user maps to (default: this process's). Both differ on a remote host
    (:mod:`pytest_kvm.hosts.shares` uploads this file there)."""
    host_uid, host_gid = host_ids if host_ids is not None else (os.getuid(), os.getgid())
    argv = [python, "-I", script or str(Path(__file__).resolve()), "--source", str(source),
            "--uid", f"{guest_uid}:{host_uid}", "--gid", f"{guest_gid}:{host_gid}"]
    if not writable:
        argv.append("--read-only")
    return [*argv, "--", str(virtiofsd)]


def launcher_text(argv: list[str]) -> str:
    """A ``sh`` script running *argv* with the arguments it is given."""
    return f"#!/bin/sh\nexec {shlex.join(argv)} \"$@\"\n"


def write_launcher(path: Path, argv: list[str]) -> Path:
    """An executable script at *path* (for ``<binary path>``) running *argv* with the
    arguments it is given."""
    path.write_text(launcher_text(argv))
    path.chmod(0o700)
    return path


# -- the launcher (a separate process: libvirt's child) -----------------------------------------
def _libc():
    return ctypes.CDLL(None, use_errno=True)


def _check(rc: int, what: str) -> None:
    if rc != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{what}: {os.strerror(errno)}")


def _pair(text: str) -> tuple[int, int]:
    guest, host = text.split(":")
    return int(guest), int(host)


def _enter_namespaces(uid: tuple[int, int], gid: tuple[int, int]) -> None:
    """Unshare the user and mount namespaces; a child (still in the parent's namespace,
    where this process's ids have the power to) writes the id maps."""
    ready_r, ready_w = os.pipe()
    done_r, done_w = os.pipe()
    child = os.fork()
    if child == 0:
        status = 1
        try:
            os.close(ready_w)
            os.close(done_r)
            if os.read(ready_r, 1):
                parent = os.getppid()
                Path(f"/proc/{parent}/uid_map").write_text(id_map(*uid))
                Path(f"/proc/{parent}/gid_map").write_text(id_map(*gid))
                os.write(done_w, b"1")
                status = 0
        finally:
            os._exit(status)
    os.close(ready_r)
    os.close(done_w)
    libc = _libc()
    _check(libc.unshare(CLONE_NEWUSER | CLONE_NEWNS), "unshare")
    os.write(ready_w, b"1")
    mapped = os.read(done_r, 1)
    os.waitpid(child, 0)
    if not mapped:
        raise OSError("could not write the id maps of the user namespace")
    os.setresgid(0, 0, 0)
    os.setresuid(0, 0, 0)


def _bind_source(source: str, read_only: bool) -> None:
    libc = _libc()
    _check(libc.mount(None, b"/", None, MS_REC | MS_PRIVATE, None), "making / private")
    path = os.fsencode(source)
    _check(libc.mount(path, path, None, MS_BIND | MS_REC, None), f"bind-mounting {source}")
    kept = os.statvfs(source).f_flag  # flags a mount of a user namespace may not drop
    flags = MS_REMOUNT | MS_BIND | MS_NOSUID | MS_NODEV | (MS_RDONLY if read_only else 0)
    for st, ms in ((ST_NOEXEC, MS_NOEXEC), (ST_NOATIME, MS_NOATIME),
                   (ST_NODIRATIME, MS_NODIRATIME), (ST_RELATIME, MS_RELATIME)):
        flags |= ms if kept & st else 0
    _check(libc.mount(None, path, None, flags, None), f"remounting {source}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="virtiofsd in a user namespace (pytest-kvm)")
    parser.add_argument("--find-virtiofsd", action="store_true",
                        help="print the virtiofsd QEMU's packages declare (nothing if none), exit")
    parser.add_argument("--source")
    parser.add_argument("--uid", type=_pair, metavar="GUEST:HOST")
    parser.add_argument("--gid", type=_pair, metavar="GUEST:HOST")
    parser.add_argument("--read-only", action="store_true")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    if args.find_virtiofsd:  # asked on a remote host, where this file is uploaded
        found = find_virtiofsd()
        print(found or "")
        return 0
    if args.source is None or args.uid is None or args.gid is None:
        parser.error("--source, --uid and --gid are required")
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    try:
        _enter_namespaces(args.uid, args.gid)
        _bind_source(args.source, args.read_only)
        os.execv(command[0], command)
    except OSError as exc:
        print(f"pytest-kvm virtiofsd launcher: {exc}", file=sys.stderr)
        return 1
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())
