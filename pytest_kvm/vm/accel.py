"""Choosing hardware acceleration: KVM when it really works, otherwise TCG, and why."""
from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..choices import ACCEL_CHOICES
from ..errors import HypervisorError


@dataclass(frozen=True)
class Accel:
    name: str  # "kvm" or "tcg"
    reason: str
    #: TCG although the host advertises KVM (its QEMU could not start with it): said loudly
    fallback: bool = False

    @property
    def virt_type(self) -> str:
        """libvirt's ``<domain type=...>``: TCG is type ``qemu``."""
        return "kvm" if self.name == "kvm" else "qemu"

    def describe(self) -> str:
        return f"{self.name}: {self.reason}"


def _kvm_problem(dev: Path, sys_module: Path) -> str | None:
    """Why KVM cannot be used here, or None if it can."""
    if not dev.exists():
        return "/dev/kvm missing"
    if not os.access(dev, os.R_OK | os.W_OK):
        return "/dev/kvm not accessible (add your user to group 'kvm')"
    return module_problem(m for m in KVM_MODULES if (sys_module / m).exists())


KVM_MODULES = ("kvm_intel", "kvm_amd", "kvm_pvm")


def module_problem(loaded) -> str | None:
    """Why the KVM that the loaded modules *loaded* (names of :data:`KVM_MODULES`) give
    cannot run guests, or None."""
    loaded = set(loaded)
    if "kvm_pvm" in loaded and not loaded & {"kvm_intel", "kvm_amd"}:
        # kvm_pvm is a software nested hypervisor: real guests fail or crawl on it.
        return "kvm unusable (PVM)"
    return None


def choose_accel(requested: str = "auto", *, dev: Path = Path("/dev/kvm"),
                 sys_module: Path = Path("/sys/module")) -> Accel:
    if requested not in ACCEL_CHOICES:
        raise HypervisorError(f"--kvm-accel must be one of {', '.join(ACCEL_CHOICES)}, not {requested!r}")
    if requested == "tcg":
        return Accel("tcg", "requested (--kvm-accel tcg)")
    problem = _kvm_problem(dev, sys_module)
    if problem is None:
        return Accel("kvm", "/dev/kvm usable")
    if requested == "kvm":
        raise HypervisorError(
            f"--kvm-accel kvm was requested but KVM cannot be used: {problem}. "
            "Enable virtualisation (VT-x/AMD-V) and load kvm_intel or kvm_amd, "
            "or run with --kvm-accel auto to fall back to TCG (software emulation, much slower).")
    return Accel("tcg", problem)


def choose_remote_accel(requested: str, host_offers_kvm: bool, host: str,
                        probe: Callable[[], str | None] = lambda: None,
                        modules: Callable[[], set[str]] = set) -> Accel:
    """The choice for a remote host (``--kvm-host``), from what its libvirt offers and, when
    it offers KVM, the host's KVM modules (*modules*: those of :data:`KVM_MODULES` loaded
    there; PVM alone cannot run guests, though QEMU starts on it) and whether QEMU there
    really starts with it (*probe*: see :func:`confirm_kvm`)."""
    if requested == "tcg":
        return Accel("tcg", "requested (--kvm-accel tcg)")
    if host_offers_kvm:
        accel = confirm_kvm(Accel("kvm", f"{host} offers KVM"), requested, f"host {host}", probe)
        problem = module_problem(modules()) if accel.name == "kvm" else None
        if problem is None:
            return accel
        if requested == "kvm":
            raise HypervisorError(
                f"--kvm-accel kvm was requested but host {host} cannot run KVM guests: "
                f"{problem} (its only KVM module is kvm_pvm, a software nested hypervisor); "
                f"load kvm_intel or kvm_amd there, or run with --kvm-accel auto or tcg.")
        return Accel("tcg", f"kvm advertised but unusable: {problem}", fallback=True)
    if requested == "kvm":
        raise HypervisorError(f"--kvm-accel kvm was requested but host {host} offers no KVM "
                              f"(libvirt's capabilities list no kvm domain type for x86_64)")
    return Accel("tcg", f"{host} offers no KVM")


# what QEMU says when it cannot use KVM it was given (/dev/kvm not openable by its user,
# the module unloaded, nested virtualisation off): libvirt passes its stderr on
KVM_INIT_ERRORS = ("could not access kvm kernel module", "failed to initialize kvm",
                   "kvm is not supported", "/dev/kvm", "kvm_create_vm")
PROBE_PREFIX = "pytest-kvm-probe-"


def kvm_init_error(message: str) -> str | None:
    """QEMU's line that says why it could not start with KVM, if *message* (libvirt's error
    on starting a domain) is one of those; else None."""
    lines = [line.strip() for line in message.replace("\\n", "\n").splitlines() if line.strip()]
    for line in lines:
        if any(marker in line.lower() for marker in KVM_INIT_ERRORS):
            for prefix in ("closed the monitor: ", "connecting to monitor: ",
                           "qemu-system-x86_64: "):
                line = line.rsplit(prefix, 1)[-1]
            return line[:200]
    return None


def confirm_kvm(accel: Accel, requested: str, where: str,
                probe: Callable[[], str | None]) -> Accel:
    """*accel* (KVM, as the host advertises it) if QEMU really starts with it, else TCG
    under ``auto`` or one error under ``kvm``. *probe* starts a tiny paused KVM domain and
    returns libvirt's error, or None when it started (see :func:`probe_domain_xml`)."""
    failure = probe()
    cause = kvm_init_error(failure) if failure else None
    if cause is None:
        return accel  # it started, or failed for a reason of its own: guests will say it
    if requested == "kvm":
        raise HypervisorError(
            f"--kvm-accel kvm was requested but on {where} QEMU cannot start with KVM, which "
            f"its libvirt advertises: {cause}. Give QEMU's user access to /dev/kvm there (group "
            f"kvm, or /dev/kvm mode 0666), load kvm_intel or kvm_amd, or enable nested "
            f"virtualisation; or run with --kvm-accel auto (falls back to TCG) or tcg.")
    return Accel("tcg", f"kvm advertised but unusable: {cause}", fallback=True)


def probe_domain_xml(virt_type: str = "kvm") -> str:
    """The smallest domain QEMU starts with *virt_type* (no disk, no network, 16 MiB),
    started paused and destroyed at once: whether KVM really works there, for ~1 s."""
    from .libvirtxml.domain import Domain, Os  # noqa: PLC0415 - only when a probe runs
    return Domain(virt_type=virt_type, name=PROBE_PREFIX + secrets.token_hex(4), memory=16,
                  memory_unit="MiB", vcpus=1, os=Os(type="hvm", arch="x86_64")).to_xml()
