"""The :class:`Guest` a test holds: verbs (start, run, put, get, reboot, shutdown, freeze,
address, ...) over parts with one job each, which share one :class:`~.machine.Machine`:

- :mod:`.cold` boots it from its base image, :mod:`.clone` restores it from a golden (and
  saves goldens), :mod:`.ready` waits until it can be used,
- :mod:`.attachments` gives it shares and networks, :mod:`.power` reboots and stops it,
- its host (:mod:`pytest_kvm.hosts`) runs the domain and its transport
  (:mod:`pytest_kvm.transport`) carries commands and files; the guest asks neither which
  one it has.
"""
from __future__ import annotations

import hashlib
import inspect
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import CommandError, ConnectionLost, HypervisorError, KvmError
from ..output import LineLog, guest_logger
from ..result import CommandResult
from .. import commands
from . import clone, revert
from .attachments import Attachments
from .cold import ColdStart
from .machine import CONSOLE_TAIL_LINES, Machine
from .power import Power
from .ready import reconnect, wait_ready

if TYPE_CHECKING:
    from ..hosts.base import Host
    from ..networks.segments import Networks
    from ..transport.handle import Handle
    from .config import GuestConfig
    from .golden import Golden

STOP_NOTICED = 3.0  # seconds libvirt may take to see that a QEMU died under a command

#: ``freeze(guest, key) -> Golden``: how a session keeps a user golden
Freezer = Callable[["Guest", str], "Golden"]


def _caller_source(frame) -> str:
    """A key for a user golden made without one: the source of the function that called
    ``freeze`` (the user's fixture), so that changing the setup makes a new golden."""
    code = frame.f_code if frame is not None else None
    try:
        text = inspect.getsource(code) if code is not None else ""
    except (OSError, TypeError):
        text = ""
    name = code.co_qualname if code is not None else "?"
    return "source:" + hashlib.sha256((name + "\n" + text).encode()).hexdigest()[:16]


