"""What a test asks for: the ``guest`` marker's and ``kvm.boot``'s arguments, checked.

The marker is validated by calling :func:`guest_marker` with its arguments, so
a misspelt keyword is a ``TypeError`` naming it, for free.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .clones import RESET_CHOICES
from .errors import KvmError
from .families import FAMILIES, SEED_FORMATS

MEMORY_RANGE = (64, 1024 * 1024)
CPU_RANGE = (1, 256)


class SpecError(KvmError, ValueError):
    """A guest request with a bad value; the message names the keyword."""


@dataclass(frozen=True)
class GuestRequest:
    os: str | None = None
    memory_mib: int | None = None
    cpus: int | None = None
    user_data: Mapping[str, Any] | None = None
    image: Path | None = None
    boot_timeout: float | None = None
    reset: str | None = None
    family: str | None = None
    seed: str | None = None
    unique: bool = False
    tpm: bool | None = None


def _int_in(name: str, value: Any, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise SpecError(f"{name} must be an integer, not {type(value).__name__} {value!r}")
    if not lo <= value <= hi:
        raise SpecError(f"{name} must be between {lo} and {hi}, not {value}")
    return value


def guest_request(os: str | None = None, *, memory_mib: int | None = None, cpus: int | None = None,
                  user_data: Mapping[str, Any] | None = None, image: str | Path | None = None,
                  boot_timeout: float | None = None, reset: str | None = None,
                  family: str | None = None, seed: str | None = None,
                  unique: bool = False, tpm: bool | None = None) -> GuestRequest:
    """Check and normalise the arguments of ``kvm.boot`` and the ``guest`` marker."""
    if os is not None and (not isinstance(os, str) or not os):
        raise SpecError(f"os must be a non-empty string, not {os!r}")
    if memory_mib is not None:
        _int_in("memory_mib", memory_mib, *MEMORY_RANGE)
    if cpus is not None:
        _int_in("cpus", cpus, *CPU_RANGE)
    if user_data is not None and not isinstance(user_data, Mapping):
        raise SpecError(f"user_data must be a dict (merged into the plugin's cloud-config), "
                        f"not {type(user_data).__name__}")
    if image is not None and not isinstance(image, (str, Path)):
        raise SpecError(f"image must be a path, not {type(image).__name__}")
    if boot_timeout is not None and (isinstance(boot_timeout, bool)
                                     or not isinstance(boot_timeout, (int, float)) or boot_timeout <= 0):
        raise SpecError(f"boot_timeout must be a positive number of seconds, not {boot_timeout!r}")
    if reset is not None and reset not in RESET_CHOICES:
        raise SpecError(f"reset must be one of {', '.join(RESET_CHOICES)}, not {reset!r}")
    if family is not None and family not in FAMILIES:
        raise SpecError(f"family must be one of {', '.join(sorted(FAMILIES))}, not {family!r}")
    if seed is not None and seed not in SEED_FORMATS:
        raise SpecError(f"seed must be one of {', '.join(SEED_FORMATS)}, not {seed!r}")
    if not isinstance(unique, bool):
        raise SpecError(f"unique must be True or False, not {unique!r}")
    if tpm is not None and not isinstance(tpm, bool):
        raise SpecError(f"tpm must be True, False or None (the family's default), not {tpm!r}")
    return GuestRequest(os=os, memory_mib=memory_mib, cpus=cpus, user_data=user_data,
                        image=Path(image) if image is not None else None,
                        boot_timeout=float(boot_timeout) if boot_timeout is not None else None,
                        reset=reset, family=family, seed=seed, unique=unique, tpm=tpm)


def guest_marker(os: str | None = None, memory_mib: int | None = None, cpus: int | None = None,
                 user_data: Mapping[str, Any] | None = None,
                 image: str | Path | None = None, reset: str | None = None,
                 family: str | None = None, seed: str | None = None,
                 unique: bool = False, tpm: bool | None = None) -> GuestRequest:
    """``@pytest.mark.guest(os=None, memory_mib=None, cpus=None, user_data=None, image=None,
    reset=None, family=None, seed=None, unique=False, tpm=None)``."""
    return guest_request(os, memory_mib=memory_mib, cpus=cpus, user_data=user_data, image=image,
                         reset=reset, family=family, seed=seed, unique=unique, tpm=tpm)
