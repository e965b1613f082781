"""Waiting until a guest is ready: logged in through its transport's phases, its init
(cloud-init; systemd's boot for a plain seed) done; after a reboot, a login that reaches the new boot; after a dropped
connection, one new login."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..errors import CloudInitError, CommandTimeout, ConnectionLost, KvmError, LoginRefused
from ..seed import plain
from ..waiting import Limit, Retry
from .machine import Machine

RECONNECT_WAIT = 20.0  # seconds one new login may take after a connection dropped


def wait_ready(m: Machine, timeout: float | None = None, *,
               new_boot_of: str | None = None) -> str | None:
    """Log in and wait for the guest's init; returns ``cloud-init status --long`` (None for
    a family whose login proves its seed was applied). *timeout* replaces each phase's
    limit; *new_boot_of*: the boot id of a boot that must be over (a reboot)."""
    cfg = m.config
    fam = cfg.family
    waiter = m.waiter()

    def limit(name: str) -> Limit:
        return cfg.limits[name] if timeout is None else Limit(timeout, f"timeout={timeout:g} given")

    handle = None
    phases = m.login().phases()
    for phase in phases:
        name, attempt, limit_name = phase
        if new_boot_of is not None and phase is phases[-1]:
            # down and up again: the whole boot's limit, not a login's
            attempt = _new_boot_login(m, attempt, new_boot_of)
            name, limit_name = "new-boot", "boot"
        handle = waiter.phase(name, attempt, limit(limit_name))
    m.handle = handle
    if cfg.plain_seed:  # no cloud-init: the boot is done when systemd says so
        state = waiter.phase("systemd", _ready(m, plain.READY_COMMAND, "systemd"),
                             limit("cloud-init"))
        return plain.STATUS + state.stdout
    if fam.ready_command is None:  # the login proves the seed was applied
        return None
    status = waiter.phase("cloud-init", _ready(m, fam.ready_command, "cloud-init"),
                          limit("cloud-init"))
    # cloud-init: 0 done; 2 done with recoverable errors (deprecations); 127 not installed
    if status.exit_code not in fam.ready_exit_codes:
        raise CloudInitError(f"guest {m.name}: cloud-init reported an error "
                             "(often a bad user_data)", status=status.stdout + status.stderr)
    return status.stdout


def _ready(m: Machine, command: str, init: str) -> Callable[[float], Any]:
    """A waiter's attempt: *command* run to its end, which is when *init* is done."""
    def attempt(remaining: float):
        try:
            return m.handle.run(command, timeout=max(remaining, 1.0))
        except CommandTimeout as exc:
            raise Retry(f"the guest's init ({init}) is still running") from exc
    return attempt


def log_in_again(m: Machine, limit: Limit) -> None:
    """The guest is up (a restored clone): only its transport's login phase."""
    name, attempt, _limit = m.login().phases()[-1]
    m.handle = m.waiter().phase(name, attempt, limit, interval=0.2)


def _new_boot_login(m: Machine, login: Callable[[float], Any],
                    old_boot: str) -> Callable[[float], Any]:
    """*login*, accepted only once the guest runs a boot other than *old_boot* (a login
    that still reached the old one, before it went down, is closed and tried again)."""
    def attempt(remaining: float):
        try:
            handle = login(remaining)
        except LoginRefused as exc:  # the old boot's sshd went away in the middle of it
            raise Retry(str(exc)) from exc
        try:
            boot = handle.run(m.config.family.boot_id_command, timeout=max(remaining, 5.0))
        except (KvmError, OSError, EOFError) as exc:
            handle.close()
            raise Retry(f"logged in, then lost the connection ({exc})") from exc
        if boot.stdout.strip() == old_boot:
            handle.close()
            raise Retry("still the boot before the reboot")
        return handle
    return attempt


def reconnect(m: Machine) -> None:
    """A connection that dropped since its last use (a reboot the test started, sshd
    restarted) is logged in again once, if the guest lets us."""
    m.close_handle()
    if m.dom is None or not m.host.is_running(m.dom):
        raise ConnectionLost(f"guest {m.name} stopped: its domain is no longer running "
                             f"(powered off from inside, destroyed or crashed)",
                             console_tail=m.console_tail())
    try:
        m.handle = m.login().phases()[-1].attempt(RECONNECT_WAIT)
    except (Retry, LoginRefused, OSError, EOFError) as exc:
        raise ConnectionLost(
            f"the connection to guest {m.name} was lost and logging in again failed "
            f"({type(exc).__name__}: {exc}). If the test rebooted it, wait for it with "
            f"guest.wait_ready() (or reboot with guest.reboot(), which waits)") from exc
