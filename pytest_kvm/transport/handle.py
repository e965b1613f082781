"""What a guest's command handle offers, whatever carries it (SSH, or WinRM for Windows).

:class:`~pytest_kvm.guest.facade.Guest` talks to its guest only through this interface and
never asks which transport it has: :class:`~pytest_kvm.transport.ssh.SshClient` and
:class:`~pytest_kvm.transport.winrm.WinRMClient` implement it, and what a transport cannot do
(a directory tree over WinRM, PowerShell over SSH, an ssh command line for WinRM)
raises :class:`~pytest_kvm.errors.KvmError` saying what to do instead.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from ..output import LineLog
from ..result import CommandResult


class Handle(Protocol):
    """A logged-in command handle of one guest on a 127.0.0.1 forward."""

    port: int
    user: str

    @property
    def active(self) -> bool:
        """Whether the connection is usable (False once it dropped or was closed)."""

    def run(self, command: str, *, timeout: float, check: bool = False,
            input: bytes | Callable[[BinaryIO], Any] | None = None,
            log: LineLog | None = None) -> CommandResult:
        """Run *command* (already wrapped for the guest's shell); a connection lost on the
        way is an :class:`~pytest_kvm.errors.InfrastructureError`, never an exit code."""

    def run_ps(self, script: str, *, timeout: float, check: bool = False) -> CommandResult:
        """Run a PowerShell *script*."""

    def put(self, local: Path, remote: str, *, exclude: Sequence[str] = (),
            timeout: float) -> None:
        """Copy a file, or a directory tree's contents, into the guest."""

    def get(self, remote: str, local: Path, *, exclude: Sequence[str] = (), timeout: float,
            as_root: Callable[[str], str] | None = None, max_bytes: int | None = None) -> None:
        """Copy a file, or a directory tree's contents, out of the guest; *as_root* wraps a
        command to run with root rights (reading what the login user may not); *max_bytes*:
        stop with :class:`~.archive.OverLimit` once more than that came."""

    def access(self) -> str:
        """How a person reaches the guest (printed for kept guests)."""

    def ssh_command(self) -> list[str]:
        """An OpenSSH argv logging in as the handle does."""

    def close(self) -> None:
        """Close the connection (idempotent)."""
