"""Reverting a guest in place (``reset="revert"``): the same QEMU process goes back to the
state its clone had when it first came up, instead of a new clone being restored.

Right after a clone is up (logged in, clock set), a small root helper is started in it,
waiting on a FIFO, and QEMU saves its whole state as an internal snapshot of the clone's
own overlay (``savevm``: memory and disk; the read-only seed has none). When its test is
over, QEMU loads it back (``loadvm``), and the guest wakes: a new login, then one command
hands the helper the family's refresh (its clock set, its kernel's random number generator
reseeded: its VM generation ID has not changed, so nothing else would) and waits for its
exit status. The helper is already running in the loaded state, so the refresh costs no
``sudo`` (its PAM stack is ~0.25 s a call under TCG after the loaded state's translated
code was flushed). The guest is then handed to the next test that asks for a guest of the
same golden. A test sees the helper (``sh -c while ... /run/pytest-kvm/refresh``) in its
process list.

QEMU flushes its translated code on ``loadvm`` (TCG: the loaded memory bypassed the write
tracking that invalidates stale translations), so the guest's code is translated anew, as
in a new clone; what the revert saves is the rest: a new QEMU, its start under libvirt, the
restore into memory that must be faulted in, and the domain's teardown
(docs/design/benchmarks.md has the figures).
"""
from __future__ import annotations

import shlex
import time
from typing import TYPE_CHECKING

from ..errors import HypervisorError
from ..waiting import Timeline
from .machine import Machine
from .ready import log_in_again

if TYPE_CHECKING:
    from .config import GuestConfig

#: the internal snapshot's name in the clone's overlay
SNAPSHOT = "pytest-kvm-fresh"
#: the helper's directory in the guest: FIFOs in (a root command) and out (its exit
#: status), both the login user's alone, and the last command's errors
RUN_DIR = "/run/pytest-kvm"
WAKE, DONE, ERRORS = f"{RUN_DIR}/refresh", f"{RUN_DIR}/refreshed", f"{RUN_DIR}/refresh.err"
_HELPER_LOOP = (f'while IFS= read -r c < {WAKE}; do (eval "$c") </dev/null >/dev/null'
                f' 2>{ERRORS}; echo $? > {DONE}; done')


def why_not(config: "GuestConfig", *, shares: bool, networks: bool, unique: bool,
            tpm: bool, remote: bool = False) -> str | None:
    """Why a guest of *config* cannot be reverted in place (it is then a clone, destroyed
    after its test); None if it can."""
    if remote:
        return "not tried on remote hosts yet"
    if shares or networks:
        return "its shares or private networks are devices outside the saved state"
    if unique:
        return "a unique clone's identity is its own"
    if tpm:
        return "its TPM's state is outside QEMU's snapshot"
    if not config.native:
        return f"not tried on {config.arch.debian} guests yet"
    if config.family.reseed_command is None or config.family.name != "linux":
        return f"family {config.family.name} has no way to reseed its random number generator"
    return None


def _hmp(m: Machine, command: str, what: str) -> None:
    """QEMU's human-monitor *command* (``savevm``, ``loadvm``: QMP has only jobs for them);
    any output is QEMU's error."""
    reply = m.host.monitor(m.dom, {"execute": "human-monitor-command",
                                   "arguments": {"command-line": command}}, what)
    said = str(reply.get("return", "")).strip()
    if said:
        raise HypervisorError(f"{what} ({m.name}): QEMU said {said}")


def helper_command(user: str) -> str:
    """The root command (before the privilege tool) starting the helper, detached, that
    runs each line *user* writes to its FIFO as root and answers with its exit status."""
    return (f"rm -rf {RUN_DIR} && mkdir -m 0755 {RUN_DIR} && mkfifo -m 0600 {WAKE} {DONE}"
            f" && chown {shlex.quote(user)} {WAKE} {DONE}"
            f" && {{ setsid sh -c {shlex.quote(_HELPER_LOOP)} </dev/null >/dev/null 2>&1 & }}")


def wake_command(root_command: str) -> str:
    """The login user's command having the helper run *root_command*; it fails as the root
    command failed, with its errors."""
    return (f"printf '%s\\n' {shlex.quote(root_command)} > {WAKE} && read -r s < {DONE}"
            f' && {{ [ "$s" = 0 ] || {{ cat {ERRORS} >&2; exit "$s"; }}; }}')


def keep_state(m: Machine) -> None:
    """Start the helper in *m*'s running clone, then save the clone as it is now, to
    revert to after each test."""
    t0 = time.monotonic()
    family = m.config.family
    m.handle.run(family.as_root(helper_command(m.config.user)), timeout=60, check=True)
    m.timeline.add("revert helper", time.monotonic() - t0)
    t0 = time.monotonic()
    _hmp(m, f"savevm {SNAPSHOT}", "saving the guest's state to revert to")
    m.state_kept = True
    m.timeline.add("savevm", time.monotonic() - t0)


def revert(m: Machine) -> None:
    """Load *m*'s kept state back in its running QEMU, then wake it (login; clock and random
    seed in one command, run by the helper). A fresh timeline tells the next test what its
    guest's set-up took."""
    m.check_running("revert")
    m.timeline = Timeline()
    m.close_handle()  # the guest's end of it is gone with the loaded state
    t0 = time.monotonic()
    _hmp(m, f"loadvm {SNAPSHOT}", "reverting the guest in place")
    m.timeline.add("loadvm", time.monotonic() - t0)
    log_in_again(m, m.config.limits["ssh"])
    # clock and random seed in one root command: the guest agent takes 0.6-1.6 s to answer
    # after a loadvm, and the family's reseed is a second sudo otherwise
    t0 = time.monotonic()
    m.handle.run(wake_command(m.config.family.refresh_command_for(time.time())),
                 timeout=60, check=True)
    m.timeline.add("clock+reseed", time.monotonic() - t0)
