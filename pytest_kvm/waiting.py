"""Bounded, phased waits that watch the guest and report what they saw last."""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from .errors import BootTimeout, GuestCrashed

T = TypeVar("T")

PANIC_MARKERS = ("Kernel panic - not syncing", "end Kernel panic")


@dataclass
class Timeline:
    """Each phase of a guest's life and how long it took (seconds)."""

    entries: list[tuple[str, float]] = field(default_factory=list)

    def add(self, phase: str, seconds: float) -> None:
        self.entries.append((phase, round(seconds, 3)))

    def format(self) -> str:
        return "\n".join(f"{phase:<14} {seconds:8.2f} s" for phase, seconds in self.entries)


@dataclass(frozen=True)
class Limit:
    """A phase's time limit and where it came from (said in the error)."""

    seconds: float
    source: str


class Retry(Exception):
    """Raised by an attempt that saw something worth reporting and wants another try."""


class PhaseWaiter:
    """Runs boot phases one after the other, each under its own time limit.

    Before every attempt it asks *crash_check* whether the guest is still alive
    (a panic, a reboot loop or a dead domain fails at once, not at the timeout).
    """

    def __init__(self, *, guest_name: str, crash_check: Callable[[], str | None],
                 console_tail: Callable[[], str], timeline: Timeline) -> None:
        self.guest_name = guest_name
        self.crash_check = crash_check
        self.console_tail = console_tail
        self.timeline = timeline
        self.started = time.monotonic()

    def phase(self, name: str, attempt: Callable[[float], T | None], limit: Limit, *,
              interval: float = 0.5) -> T:
        """Call ``attempt(remaining_seconds)`` until it returns non-None; expected failures
        are raised as :class:`Retry` (or OSError/EOFError) and remembered as "last seen"."""
        phase_start = time.monotonic()
        last_seen = "nothing yet"
        while True:
            problem = self.crash_check()
            elapsed = time.monotonic() - self.started
            if problem:
                raise GuestCrashed(
                    f"guest {self.guest_name} {problem} during phase {name!r} "
                    f"after {elapsed:.1f} s", phase=name, elapsed=elapsed, timeout=limit.seconds,
                    console_tail=self.console_tail())
            remaining = limit.seconds - (time.monotonic() - phase_start)
            if remaining <= 0:
                break
            try:
                value = attempt(remaining)
            except (Retry, OSError, EOFError) as exc:
                last_seen = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
                value = None
            if value is not None:
                self.timeline.add(name, time.monotonic() - phase_start)
                return value
            time.sleep(max(0.0, min(interval, limit.seconds - (time.monotonic() - phase_start))))
        elapsed = time.monotonic() - self.started
        raise BootTimeout(
            f"guest {self.guest_name}: phase {name!r} did not finish within {limit.seconds:g} s "
            f"({limit.source}; {elapsed:.1f} s since the guest started; last seen: {last_seen}). "
            "Raise the limit with that ini option, or kvm.boot(boot_timeout=S) for the boot phase.",
            phase=name, elapsed=elapsed, timeout=limit.seconds, console_tail=self.console_tail())


def find_panic(console: str, markers: tuple[str, ...] = PANIC_MARKERS) -> str | None:
    """The console line where the kernel panicked (*markers*: its family's panic texts)."""
    for marker in markers:
        index = console.find(marker)
        if index >= 0:
            line = console[index:].splitlines()[0]
            return f"panicked ({line.strip()})"
    return None
