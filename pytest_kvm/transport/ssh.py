"""The SSH handle of a guest: commands with concurrent stdout/stderr draining, files by
SFTP, directory trees as one tar stream (see :mod:`pytest_kvm.transport.handle` for the interface)."""
from __future__ import annotations

import contextlib
import logging
import os
import shlex
import shutil
import socket
import stat as stat_module
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, BinaryIO

import paramiko

from . import archive
from ..errors import CommandFailed, CommandTimeout, ConnectionLost, HostKeyMismatch, KvmError
from ..output import LineLog
from ..result import CommandResult

HOST = "127.0.0.1"
# paramiko logs every failed attempt of a boot wait (no banner yet, reset by peer) with a
# traceback at ERROR; those are expected and what matters reaches the caller as our own
# exception, so the plugin's connections log to a channel of their own, kept quiet
PARAMIKO_LOG = "pytest_kvm.paramiko"
logging.getLogger(PARAMIKO_LOG).setLevel(logging.CRITICAL)




#: opens a byte stream to 127.0.0.1:port (*port*, *timeout*): a local socket, or a tunnel
#: through a remote hypervisor host (see :mod:`pytest_kvm.hosts.link`)
Dial = Callable[[int, float], Any]


def dial_local(port: int, timeout: float) -> socket.socket:
    return socket.create_connection((HOST, port), timeout=timeout)


def read_banner(port: int, timeout: float, dial: Dial = dial_local) -> bytes:
    """The first line the server sends. With user-mode networking, QEMU accepts the TCP
    connection even while nothing listens in the guest, so only a banner proves sshd is up."""
    with contextlib.closing(dial(port, timeout)) as sock:
        sock.settimeout(timeout)
        data = b""
        while b"\n" not in data and len(data) < 256:
            chunk = sock.recv(256)
            if not chunk:
                break
            data += chunk
        return data


class ChannelWriter:
    """A write-only file object over a channel's stdin (what tarfile's stream mode needs)."""

    def __init__(self, channel: paramiko.Channel) -> None:
        self._channel = channel

    def write(self, data: bytes) -> int:
        self._channel.sendall(data)
        return len(data)

    def flush(self) -> None:
        pass


