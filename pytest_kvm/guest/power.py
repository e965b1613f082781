"""A guest's power: reboot and reset (waiting for the new boot), shutdown (waiting for the
domain to stop) and booting a shut-down guest again on its own disk."""
from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from typing import Any

from ..errors import CommandTimeout, ConnectionLost
from ..waiting import Limit
from .attachments import Attachments
from .machine import Machine
from .ready import wait_ready


class Power:
    def __init__(self, m: Machine, run: Callable[..., Any], attachments: Attachments) -> None:
        self.m = m
        self._run = run
        self._attachments = attachments

    def boot_id(self) -> str:
        """What identifies the guest's current boot (Linux: the kernel's boot_id)."""
        return self._run(self.m.config.family.boot_id_command, check=True,
                         timeout=60).stdout.strip()

    def restart(self, action: str, command: str | None, timeout: float | None) -> str | None:
        """``reboot`` through *command* (or ``reset``: libvirt's, with *command* None), then
        wait for the new boot, set a clone's clock, mount the shares, address the NICs."""
        m = self.m
        m.check_running(action)
        old_boot = self.boot_id()
        m.boots_before = m.console_boots()
        try:
            t0 = time.monotonic()
            self._ask(command, action)
            m.timeline.add(action, time.monotonic() - t0)
            status = wait_ready(m, timeout, new_boot_of=old_boot)
        finally:
            m.boots_before = 0
        if m.golden is not None:
            # as after the restore: a new boot reads the clock from the RTC of a QEMU that was
            # restored from a saved state; do not count on it matching the host's
            clock = m.config.family.clock_command_for(time.time())
            if clock is not None:
                t0 = time.monotonic()
                m.handle.run(clock, timeout=60, check=True)
                m.timeline.add("clock", time.monotonic() - t0)
        self._attachments.after_reboot()
        return status

    def shutdown(self, timeout: float | None) -> None:
        """Power off cleanly (the family's command, else ACPI) and wait until the domain stopped."""
        m = self.m
        m.check_running("shutdown")
        t0 = time.monotonic()
        self._ask(m.config.family.poweroff_command, "shutdown")
        limit = (m.config.limits["boot"] if timeout is None
                 else Limit(timeout, f"timeout={timeout:g} given"))

        def stopped(_remaining: float):
            return True if not m.host.exists(m.name) else None

        m.waiter(crash_check=lambda: None).phase("shutdown", stopped, limit)
        m.dom = None
        m.powered_off = True
        self._attachments.shares_mounted = False  # the devices went with the QEMU
        m.timeline.add("powered-off", time.monotonic() - t0)

    def boot_again(self) -> str | None:
        """Boot a shut-down guest on its own disk (same domain, a new forward port)."""
        m = self.m
        t0 = time.monotonic()
        m.boots_before = m.console_boots()
        try:
            m.start_on_free_port(m.start_domain)
            m.powered_off = False
            m.timeline.add("domain-start", time.monotonic() - t0)
            status = wait_ready(m)
        finally:
            m.boots_before = 0
        self._attachments.after_power_on()
        return status

    def _ask(self, command: str | None, action: str) -> None:
        """Ask the guest's OS to *action* (its command as root, else ACPI through libvirt);
        the connection drops meanwhile, which is expected here."""
        if command is None:
            self.m.host.power(self.m.dom, action)
        else:
            with contextlib.suppress(ConnectionLost, CommandTimeout):
                self._run(command, sudo=True, timeout=30)
        self.m.close_handle()
        self._attachments.shares_mounted = False  # a new boot has nothing mounted
