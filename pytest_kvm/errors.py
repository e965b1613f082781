"""The exception tree of pytest-kvm.

Infrastructure failures (the guest, the image, the hypervisor) are kept apart
from command failures (a command the test ran in a healthy guest).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from .result import CommandResult


class KvmError(Exception):
    """Base class of every error raised by pytest-kvm."""


# -- infrastructure -----------------------------------------------------------
class InfrastructureError(KvmError):
    """The guest or the machinery around it failed; the test itself did not."""


class HypervisorError(InfrastructureError):
    """libvirt or QEMU could not be used, or the guest's domain died."""

    def __init__(self, message: str, *, console_tail: str = "") -> None:
        self.console_tail = console_tail
        super().__init__(_with_tail(message, console_tail))


class AgentCommandFailed(HypervisorError):
    """The guest's QEMU agent answered a command with a failure: it is there, so asking
    again does not help (s390x's agent cannot set the clock without an RTC to write)."""


class ImageError(InfrastructureError):
    """A base image is missing, corrupt, unknown or could not be built."""


class StorageError(InfrastructureError):
    """The cache or work directory is read-only, not ours, or full."""


class SeedError(InfrastructureError):
    """The cloud-init seed could not be built (e.g. user_data not serialisable)."""


class BootTimeout(InfrastructureError):
    """A boot phase did not finish in time (or the guest crashed during it)."""

    def __init__(self, message: str, *, phase: str, elapsed: float, timeout: float,
                 console_tail: str = "") -> None:
        self.phase = phase
        self.elapsed = elapsed
        self.timeout = timeout
        self.console_tail = console_tail
        super().__init__(_with_tail(message, console_tail))


class GuestCrashed(BootTimeout):
    """The guest panicked or its domain stopped while a boot phase was waiting."""


class CloudInitError(InfrastructureError):
    """cloud-init in the guest reported an error (often caused by user_data)."""

    def __init__(self, message: str, *, status: str) -> None:
        self.status = status
        super().__init__(f"{message}\n--- cloud-init status ---\n{status.rstrip()}")


class HostKeyMismatch(InfrastructureError):
    """The guest presented an SSH host key other than the one pinned for it."""


class ConnectionLost(InfrastructureError):
    """The connection to the guest dropped, or the guest stopped, while the plugin used it
    (a reboot, a shutdown, sshd restarted, the domain destroyed): not the command's fault."""

    def __init__(self, message: str, *, console_tail: str = "") -> None:
        self.console_tail = console_tail
        super().__init__(_with_tail(message, console_tail))


# -- commands -----------------------------------------------------------------
class LoginRefused(InfrastructureError):
    """The guest is up but refused the plugin's login key (a clone of a golden that trusts
    another key)."""


class CommandError(KvmError):
    """A command run in the guest did not succeed."""

    def __init__(self, message: str, result: "CommandResult") -> None:
        self.result = result
        super().__init__(message)


class CommandFailed(CommandError):
    """A command run with ``check=True`` exited non-zero."""

    def __init__(self, result: "CommandResult") -> None:
        super().__init__(
            f"command {result.command!r} exited {result.exit_code}\n"
            f"--- stdout (tail) ---\n{_tail(result.stdout)}\n"
            f"--- stderr (tail) ---\n{_tail(result.stderr)}",
            result,
        )


class CommandTimeout(CommandError):
    """A command outlived its timeout; ``result`` holds what it printed so far."""

    def __init__(self, result: "CommandResult", timeout: float) -> None:
        self.timeout = timeout
        super().__init__(
            f"command {result.command!r} did not finish within {timeout:g} s "
            f"(raise it with run(..., timeout=S) or the kvm_command_timeout ini option)\n"
            f"--- stdout (tail) ---\n{_tail(result.stdout)}\n"
            f"--- stderr (tail) ---\n{_tail(result.stderr)}",
            result,
        )


def _tail(text: str, lines: int = 20) -> str:
    return "\n".join(text.rstrip("\n").splitlines()[-lines:])


def _with_tail(message: str, console_tail: str) -> str:
    if not console_tail.strip():
        return message
    return f"{message}\n--- guest console (last lines) ---\n{console_tail.rstrip()}"
