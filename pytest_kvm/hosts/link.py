"""The plugin's own SSH connection to a remote hypervisor host (``--kvm-host``).

libvirt's remote protocol carries the API calls; this connection carries what
libvirt has no API for: tunnels to the guests' forwarded ports (which listen on
the host's 127.0.0.1 only), short commands on the host (hashing an uploaded
image) and tar streams to and from a command there (the copies of shares, see
:mod:`.shares`). It logs in like libvirt's ``qemu+ssh`` transport does, with the URI's
user, port, ``keyfile`` and ``known_hosts``, and trusts only a host key already
in that known_hosts file. paramiko's errors become ours here.
"""
from __future__ import annotations

import contextlib
import shlex
import socket
import threading
import time
from collections.abc import Callable
from typing import Any, BinaryIO

import paramiko

from ..errors import HypervisorError
from .uris import HostUri
from ..transport.ssh import HOST, PARAMIKO_LOG, ChannelWriter

CONNECT_TIMEOUT = 30.0


class HostLink:
    """One authenticated SSH connection to a hypervisor host."""

    def __init__(self, host: HostUri) -> None:
        self.host = host
        self._client: paramiko.SSHClient | None = None
        self._lock = threading.Lock()

    def connect(self, timeout: float = CONNECT_TIMEOUT) -> "HostLink":
        host = self.host
        client = paramiko.SSHClient()
        client.set_log_channel(PARAMIKO_LOG)
        if host.known_hosts.is_file():
            client.load_host_keys(str(host.known_hosts))
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
        own_key = host.key_file is not None
        try:
            client.connect(host.hostname, port=host.port, username=host.user,
                           key_filename=str(host.key_file) if own_key else None,
                           look_for_keys=not own_key, allow_agent=not own_key, timeout=timeout,
                           banner_timeout=timeout, auth_timeout=timeout)
        except paramiko.BadHostKeyException as exc:
            client.close()
            raise HypervisorError(
                f"host {host.label} presented a host key other than the one in {host.known_hosts}; "
                f"refusing to connect") from exc
        except paramiko.SSHException as exc:
            client.close()
            if "not found in known_hosts" in str(exc):
                raise HypervisorError(
                    f"host {host.label}: its host key is not in {host.known_hosts}; add it "
                    f"(ssh -p {host.port} {host.user}@{host.hostname} once, or ssh-keyscan) or "
                    f"name another file with known_hosts= in the URI") from exc
            raise HypervisorError(f"cannot log in to host {host.label}: {exc}") from exc
        except OSError as exc:
            client.close()
            raise HypervisorError(f"host {host.label} is unreachable over SSH: {exc}") from exc
        transport = client.get_transport()
        assert transport is not None
        transport.set_keepalive(15)
        self._client = client
        return self

    def _transport(self) -> paramiko.Transport:
        transport = self._client.get_transport() if self._client else None
        if transport is None or not transport.is_active():
            raise HypervisorError(f"the SSH connection to host {self.host.label} is closed")
        return transport

    def tunnel(self, port: int, timeout: float) -> paramiko.Channel:
        """A stream to ``127.0.0.1:port`` as seen on the host (a guest's forward)."""
        try:
            return self._transport().open_channel("direct-tcpip", (HOST, port), (HOST, 0),
                                                  timeout=timeout)
        except (paramiko.SSHException, OSError, EOFError) as exc:
            raise ConnectionRefusedError(
                f"host {self.host.label} could not connect to its 127.0.0.1:{port}: {exc}") from exc

    def run(self, argv: list[str], timeout: float = 600.0) -> str:
        """Run *argv* on the host; its stdout, or a :class:`HypervisorError` with its stderr."""
        command = shlex.join(argv)
        try:
            channel = self._transport().open_session(timeout=30)
            channel.settimeout(timeout)
            channel.exec_command(command)
            with channel.makefile("rb") as out, channel.makefile_stderr("rb") as err:
                stdout, stderr = out.read(), err.read()
            code = channel.recv_exit_status()
        except (paramiko.SSHException, OSError, EOFError) as exc:
            raise HypervisorError(f"running {command!r} on host {self.host.label}: {exc}") from exc
        if code != 0:
            raise HypervisorError(f"{command!r} on host {self.host.label} exited {code}: "
                                  f"{stderr.decode('utf-8', 'replace').strip()}")
        return stdout.decode("utf-8", "replace")

    def stream(self, argv: list[str], *, send: Callable[[Any], Any] | None = None,
               receive: Callable[[BinaryIO], Any] | None = None, timeout: float = 3600.0) -> None:
        """Run *argv* on the host with *send* writing its stdin (a file object with
        ``write``) or *receive* reading its stdout; stdin is closed after *send* (or at
        once). stderr is drained meanwhile (a command filling it never blocks) and is what
        the :class:`HypervisorError` of a failed command says; what *send* or *receive*
        raise is raised here."""
        command = shlex.join(argv)
        errors: list[bytes] = []
        failures: list[BaseException] = []
        try:
            channel = self._transport().open_session(timeout=30)
            channel.settimeout(timeout)
            channel.exec_command(command)
        except (paramiko.SSHException, OSError, EOFError) as exc:
            raise HypervisorError(f"running {command!r} on host {self.host.label}: {exc}") from exc

        def drain_stderr() -> None:
            with contextlib.suppress(paramiko.SSHException, OSError, EOFError):
                while data := channel.recv_stderr(65536):
                    errors.append(data)

        def feed() -> None:
            try:
                if send is not None:
                    send(ChannelWriter(channel))
                channel.shutdown_write()
            except (paramiko.SSHException, OSError, EOFError):
                pass  # the command quit without reading it all: its exit status says why
            except BaseException as exc:  # noqa: BLE001 - re-raised below
                failures.append(exc)
                channel.close()

        threads = [threading.Thread(target=drain_stderr, daemon=True),
                   threading.Thread(target=feed, daemon=True)]
        for thread in threads:
            thread.start()
        try:
            with channel.makefile("rb") as out:
                if receive is not None:
                    try:
                        receive(out)
                    except BaseException as exc:  # noqa: BLE001 - after the exit status
                        failures.append(exc)
                with contextlib.suppress(paramiko.SSHException, OSError, EOFError):
                    while out.read(65536):  # the rest, so the command ends
                        pass
            for thread in threads:
                thread.join(timeout)
            code = channel.recv_exit_status()
        except (paramiko.SSHException, OSError, EOFError) as exc:
            raise HypervisorError(f"running {command!r} on host {self.host.label}: {exc}") from exc
        finally:
            channel.close()
        if code != 0:
            raise HypervisorError(f"{command!r} on host {self.host.label} exited {code}: "
                                  f"{b''.join(errors).decode('utf-8', 'replace').strip()}") \
                from (failures[0] if failures else None)
        if failures:
            raise failures[0]

    def start(self, argv: list[str], stdin: bytes = b"") -> "RemoteProcess":
        """Start the long-running *argv* on the host, *stdin* written to it; the channel
        stays open (its standard input too) until :meth:`RemoteProcess.stop`, or until this
        connection closes, whatever ends this process: the command can take its standard
        input's end of file as the sign to exit."""
        channel = None
        try:
            channel = self._transport().open_session(timeout=30)
            channel.exec_command(shlex.join(argv))
            if stdin:
                channel.sendall(stdin)
        except (paramiko.SSHException, OSError, EOFError) as exc:
            if channel is not None:
                channel.close()
            raise HypervisorError(f"starting {argv[0]!r} on host {self.host.label}: {exc}") from exc
        return RemoteProcess(channel)

    def proxy_command(self) -> list[str]:
        """An OpenSSH argv for ``ProxyCommand`` reaching the host's 127.0.0.1:%p (``-W``)."""
        host = self.host
        argv = ["ssh", "-p", str(host.port), "-o", f"UserKnownHostsFile={host.known_hosts}",
                "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes"]
        if host.key_file is not None:
            argv += ["-i", str(host.key_file), "-o", "IdentitiesOnly=yes"]
        return argv + ["-W", f"{HOST}:%p", f"{host.user}@{host.hostname}"]

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None


