"""The SSH handle of a guest: commands with concurrent stdout/stderr draining, SFTP."""
from __future__ import annotations

import contextlib
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import paramiko

from .errors import CommandFailed, CommandTimeout, HostKeyMismatch, InfrastructureError

HOST = "127.0.0.1"


@dataclass(frozen=True)
class CommandResult:
    command: str
    exit_code: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.exit_code == 0


def read_banner(port: int, timeout: float) -> bytes:
    """The first line the server sends. With user-mode networking, QEMU accepts the TCP
    connection even while nothing listens in the guest, so only a banner proves sshd is up."""
    with socket.create_connection((HOST, port), timeout=timeout) as sock:
        sock.settimeout(timeout)
        data = b""
        while b"\n" not in data and len(data) < 256:
            chunk = sock.recv(256)
            if not chunk:
                break
            data += chunk
        return data


class SshClient:
    """One authenticated SSH connection to a guest on a 127.0.0.1 forward."""

    def __init__(self, port: int, user: str, key_file: Path, known_hosts: Path) -> None:
        self.port = port
        self.user = user
        self.key_file = key_file
        self.known_hosts = known_hosts
        self._client: paramiko.SSHClient | None = None
        self._sftp: paramiko.SFTPClient | None = None
        self._lock = threading.Lock()

    def connect(self, timeout: float) -> None:
        client = paramiko.SSHClient()
        client.load_host_keys(str(self.known_hosts))
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
        try:
            client.connect(HOST, port=self.port, username=self.user,
                           key_filename=str(self.key_file), look_for_keys=False,
                           allow_agent=False, timeout=timeout, banner_timeout=timeout,
                           auth_timeout=timeout)
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

    def _transport(self) -> paramiko.Transport:
        transport = self._client.get_transport() if self._client else None
        if transport is None or not transport.is_active():
            raise InfrastructureError(f"SSH connection to 127.0.0.1:{self.port} is not open")
        return transport

    def run(self, command: str, *, timeout: float, check: bool = False) -> CommandResult:
        channel = self._transport().open_session(timeout=30)
        chunks: dict[str, list[bytes]] = {"out": [], "err": []}

        def drain(recv, sink: list[bytes]) -> None:
            while True:
                try:
                    data = recv(65536)
                except (OSError, EOFError, paramiko.SSHException):
                    return
                if not data:
                    return
                sink.append(data)

        readers = [threading.Thread(target=drain, args=(channel.recv, chunks["out"]), daemon=True),
                   threading.Thread(target=drain, args=(channel.recv_stderr, chunks["err"]), daemon=True)]
        channel.exec_command(command)
        for reader in readers:
            reader.start()
        deadline = time.monotonic() + timeout
        finished = channel.status_event.wait(timeout)
        for reader in readers:
            reader.join(max(0.0, deadline - time.monotonic()) + 1.0 if finished else 0.5)

        def result(code: int) -> CommandResult:
            return CommandResult(command, code,
                                 b"".join(chunks["out"]).decode("utf-8", errors="replace"),
                                 b"".join(chunks["err"]).decode("utf-8", errors="replace"))

        if not finished:
            channel.close()
            raise CommandTimeout(result(-1), timeout)
        code = channel.recv_exit_status()
        channel.close()
        res = result(code)
        if check and not res.ok:
            raise CommandFailed(res)
        return res

    def sftp(self) -> paramiko.SFTPClient:
        with self._lock:
            if self._sftp is None:
                self._sftp = self._client.open_sftp() if self._client else None
                if self._sftp is None:
                    raise InfrastructureError(f"SSH connection to 127.0.0.1:{self.port} is not open")
            return self._sftp

    def put(self, local_path: str, remote_path: str) -> None:
        self.sftp().put(local_path, remote_path)

    def get(self, remote_path: str, local_path: str) -> None:
        self.sftp().get(remote_path, local_path)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            if self._sftp is not None:
                self._sftp.close()
        with contextlib.suppress(Exception):
            if self._client is not None:
                self._client.close()
        self._sftp = None
        self._client = None
