"""Logging into a guest, by transport: each transport names its readiness phases (what
is waited for, and under which of the family's limits), opens its handle and turns its
library's errors into the plugin's (:class:`~pytest_kvm.waiting.Retry`: not yet;
:class:`~pytest_kvm.errors.LoginRefused`: never). A guest asks :func:`login_for` and
never which transport it has.

- SSH: with user-mode networking QEMU accepts TCP before the guest listens, so the
  banner of sshd is waited for first (``ssh-banner``, the boot limit), then the login
  with the session's key and the pinned host key (``ssh-auth``, the ssh limit).
- WinRM: answers only once cloudbase-init made our user (``winrm``, the boot limit).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from ..errors import HostKeyMismatch, LoginRefused
from ..waiting import Retry

if TYPE_CHECKING:
    from .handle import Handle
    from .winrm import Credentials


class Phase(NamedTuple):
    name: str  # on the timeline and in a timeout's message
    attempt: Callable[[float], Any]  # (seconds left) -> a result, or raises Retry
    limit: str  # which of the guest's limits: "boot" or "ssh"


@dataclass(frozen=True)
class LoginTarget:
    """Where and as whom to log in; each transport takes what it needs."""

    port: int
    user: str
    key_file: Path
    known_hosts: Path
    credentials: "Credentials | None"
    password_file: Path
    dial: Callable[[int, float], Any]
    proxy_command: list[str] | None
    restored: bool  # a restored clone is fully up: a refused key is final at once
    name: str  # the guest's, for messages


class SshLogin:
    def __init__(self, target: LoginTarget) -> None:
        self.target = target

    def handle(self) -> "Handle":
        """A handle, not logged in yet."""
        from .ssh import SshClient  # noqa: PLC0415 - paramiko once a guest is used
        t = self.target
        return SshClient(t.port, t.user, t.key_file, t.known_hosts, dial=t.dial,
                         proxy_command=t.proxy_command)

    def phases(self) -> list[Phase]:
        return [Phase("ssh-banner", self._banner, "boot"), Phase("ssh-auth", self.login, "ssh")]

    def _banner(self, remaining: float) -> bytes:
        from .ssh import read_banner  # noqa: PLC0415
        data = read_banner(self.target.port, timeout=min(3.0, remaining), dial=self.target.dial)
        if not data.startswith(b"SSH-"):
            raise Retry(f"no SSH banner yet (got {data[:40]!r})")
        return data

    def login(self, remaining: float) -> "Handle":
        import paramiko  # noqa: PLC0415
        client = self.handle()
        try:
            client.connect(timeout=min(20.0, max(remaining, 1.0)))
        except HostKeyMismatch:
            raise
        except paramiko.AuthenticationException as exc:
            if self.target.restored:  # no key is on its way
                raise LoginRefused(f"guest {self.target.name} refused the login key "
                                   f"{self.target.key_file}: {exc}") from exc
            raise Retry(f"{type(exc).__name__}: {exc}") from exc
        except paramiko.SSHException as exc:
            raise Retry(f"{type(exc).__name__}: {exc}") from exc
        return client


class WinRMLogin:
    def __init__(self, target: LoginTarget) -> None:
        self.target = target

    def handle(self) -> "Handle":
        from .winrm import WinRMClient  # noqa: PLC0415 - pywinrm only for Windows guests
        return WinRMClient(self.target.port, self.target.credentials,
                           password_file=self.target.password_file)

    def phases(self) -> list[Phase]:
        return [Phase("winrm", self.login, "boot")]

    def login(self, remaining: float) -> "Handle":
        from .winrm import WinRMError  # noqa: PLC0415
        client = self.handle()
        try:
            client.connect(timeout=min(30.0, max(remaining, 1.0)))
        except WinRMError as exc:  # not listening yet, or our user does not exist yet
            client.close()
            raise Retry(f"{type(exc).__name__}: {exc}") from exc
        return client


LOGINS = {"ssh": SshLogin, "winrm": WinRMLogin}  # a family's ``transport`` -> its login


def login_for(transport: str, target: LoginTarget) -> SshLogin | WinRMLogin:
    return LOGINS[transport](target)