class Guest:
    """A running guest and its command handle (SSH, or WinRM for Windows). Leaving the
    ``with`` block destroys it. Everything that differs between OS families comes from
    ``config.family`` (see :mod:`pytest_kvm.families`)."""

    def __init__(self, host: "Host", config: "GuestConfig", *, golden: "Golden | None" = None,
                 freezer: Freezer | None = None, networks: "Networks | None" = None) -> None:
        """*host*: where it runs (:mod:`pytest_kvm.hosts`); *golden*: restore it from this
        golden instead of booting it; *freezer*: how ``freeze()`` keeps a golden, and
        *networks*: the private networks it may join (both the session's)."""
        self._m = m = Machine(host, config, golden)
        self._cold = None if golden is not None else ColdStart(m)
        if golden is not None:
            clone.use_golden(m, golden)
        self._freezer = freezer
        self._attachments = Attachments(m, self.run, networks)
        self._power = Power(m, self.run, self._attachments)
        self._destroy_lock = threading.Lock()
        self.name = config.name
        self.os = config.os
        self.family = config.family.name
        self.cloned = golden is not None
        self.kept = False
        # `cloud-init status --long` once ready (cold boots; a plain seed: seed.plain.STATUS)
        self.cloud_init_status = ""

    # -- what it is ------------------------------------------------------------------------
    @property
    def config(self) -> "GuestConfig":
        return self._m.config

    @property
    def arch(self) -> str:
        """The guest's CPU architecture, the kernel's name (what ``uname -m`` prints in it):
        ``x86_64``, ``aarch64``, ``riscv64``."""
        return self._m.config.arch.kernel

    @property
    def user(self) -> str:
        """The account the handle logs in as (the family's login user)."""
        return self._m.config.user

    @property
    def port(self) -> int:
        """The 127.0.0.1 port forwarded to the guest's SSH (WinRM on Windows) port."""
        return self._m.port

    @property
    def ssh_port(self) -> int:
        """The forwarded port (named for the SSH families; a Windows guest's is WinRM's)."""
        return self._m.port

    @property
    def known_hosts(self) -> Path:
        """The known_hosts file pinning this guest's host key on its forwarded port."""
        return self._m.known_hosts

    @property
    def login_key_file(self) -> Path:
        return self._m.login_key_file

    @property
    def credentials(self):
        """A WinRM guest's generated login (None for SSH families)."""
        return self._m.credentials

    @property
    def hostname(self) -> str:
        return self._m.hostname

    @property
    def host_public(self) -> str:
        """The guest's SSH host key (OpenSSH format), pinned for every login."""
        return self._m.host_public

    @property
    def mac(self) -> str:
        return self._m.mac

    @property
    def timeline(self):
        return self._m.timeline

    @property
    def started(self) -> threading.Event:
        """Set when start() returned or failed, or on destroy."""
        return self._m.started

    @property
    def destroyed(self) -> bool:
        return self._m.destroyed

    @property
    def powered_off(self) -> bool:
        """Shut down by :meth:`shutdown`; :meth:`start` boots it again."""
        return self._m.powered_off

    @property
    def running(self) -> bool:
        """Started, not shut down and not destroyed."""
        return self._m.running

    @property
    def golden(self) -> "Golden | None":
        """The golden this clone was restored from (None: booted cold)."""
        return self._m.golden

    @property
    def golden_name(self) -> str | None:
        """The golden this clone was restored from (its name when it booted), else None."""
        return self._m.golden.hostname if self._m.golden else None

    @property
    def networks(self) -> tuple[str, ...]:
        """The private networks this guest is on (``networks=``)."""
        return self._m.config.networks

    @property
    def network_names(self) -> tuple[str, ...]:
        """The names the other guests on its networks know it by."""
        return self._attachments.network_names

    @property
    def proxy_command(self) -> list[str] | None:
        """How OpenSSH reaches the forwarded port (an argv for ``ProxyCommand``): through the
        remote host a guest runs on (``--kvm-host``); None on this machine."""
        return self._m.host.proxy_command()

    # -- start ------------------------------------------------------------------------------
    def start(self) -> "Guest":
        """Create the overlay and seed, start the domain and wait for SSH and cloud-init.
        On any failure everything made so far is removed before the error propagates.
        Starting a started guest (a clone made ahead) does nothing; a shut-down one boots
        again."""
        m = self._m
        if m.started.is_set():
            if m.destroyed:
                raise HypervisorError(f"guest {self.name} failed to start or was destroyed")
            if m.powered_off:
                self._set_status(self._power.boot_again())
            self._connect_or_destroy()  # a clone made ahead: the shares and networks of its taker
            return self
        try:
            if self._cold is None:
                clone.start_clone(m)
                if m.config.revert:
                    revert.keep_state(m)
            else:
                self._set_status(self._cold.run())
        except BaseException:
            self.destroy()
            raise
        finally:
            m.started.set()
        self._connect_or_destroy()
        return self

    def hand_over(self, taker: "GuestConfig") -> None:
        """A clone made ahead (or reverted) goes to a test: mount the shares, join the networks
        and collect the artifacts that test asked for (in *taker*, its own config), not those
        of the test it was made for; it is reverted after this test if *taker* asks for that
        (its state to revert to is saved now if it was made for a test that did not)."""
        if self._attachments.shares_mounted or self._attachments.attachments:
            raise KvmError(f"guest {self.name} already has its shares or networks")
        m = self._m
        m.config = replace(m.config, shares=taker.shares, artifacts=taker.artifacts,
                           networks=taker.networks, network_name=taker.network_name,
                           revert=taker.revert)
        if taker.revert and not m.state_kept:
            try:
                revert.keep_state(m)
            except BaseException:
                self.destroy()
                raise

    def _connect_or_destroy(self) -> None:
        """Once the guest is up: its shares and networks, or nothing of it is left."""
        try:
            self._attachments.connect()
        except BaseException:
            self.destroy()
            raise

    def _set_status(self, status: str | None) -> None:
        if status is not None:
            self.cloud_init_status = status

    def address(self, network: str, version: int = 4) -> str:
        """This guest's address on *network*: IPv4 (``169.254.N.H``), or IPv6 with
        ``version=6`` (``fdXX:...:N::H``)."""
        return self._attachments.address(network, version)

    # -- use ----------------------------------------------------------------------------------
    def _client(self) -> "Handle":
        """The logged-in handle; one whose connection dropped since its last use is logged
        in again once, if the guest lets us."""
        m = self._m
        if m.destroyed:
            raise HypervisorError(f"guest {self.name} was destroyed")
        if m.powered_off:
            raise HypervisorError(f"guest {self.name} is shut down: call guest.start() to boot it")
        if m.handle is None:
            raise HypervisorError(f"guest {self.name} is not running")
        if not m.handle.active:
            reconnect(m)
        return m.handle

    def run(self, command: str, *, timeout: float | None = None, check: bool = False,
            sudo: bool = False, env: Mapping[str, str] | None = None, cwd: str | None = None,
            input: str | bytes | None = None) -> CommandResult:
        """Run *command* in the guest and return its :class:`CommandResult`.

        ``sudo=True`` runs it as root through the family's privilege tool (``sudo``,
        ``doas``; a Windows login is an administrator already); ``env`` adds environment
        variables and ``cwd`` sets the working directory, both quoted for the family's shell;
        ``input`` (str or bytes) is fed to its stdin. ``check=True`` raises
        :class:`CommandFailed` on a non-zero exit. Its output is logged line by line to the
        logger ``pytest_kvm.guest.<name>`` as it arrives. A dropped connection or a guest
        that stopped is a :class:`ConnectionLost`, never an exit code."""
        fam = self._m.config.family
        wrapped = commands.wrap(command, shell=fam.shell, privilege=fam.privilege, sudo=sudo,
                                env=env, cwd=cwd)
        data = input.encode("utf-8") if isinstance(input, str) else input
        logger = guest_logger(self.name)
        logger.info("$ %s%s", command, commands.describe_options(sudo=sudo, env=env, cwd=cwd))
        return self._use(command, lambda client: client.run(
            wrapped, timeout=timeout or self._m.config.command_timeout, check=check, input=data,
            log=LineLog(logger)))

    def _use(self, what: str, call: Callable[["Handle"], Any]) -> Any:
        """Call *call* with the handle; a lost connection is explained by the domain's state."""
        client = self._client()
        m = self._m
        try:
            return call(client)
        except ConnectionLost as exc:
            if m.destroyed or m.dom is None or not m.running_after(STOP_NOTICED):
                raise ConnectionLost(
                    f"guest {self.name} stopped while the plugin ran {what!r}: its domain is no "
                    f"longer running (destroyed, powered off or crashed)",
                    console_tail=self.console_tail()) from exc
            raise ConnectionLost(
                f"lost the connection to guest {self.name} while running {what!r}; the guest "
                f"is still running: it may be rebooting or shutting down, or its sshd was "
                f"restarted ({exc})") from exc

    def run_ps(self, script: str, *, timeout: float | None = None, check: bool = False) -> CommandResult:
        """Run a PowerShell *script* (Windows guests, whose handle is WinRM)."""
        return self._use("a PowerShell script", lambda client: client.run_ps(
            script, timeout=timeout or self._m.config.command_timeout, check=check))

    def put(self, local_path: str | os.PathLike, remote_path: str, *,
            exclude: Sequence[str] = (), timeout: float | None = None) -> None:
        """Copy a local file, or a directory tree, into the guest. A file goes by SFTP (WinRM
        chunks on Windows) to *remote_path*; a directory's contents are streamed as one tar
        archive and unpacked into *remote_path* (made if missing): modes, symlinks and empty
        directories kept, paths matching an ``exclude`` glob (e.g. ``".git"``, ``"*.pyc"``)
        left out. Trees need an SSH guest."""
        local = Path(local_path)
        self._use(f"put {local} -> {remote_path}", lambda client: client.put(
            local, remote_path, exclude=exclude,
            timeout=timeout or self._m.config.command_timeout))

    def get(self, remote_path: str, local_path: str | os.PathLike, *,
            exclude: Sequence[str] = (), sudo: bool = False, timeout: float | None = None,
            max_bytes: int | None = None) -> None:
        """Copy a file, or a directory tree, from the guest to *local_path*. A directory's
        contents are streamed as one tar archive and unpacked into *local_path* (made if
        missing); a member that would land outside it (``..``, an absolute path, a link
        pointing out) is refused with :class:`~pytest_kvm.transport.archive.UnsafeArchive`.
        ``sudo=True`` reads as root (files the login user may not read). *max_bytes*: stop
        with :class:`~pytest_kvm.transport.archive.OverLimit` once more than that came."""
        local = Path(local_path)
        self._use(f"get {remote_path} -> {local}", lambda client: client.get(
            remote_path, local, exclude=exclude,
            timeout=timeout or self._m.config.command_timeout,
            as_root=self._as_root if sudo else None, max_bytes=max_bytes))

    def sync_shares(self, *, last: bool = False) -> None:
        """Bring what the guest wrote to its writable shares back to their directories now.
        On this machine a share *is* the directory: nothing to do. On a remote host
        (``--kvm-host``) the guest writes to a copy on the host, which comes back by itself
        when the test ends and when the guest is destroyed; call this to see the guest's
        writes earlier (its file systems are synced first). Files it deleted are deleted
        here too (see :mod:`pytest_kvm.hosts.shares`). *last*: the session's, as the test
        ends: nothing more comes back when the guest is destroyed."""
        m = self._m
        if not (m.host.copies_shares and any(s.writable for s in m.config.shares)):
            return
        if m.running and self._attachments.shares_mounted:
            try:  # virtiofs writes reach the host as they are made; this flushes mmap'ed ones
                self.run("sync", timeout=120)
            except (ConnectionLost, CommandError) as exc:  # a guest its test broke: what is there
                m.log("sync in the guest before copying its shares back failed: %s", exc)
        m.host.sync_shares(m.name, last=last)

    def _as_root(self, command: str) -> str:
        fam = self._m.config.family
        return commands.wrap(command, shell=fam.shell, privilege=fam.privilege, sudo=True)

    def testinfra(self):
        """A `testinfra <https://testinfra.readthedocs.io>`_ host on this guest (SSH with the
        pinned host key and the session's key; needs ``pip install 'pytest-kvm[testinfra]'``)."""
        from ..transport import integrations  # noqa: PLC0415
        return integrations.testinfra_host(self)

    def console_log(self) -> str:
        """Everything the guest wrote on its serial console so far (for a clone: its
        golden's boot, then what the clone wrote after the restore)."""
        return self._m.console_log()

    def console_tail(self, lines: int = CONSOLE_TAIL_LINES) -> str:
        return self._m.console_tail(lines)

    def access(self) -> str:
        """How a person reaches this guest (printed for kept guests): an ssh command line, or
        for WinRM the endpoint, user and the file holding the generated password."""
        return (self._m.handle or self._m.login().handle()).access()

    def ssh_command(self) -> list[str]:
        """An OpenSSH argv that logs in with the same key and the pinned host key."""
        return (self._m.handle or self._m.login().handle()).ssh_command()

    # -- power ----------------------------------------------------------------------------------
    def boot_id(self) -> str:
        """What identifies the guest's current boot (Linux: the kernel's boot_id)."""
        return self._power.boot_id()

    def reboot(self, timeout: float | None = None) -> "Guest":
        """Reboot through the family's command (libvirt's ACPI reboot where it has none),
        wait until the guest runs a new boot and log in again with the pinned host key.
        The phases go to the timeline; a guest that never comes back is a
        :class:`BootTimeout` with the console tail. *timeout*: each phase's limit (default:
        the boot limits). Shares are mounted again."""
        self._set_status(self._power.restart("reboot", self._m.config.family.reboot_command,
                                             timeout))
        return self

    def reset(self, timeout: float | None = None) -> "Guest":
        """A hard reset (the reset button: no clean shutdown), then like :meth:`reboot`."""
        self._set_status(self._power.restart("reset", None, timeout))
        return self

    def revert(self) -> "Guest":
        """Back, in the same QEMU, to the state this guest had when it first came up: its
        memory and disk, then a new login, the clock and a reseeded random number generator.
        Only for guests made with ``reset="revert"`` (the plugin reverts them between tests
        itself)."""
        if not self._m.state_kept:
            raise KvmError(f"guest {self.name} keeps no state to revert to: only guests made "
                           f"with reset='revert' do")
        revert.revert(self._m)
        return self

    def wait_ready(self, timeout: float | None = None) -> "Guest":
        """Wait until the guest can be logged into again (after a reboot the test started
        itself, or sshd restarted) and its init is done; the handle then works again."""
        m = self._m
        if m.powered_off or m.destroyed:
            raise HypervisorError(f"guest {self.name} is not running"
                                  + ("; call guest.start()" if m.powered_off else ""))
        m.close_handle()
        self._set_status(wait_ready(m, timeout))
        return self

    def shutdown(self, timeout: float | None = None) -> "Guest":
        """Power the guest off cleanly (the family's command, else ACPI) and wait until its
        domain stopped; :meth:`start` boots it again on the same disk. A guest that does not
        stop within *timeout* (default: the boot limit) is a :class:`BootTimeout`."""
        self._power.shutdown(timeout)
        return self

    # -- goldens ----------------------------------------------------------------------------------
    def save_as_golden(self, key: str) -> "Golden":
        """Save this ready guest's memory state and freeze its disk: it becomes a golden,
        whose directory is this guest's work directory."""
        return clone.save_as_golden(self._m, key)

    def freeze(self, key: str | None = None) -> "Golden":
        """Turn this prepared, running guest into a golden: its state is saved and its disk
        frozen, and ``kvm.boot(golden=g)``, ``guest_factory(golden=g)`` or
        ``@pytest.mark.guest(golden="fixture name")`` give each test a warm clone of it.
        With snapshots on it is kept across runs under its parent's key plus *key* (default:
        the source of the function calling ``freeze``, e.g. your fixture). The guest itself
        is gone afterwards. See also ``kvm.golden(key, prepare)``, which skips the setup
        when the snapshot exists."""
        if self._freezer is None:
            raise KvmError(f"guest {self.name} was not made by a session that can keep goldens")
        if key is None:
            key = _caller_source(inspect.currentframe().f_back)
        return self._freezer(self, key)

    def freeze_into(self, key: str, directory: Path, volume_prefix: str | None = None) -> "Golden":
        """Save this guest as a golden in *directory* (on a remote host its big files are
        volumes named *volume_prefix*), independent of the guest's own files (a clone's disk
        is flattened onto the base image: it no longer needs its golden), then remove the
        guest. Used by :meth:`freeze`."""
        golden = clone.freeze_into(self._m, key, directory, volume_prefix)
        self.destroy()
        return golden

    # -- teardown -------------------------------------------------------------------------------
    def keep(self) -> None:
        """Leave the guest running for inspection (``--kvm-keep``); close our connection only."""
        if self._m.handle is not None:
            self._m.handle.close()
        self.kept = True

    def destroy(self) -> None:
        """Destroy the domain and remove every file made for it. Idempotent; every step runs."""
        m = self._m
        with self._destroy_lock:  # the background reclaimer and the session end may race
            if m.destroyed:
                return
            t0 = time.monotonic()
            try:
                self._attachments.leave()
                m.remove()
            finally:
                m.destroyed = True
                m.started.set()  # nobody waits for a destroyed guest to come up
                m.timeline.add("destroy", time.monotonic() - t0)

    def __enter__(self) -> "Guest":
        return self

    def __exit__(self, *exc_info) -> None:
        self.destroy()

    def __repr__(self) -> str:
        return (f"<Guest {self.name} os={self.os} family={self.family} "
                f"{self._m.config.family.transport}=127.0.0.1:{self.port}>")
