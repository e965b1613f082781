"""Warm clones: a golden guest is booted once, its memory state saved and its disk
frozen; each clone restores that state onto a fresh overlay in well under the time
of a boot.

libvirt requires a restored domain to keep the saved name and UUID, so a golden
serves one clone at a time; a request made while its clone is in use gets a cold
boot instead (see :meth:`KvmSession.create`).
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

RESET_CHOICES = ("clone", "boot")


def golden_key(os_name: str, image: Path | None, memory_mib: int, cpus: int,
               user_data: Mapping[str, Any] | None, family: str = "", seed: str | None = None,
               tpm: bool | None = None) -> str:
    """Guests that may share a golden: same OS, image, size, user_data, family, seed, TPM."""
    blob = json.dumps([os_name, str(image) if image else None, memory_mib, cpus, user_data,
                       family, seed, tpm],
                      sort_keys=True, default=repr)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


@dataclass
class Golden:
    """A saved, stopped guest that clones are restored from."""

    guest: Any  # the Guest that was booted and saved; owns the work directory
    save_file: Path
    xml: str  # the saved domain definition
    in_use: bool = False
    clones: int = 0

    @property
    def name(self) -> str:
        return self.guest.name

    @property
    def frozen_disk(self) -> Path:
        return self.guest.overlay
