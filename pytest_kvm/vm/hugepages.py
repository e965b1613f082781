"""Transparent huge pages off for the QEMU processes this process starts.

QEMU 7.2 asks for transparent huge pages (``MADV_HUGEPAGE``) on a guest's RAM. A warm
clone's restore writes the golden's non-zero pages, scattered over its RAM: each write
into a fresh 2 MiB region makes the host kernel find (under ``defrag=madvise``: compact)
and zero a whole huge page. Measured on the development machine (TCG, 2 cores, 512 MiB
guests, six idle clones at once): with huge pages 337 MiB PSS per QEMU and 3.0 s from
start to the first command; without, 306 MiB and 2.1 s (see ``docs/design/benchmarks.md``).

``prctl(PR_SET_THP_DISABLE)`` is a property of this process (not of the host) that its
children inherit across ``fork`` and ``exec``: the embedded libvirt driver forks QEMU from
this process, so QEMU gets no huge pages. This process's own memory gets none either, which
costs it nothing measurable. A libvirt daemon (``qemu:///system``, a remote host) starts
QEMU itself: its guests keep the host's setting.
"""
from __future__ import annotations

import ctypes
import sys

PR_SET_THP_DISABLE = 41  # <linux/prctl.h>
PR_GET_THP_DISABLE = 42


def _prctl(option: int, value: int = 0) -> int:
    libc = ctypes.CDLL(None, use_errno=True)
    return libc.prctl(option, value, 0, 0, 0)


def set_huge_pages(enabled: bool) -> bool:
    """Transparent huge pages for the QEMU processes started from now on: off (or back on);
    False where the kernel has no such switch (not Linux, or before 3.15)."""
    if not sys.platform.startswith("linux"):
        return False
    return _prctl(PR_SET_THP_DISABLE, 0 if enabled else 1) == 0


def huge_pages_enabled() -> bool:
    """Whether processes started from here may get transparent huge pages."""
    if not sys.platform.startswith("linux"):
        return True
    return _prctl(PR_GET_THP_DISABLE) != 1
