"""pytest-kvm: boot real guest operating systems under QEMU/KVM for your tests."""
from .errors import (BootTimeout, CloudInitError, CommandError, CommandFailed, CommandTimeout,
                     GuestCrashed, HostKeyMismatch, HypervisorError, ImageError,
                     InfrastructureError, KvmError, SeedError, StorageError)
from .guest.facade import Guest
from .session.session import KvmSession
from .spec import SpecError
from .result import CommandResult

__version__ = "0.1.0"

__all__ = [
    "BootTimeout", "CloudInitError", "CommandError", "CommandFailed", "CommandResult",
    "CommandTimeout", "Guest", "GuestCrashed", "HostKeyMismatch", "HypervisorError", "ImageError",
    "InfrastructureError", "KvmError", "KvmSession", "SeedError", "SpecError", "StorageError",
]