class RemoteProcess:
    """A command running on a host over its own SSH channel (:meth:`HostLink.start`)."""

    def __init__(self, channel: paramiko.Channel) -> None:
        self._channel = channel
        self._out = b""

    def wait_for_line(self, expected: str, timeout: float) -> bool:
        """Whether the command printed the line *expected* within *timeout* seconds (False
        once it exited or the time is up)."""
        deadline = time.monotonic() + timeout
        while (expected + "\n").encode() not in self._out:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self._channel.settimeout(left)
            try:
                chunk = self._channel.recv(4096)
            except (socket.timeout, paramiko.SSHException, OSError, EOFError):
                return False  # the time is up, or the connection broke
            if not chunk:
                return False  # it exited (or the channel closed)
            self._out += chunk
        return True

    def stop(self, timeout: float = 5.0) -> int | None:
        """End its standard input (its sign to exit), wait up to *timeout* seconds for its
        exit status, and close the channel; its status, None if it did not say in time."""
        status = None
        with contextlib.suppress(paramiko.SSHException, OSError, EOFError):
            self._channel.shutdown_write()
            deadline = time.monotonic() + timeout
            while not self._channel.exit_status_ready() and time.monotonic() < deadline \
                    and not self._channel.closed:
                time.sleep(0.02)
            if self._channel.exit_status_ready():
                status = self._channel.recv_exit_status()
        self._channel.close()
        return status

    def stderr_tail(self, limit: int = 2000) -> str:
        """What the command wrote to its standard error and nobody read yet (its last
        *limit* characters)."""
        data = b""
        with contextlib.suppress(paramiko.SSHException, OSError, EOFError):
            while self._channel.recv_stderr_ready():
                data += self._channel.recv_stderr(4096)
        return data.decode("utf-8", "replace").strip()[-limit:]
