"""Choosing hardware acceleration: KVM when it really works, otherwise TCG, and why."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ..choices import ACCEL_CHOICES
from ..errors import HypervisorError


@dataclass(frozen=True)
class Accel:
    name: str  # "kvm" or "tcg"
    reason: str

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
    vendors = [m for m in ("kvm_intel", "kvm_amd") if (sys_module / m).exists()]
    if not vendors and (sys_module / "kvm_pvm").exists():
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


def choose_remote_accel(requested: str, host_offers_kvm: bool, host: str) -> Accel:
    """The choice for a remote host (``--kvm-host``), from what its libvirt offers."""
    if requested == "tcg":
        return Accel("tcg", "requested (--kvm-accel tcg)")
    if host_offers_kvm:
        return Accel("kvm", f"{host} offers KVM")
    if requested == "kvm":
        raise HypervisorError(f"--kvm-accel kvm was requested but host {host} offers no KVM "
                              f"(libvirt's capabilities list no kvm domain type for x86_64)")
    return Accel("tcg", f"{host} offers no KVM")