class SshClient:
    """One authenticated SSH connection to a guest on a 127.0.0.1 forward."""

    def __init__(self, port: int, user: str, key_file: Path, known_hosts: Path, *,
                 dial: Dial = dial_local, proxy_command: list[str] | None = None) -> None:
        """*dial* opens the stream the connection runs on; *proxy_command*: the OpenSSH
        ``ProxyCommand`` that :meth:`ssh_command` needs to reach the same port."""
        self.port = port
        self.user = user
        self.key_file = key_file
        self.known_hosts = known_hosts
        self._dial = dial
        self._proxy_command = proxy_command
        self._client: paramiko.SSHClient | None = None
        self._sftp: paramiko.SFTPClient | None = None
        self._lock = threading.Lock()

    def connect(self, timeout: float) -> None:
        client = paramiko.SSHClient()
        client.set_log_channel(PARAMIKO_LOG)
        client.load_host_keys(str(self.known_hosts))
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
        try:
            client.connect(HOST, port=self.port, username=self.user,
                           key_filename=str(self.key_file), look_for_keys=False,
                           allow_agent=False, timeout=timeout, banner_timeout=timeout,
                           auth_timeout=timeout, sock=self._dial(self.port, timeout))
        except paramiko.BadHostKeyException as exc:
            client.close()
            raise HostKeyMismatch(
                f"guest on 127.0.0.1:{self.port} presented host key {exc.key.get_fingerprint().hex()} "
                f"({exc.key.get_name()}), not the one pinned for it; refusing to connect") from exc
        except Exception:
            client.close()
            raise
        transport = client.get_transport()
        assert transport is not None
        transport.set_keepalive(15)
        self._client = client

    @property
    def connected(self) -> bool:
        return self._client is not None

    @property
    def active(self) -> bool:
        """Whether the connection is still up (False once it dropped or was closed)."""
        transport = self._client.get_transport() if self._client else None
        return transport is not None and transport.is_active()

    def _transport(self) -> paramiko.Transport:
        if not self.active:
            raise ConnectionLost(f"the SSH connection to 127.0.0.1:{self.port} is not open "
                                 f"(it was closed or dropped)")
        return self._client.get_transport()

    def _lost(self, command: str, exc: BaseException | None = None) -> ConnectionLost:
        why = f" ({type(exc).__name__}: {exc})" if exc is not None else ""
        return ConnectionLost(f"the SSH connection to 127.0.0.1:{self.port} was lost while "
                              f"running {command!r}{why}")

    def run(self, command: str, *, timeout: float, check: bool = False,
            input: bytes | Callable[[BinaryIO], Any] | None = None, log: LineLog | None = None,
            stdout_reader: Callable[[BinaryIO], Any] | None = None) -> CommandResult:
        """Run *command*; *input* (bytes, or a function writing to a file object) is sent to
        its stdin, which is closed either way (a command that reads it never waits for a
        terminal); *log* gets its output as it arrives; *stdout_reader*, if given, reads the
        stdout stream itself (result.stdout is then empty) and what it raises is raised here.
        A connection that drops before the exit status arrived is :class:`ConnectionLost`."""
        transport = self._transport()
        try:
            channel = transport.open_session(timeout=30)
            channel.exec_command(command)
        except (OSError, EOFError, paramiko.SSHException) as exc:
            raise self._lost(command, exc) from exc
        chunks: dict[str, list[bytes]] = {"stdout": [], "stderr": []}
        failures: list[BaseException] = []

        def drain(stream: str, recv) -> None:
            while True:
                try:
                    data = recv(65536)
                except (OSError, EOFError, paramiko.SSHException):
                    return
                if not data:
                    return
                chunks[stream].append(data)
                if log is not None:
                    log.feed(stream, data)

        def read_stdout() -> None:
            with channel.makefile("rb") as stream:
                try:
                    stdout_reader(stream)
                except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
                    failures.append(exc)
                # read the rest (tar's padding, or what a refused archive still sends) so the
                # command ends and its exit status says whether it failed first
                with contextlib.suppress(OSError, EOFError, paramiko.SSHException):
                    while stream.read(65536):
                        pass

        def feed() -> None:
            try:
                if callable(input):
                    input(ChannelWriter(channel))
                elif input:
                    channel.sendall(input)
                channel.shutdown_write()
            except (OSError, EOFError, paramiko.SSHException):
                pass  # the command quit without reading it all: its exit status says why
            except BaseException as exc:  # noqa: BLE001 - e.g. a local file vanished mid-put
                failures.append(exc)
                channel.close()

        stdout_thread = (threading.Thread(target=read_stdout, daemon=True) if stdout_reader
                         else threading.Thread(target=drain, args=("stdout", channel.recv), daemon=True))
        threads = [stdout_thread,
                   threading.Thread(target=drain, args=("stderr", channel.recv_stderr), daemon=True),
                   threading.Thread(target=feed, daemon=True)]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + timeout
        finished = False
        while not (channel.closed or finished or time.monotonic() >= deadline):
            finished = channel.status_event.wait(min(0.5, max(deadline - time.monotonic(), 0)))
        finished = channel.status_event.is_set()
        for thread in threads[:2]:
            thread.join(max(0.0, deadline - time.monotonic()) + 1.0 if finished else 0.5)
        if log is not None:
            log.close()
        if failures:
            if channel.status_event.is_set() and channel.recv_exit_status() not in (0, -1):
                code = channel.recv_exit_status()
                channel.close()
                if check:  # the command failed first (e.g. no such directory): say that
                    raise CommandFailed(CommandResult(
                        command, code, "", b"".join(chunks["stderr"]).decode("utf-8", "replace"))
                    ) from failures[0]
            channel.close()
            raise failures[0]

        def result(code: int) -> CommandResult:
            return CommandResult(command, code,
                                 b"".join(chunks["stdout"]).decode("utf-8", errors="replace"),
                                 b"".join(chunks["stderr"]).decode("utf-8", errors="replace"))

        if not channel.status_event.is_set():
            closed_early = channel.closed  # closed under us: no exit status will come
            channel.close()
            if closed_early or not transport.is_active():
                raise self._lost(command)
            raise CommandTimeout(result(-1), timeout)
        code = channel.recv_exit_status()
        channel.close()
        if code == -1 and not transport.is_active():  # closed without an exit status
            raise self._lost(command)
        res = result(code)
        if check and not res.ok:
            raise CommandFailed(res)
        return res

    def _sftp_call(self, what: str, call: Callable[[], Any]) -> None:
        try:
            call()
        except (OSError, EOFError, paramiko.SSHException) as exc:
            if not self.active:
                raise self._lost(what, exc) from exc
            raise  # e.g. FileNotFoundError: the path, not the connection

    def is_dir(self, remote_path: str) -> bool:
        """Whether *remote_path* is a directory in the guest (False if it does not exist)."""
        result: list[bool] = []

        def stat() -> None:
            try:
                result.append(stat_module.S_ISDIR(self.sftp().stat(remote_path).st_mode or 0))
            except FileNotFoundError:
                result.append(False)

        self._sftp_call(f"stat {remote_path}", stat)
        return result[0]

    def sftp(self) -> paramiko.SFTPClient:
        with self._lock:
            if self._sftp is None:
                self._sftp = self._client.open_sftp() if self._client else None
                if self._sftp is None:
                    raise ConnectionLost(f"the SSH connection to 127.0.0.1:{self.port} is not open")
            return self._sftp

    def put(self, local: Path, remote: str, *, exclude: Sequence[str] = (),
            timeout: float) -> None:
        """A file goes by SFTP; a directory's contents as one tar stream unpacked into
        *remote* (made if missing), *exclude* globs left out."""
        if not local.is_dir():
            self._sftp_call(f"put {local}", lambda: self.sftp().put(os.fspath(local), remote))
            return
        self.run(archive.remote_unpack_command(remote), timeout=timeout, check=True,
                 input=lambda stream: archive.pack(local, stream, exclude=exclude))

    def get(self, remote: str, local: Path, *, exclude: Sequence[str] = (), timeout: float,
            as_root: Callable[[str], str] | None = None, max_bytes: int | None = None) -> None:
        """A file comes by SFTP (or ``cat`` as root, or when bounded); a directory's contents
        as one tar stream unpacked into *local*, refusing members that would land outside it.
        *max_bytes*: :class:`~.archive.OverLimit` once more than that came."""
        quoted = shlex.quote(remote)
        is_dir = (self.run(as_root(f"test -d {quoted}"), timeout=timeout).ok if as_root
                  else self.is_dir(remote))
        if is_dir:
            command = archive.remote_pack_command(remote, exclude)

            def reader(stream: BinaryIO) -> None:
                archive.extract(stream, local, exclude=exclude)
        elif as_root or max_bytes is not None:
            # bounded: head reads the file itself (a pipe into head would hide cat's failure)
            command = (f"head -c {int(max_bytes) + 1} -- {quoted}" if max_bytes is not None
                       else f"cat -- {quoted}")

            def reader(stream: BinaryIO) -> None:
                with open(local, "wb") as out:
                    shutil.copyfileobj(stream, out)
        else:
            self._sftp_call(f"get {remote}", lambda: self.sftp().get(remote, os.fspath(local)))
            return
        command = as_root(command) if as_root else command
        if max_bytes is not None:
            if is_dir:
                command = archive.bounded_command(command, max_bytes)
            unbounded = reader

            def reader(stream: BinaryIO) -> None:
                unbounded(archive.LimitedReader(stream, max_bytes))
        self.run(command, timeout=timeout, check=True, stdout_reader=reader)

    def run_ps(self, script: str, *, timeout: float, check: bool = False) -> CommandResult:
        raise KvmError(f"run_ps needs a Windows guest (WinRM); the guest on 127.0.0.1:{self.port} "
                       f"is reached over SSH: use run()")

    def ssh_command(self) -> list[str]:
        """An OpenSSH argv that logs in with the same key and the pinned host key."""
        proxy = ["-o", f"ProxyCommand={shlex.join(self._proxy_command)}"] if self._proxy_command else []
        return ["ssh", "-i", str(self.key_file), "-p", str(self.port),
                "-o", f"UserKnownHostsFile={self.known_hosts}", "-o", "GlobalKnownHostsFile=/dev/null",
                "-o", "StrictHostKeyChecking=yes", "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
                *proxy, f"{self.user}@{HOST}"]

    def access(self) -> str:
        """The ssh command line, shell-quoted (a remote guest's ProxyCommand holds spaces)."""
        return shlex.join(self.ssh_command())

    def close(self) -> None:
        with contextlib.suppress(Exception):
            if self._sftp is not None:
                self._sftp.close()
        with contextlib.suppress(Exception):
            if self._client is not None:
                self._client.close()
        self._sftp = None
        self._client = None
