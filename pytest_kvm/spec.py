"""What a test asks for: the ``guest`` marker's and ``kvm.boot``'s arguments, checked.

The keywords are the signature of :func:`guest_request`; :func:`check_arguments` holds
the marker's and ``kvm.boot``'s arguments against it first, so a misspelt keyword is a
:class:`UnknownKeyword` naming it and the closest keyword, not Python's message about a
function the user never called.
"""
from __future__ import annotations

import difflib
import inspect
import json
import os as os_module
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from .arches import arch_of
from .choices import RESET_CHOICES
from .errors import KvmError
from .families import FAMILIES, SEED_FORMATS
from .names import checked_label

MEMORY_RANGE = (64, 1024 * 1024)
CPU_RANGE = (1, 256)


class SpecError(KvmError, ValueError):
    """A guest request with a bad value; the message names the keyword."""


class UnknownKeyword(SpecError, TypeError):
    """A keyword (or positional argument) a guest request does not take; also a
    ``TypeError``, what Python raises for a bad call."""


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
    share: tuple["Share", ...] = ()
    artifacts: tuple[str, ...] = ()
    golden: Any = None  # a user golden (guest.freeze(), kvm.golden()), or a fixture's name
    networks: tuple[str, ...] = ()  # private networks shared with the session's other guests
    name: str | None = None  # the guest's name on its networks (hosts files)
    arch: str | None = None  # the CPU architecture, Debian's name (None: --kvm-arch's first)


@dataclass(frozen=True)
class Share:
    """A host directory mounted in the guest at *mount_point* (read-only unless *writable*)."""

    mount_point: str
    source: Path
    writable: bool = False


def _shares(share: Any) -> tuple[Share, ...]:
    """``{"/mnt/src": "."}`` (read-only) or ``{"/mnt/out": {"path": "out", "writable": True}}``;
    relative host paths are relative to the current directory (where pytest was started)."""
    if not isinstance(share, Mapping):
        raise SpecError(f"share must be a dict {{guest mount point: host directory}}, not "
                        f"{type(share).__name__}")
    shares = []
    for mount_point, value in share.items():
        if not isinstance(mount_point, str) or not PurePosixPath(mount_point).is_absolute():
            raise SpecError(f"share: the guest mount point {mount_point!r} must be an absolute path")
        writable = False
        if isinstance(value, Mapping):
            unknown = set(value) - {"path", "writable"}
            if unknown or "path" not in value:
                raise SpecError(f"share {mount_point}: give {{'path': DIR, 'writable': bool}}, not "
                                f"{dict(value)!r}")
            writable = value.get("writable", False)
            if not isinstance(writable, bool):
                raise SpecError(f"share {mount_point}: writable must be True or False")
            value = value["path"]
        if not isinstance(value, (str, os_module.PathLike)):
            raise SpecError(f"share {mount_point}: the host directory must be a path, not "
                            f"{type(value).__name__}")
        source = Path(value).resolve()
        if not source.is_dir():
            raise SpecError(f"share {mount_point}: the host directory {source} does not exist "
                            f"or is not a directory")
        shares.append(Share(mount_point, source, writable))
    return tuple(shares)


def _paths(name: str, value: Any) -> tuple[str, ...]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) \
            or not all(isinstance(v, str) and v for v in value):
        raise SpecError(f"{name} must be a list of paths in the guest, not {value!r}")
    return tuple(value)


