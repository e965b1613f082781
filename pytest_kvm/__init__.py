"""pytest-kvm: boot real guest operating systems under QEMU/KVM for your tests.

The public names below are imported on first use (PEP 562), so ``import pytest_kvm``
and the pytest plugin load no libvirt, paramiko, pycdlib or PyYAML until a test asks
for a guest."""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

#: each public name -> the module, relative to this package, that defines it
_HOMES = {
    "BootTimeout": ".errors", "CloudInitError": ".errors", "CommandError": ".errors",
    "CommandFailed": ".errors", "CommandTimeout": ".errors", "GuestCrashed": ".errors",
    "HostKeyMismatch": ".errors", "HypervisorError": ".errors", "ImageError": ".errors",
    "InfrastructureError": ".errors", "KvmError": ".errors", "SeedError": ".errors",
    "StorageError": ".errors",
    "CommandResult": ".result",
    "Guest": ".guest.facade",
    "KvmSession": ".session.session",
    "SpecError": ".spec", "UnknownKeyword": ".spec",
}

__all__ = sorted(_HOMES)


def __getattr__(name: str):
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(home, __name__), name)


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


if TYPE_CHECKING:  # pragma: no cover - what type checkers and IDEs see
    from .errors import (BootTimeout, CloudInitError, CommandError, CommandFailed,  # noqa: F401
                         CommandTimeout, GuestCrashed, HostKeyMismatch, HypervisorError,
                         ImageError, InfrastructureError, KvmError, SeedError, StorageError)
    from .guest.facade import Guest  # noqa: F401
    from .result import CommandResult  # noqa: F401
    from .session.session import KvmSession  # noqa: F401
    from .spec import SpecError, UnknownKeyword  # noqa: F401