def _networks(value: Any) -> tuple[str, ...]:
    """``("lan",)`` (a single name may be given as a string); each name a host name label."""
    names = (value,) if isinstance(value, str) else value
    if not isinstance(names, Sequence) or isinstance(names, bytes):
        raise SpecError(f"networks must be a list of network names, not {value!r}")
    try:
        names = tuple(checked_label("network name", n) for n in names)
    except KvmError as exc:
        raise SpecError(f"networks: {exc}") from None
    if len(set(names)) != len(names):
        raise SpecError(f"networks: a network is named twice in {list(names)}")
    return names


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
                  unique: bool = False, tpm: bool | None = None,
                  share: Mapping[str, Any] | None = None,
                  artifacts: Sequence[str] = (), golden: Any = None,
                  networks: Sequence[str] = (), name: str | None = None,
                  arch: str | None = None) -> GuestRequest:
    """Check and normalise the arguments of ``kvm.boot``, ``guest_factory`` and the ``guest``
    marker (the one list of those keywords: see :data:`KEYWORDS`)."""
    if os is not None and (not isinstance(os, str) or not os):
        raise SpecError(f"os must be a non-empty string, not {os!r}")
    if memory_mib is not None:
        _int_in("memory_mib", memory_mib, *MEMORY_RANGE)
    if cpus is not None:
        _int_in("cpus", cpus, *CPU_RANGE)
    if user_data is not None and not isinstance(user_data, Mapping):
        raise SpecError(f"user_data must be a dict (merged into the plugin's cloud-config), "
                        f"not {type(user_data).__name__}")
    if user_data:
        _check_serialisable(user_data)
    if image is not None and not isinstance(image, (str, Path)):
        raise SpecError(f"image must be a path, not {type(image).__name__}")
    if boot_timeout is not None and (isinstance(boot_timeout, bool)
                                     or not isinstance(boot_timeout, (int, float)) or boot_timeout <= 0):
        raise SpecError(f"boot_timeout must be a positive number of seconds, not {boot_timeout!r}")
    if reset is not None and (not isinstance(reset, str) or reset not in RESET_CHOICES):
        raise SpecError(f"reset must be one of {', '.join(RESET_CHOICES)}, not {reset!r}")
    if family is not None and (not isinstance(family, str) or family not in FAMILIES):
        raise SpecError(f"family must be one of {', '.join(sorted(FAMILIES))}, not {family!r}")
    if seed is not None and (not isinstance(seed, str) or seed not in SEED_FORMATS):
        raise SpecError(f"seed must be one of {', '.join(SEED_FORMATS)}, not {seed!r}")
    if not isinstance(unique, bool):
        raise SpecError(f"unique must be True or False, not {unique!r}")
    if tpm is not None and not isinstance(tpm, bool):
        raise SpecError(f"tpm must be True, False or None (the family's default), not {tpm!r}")
    if golden is not None:
        from .guest.golden import Golden  # noqa: PLC0415 - it loads winrm and PyYAML: only for golden=
        if not isinstance(golden, (str, Golden)):
            raise SpecError(f"golden must be what guest.freeze() or kvm.golden() returned, or "
                            f"(in the guest marker) the name of a fixture returning it, not "
                            f"{type(golden).__name__}")
        if reset == "boot":
            raise SpecError("golden= gives a warm clone of that golden: it cannot go with "
                            "reset='boot'")
    if name is not None:
        try:
            checked_label("name", name)
        except KvmError as exc:
            raise SpecError(str(exc)) from None
    if arch is not None:
        if not isinstance(arch, str):
            raise SpecError(f"arch must be an architecture's name (arm64 or aarch64, ...), "
                            f"not {arch!r}")
        try:
            arch = arch_of(arch).debian
        except KvmError as exc:
            raise SpecError(f"arch: {exc}") from None
    return GuestRequest(os=os, memory_mib=memory_mib, cpus=cpus, user_data=user_data,
                        image=Path(image) if image is not None else None,
                        boot_timeout=float(boot_timeout) if boot_timeout is not None else None,
                        reset=reset, family=family, seed=seed, unique=unique, tpm=tpm,
                        share=_shares(share) if share is not None else (),
                        artifacts=_paths("artifacts", artifacts), golden=golden,
                        networks=_networks(networks), name=name, arch=arch)


def guest_marker(*args: Any, **kwargs: Any) -> GuestRequest:
    """``@pytest.mark.guest(...)``: the keywords of :func:`guest_request`, checked."""
    check_arguments(args, kwargs)
    return guest_request(*args, **kwargs)


_NAMES = tuple(inspect.signature(guest_request).parameters)

#: ``name=default`` of every keyword a guest request takes, for the marker's and fixtures' docs
KEYWORDS = ", ".join(f"{p.name}={p.default!r}" if p.default is not p.empty else p.name
                     for p in inspect.signature(guest_request).parameters.values())


def check_arguments(args: Sequence[Any], kwargs: Mapping[str, Any]) -> None:
    """Raise :class:`UnknownKeyword` unless ``guest_request(*args, **kwargs)`` binds: one
    positional argument at most (``os``), and only its keywords (the closest one is named)."""
    if len(args) > 1:
        raise UnknownKeyword(f"takes one positional argument (os), not {len(args)}: "
                             f"give the others as keywords ({', '.join(_NAMES[1:])})")
    if args and "os" in kwargs:
        raise UnknownKeyword("os is given twice: as the positional argument and as os=")
    for name in kwargs:
        if name not in _NAMES:
            close = difflib.get_close_matches(name, _NAMES, n=1)
            hint = f"did you mean {close[0]}?" if close else f"the keywords are {', '.join(_NAMES)}"
            raise UnknownKeyword(f"unknown keyword {name!r} ({hint})")


def _check_serialisable(user_data: Mapping[str, Any]) -> None:
    """Raise :class:`SpecError` naming the first value of *user_data* that the seed's
    cloud-config (YAML) cannot hold, by its key path."""
    import yaml  # noqa: PLC0415 - only for a request with user_data

    def dumps(value: Any) -> bool:
        try:
            yaml.safe_dump(value)
        except (yaml.YAMLError, TypeError, ValueError):
            return False
        return True

    def find(value: Any, path: str) -> str:
        if isinstance(value, Mapping):
            for key, child in value.items():
                if not dumps(key):
                    return f"{path}: the key {key!r} is not serialisable ({type(key).__name__})"
                if not dumps(child):
                    shown = json.dumps(key) if isinstance(key, str) else repr(key)
                    return find(child, f"{path}[{shown}]")
        elif isinstance(value, (list, tuple)):
            for index, child in enumerate(value):
                if not dumps(child):
                    return find(child, f"{path}[{index}]")
        return f"{path}: not serialisable ({type(value).__name__})"

    if not dumps(dict(user_data)):
        raise SpecError(f"{find(dict(user_data), 'user_data')}; cloud-config takes strings, "
                        f"numbers, booleans, None, lists and dicts")
