"""The lifecycle of one guest: start (overlay, seed, domain), wait until ready, use, destroy."""
from __future__ import annotations

import contextlib
import os
import shutil
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paramiko

from . import cloudinit, seed
from .cache import writable
from .clones import Golden
from .domain import DomainSpec, domain_xml, retarget
from .errors import CloudInitError, CommandTimeout, HostKeyMismatch, HypervisorError
from .hypervisor import Hypervisor, PortInUse
from .images import BaseImage
from .keys import KeyPair, write_known_hosts
from .ssh import CommandResult, SshClient, read_banner
from .storage import create_overlay
from .waiting import Limit, PhaseWaiter, Retry, Timeline, find_panic

PORT_ATTEMPTS = 8
KERNEL_BANNER = "Linux version "
REBOOT_LOOP = 3  # kernel banners seen while waiting: one reboot may be the user's, two are a loop
CONSOLE_TAIL_LINES = 40
# exit 127 when the image has no cloud-init; else cloud-init's own status code
CLOUD_INIT_WAIT = ("command -v cloud-init >/dev/null 2>&1 || exit 127; "
                   "cloud-init status --wait >/dev/null 2>&1; rc=$?; cloud-init status --long; exit $rc")


def free_port() -> int:
    """A port free on 127.0.0.1 right now; a clash later is retried by the caller."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass(frozen=True)
class GuestConfig:
    """Everything needed to start one guest, resolved to plain values."""

    name: str
    os: str
    image: BaseImage
    memory_mib: int
    cpus: int
    virt_type: str
    limits: Mapping[str, Limit]  # "boot", "ssh", "cloud-init"
    command_timeout: float
    workdir: Path
    login_key_file: Path
    login_key: KeyPair
    metadata: Mapping[str, str]
    user_data: Mapping[str, Any] | None = None
    user: str = cloudinit.LOGIN_USER


class Guest:
    """A running guest and its SSH handle. Leaving the ``with`` block destroys it."""

    def __init__(self, hypervisor: Hypervisor, config: GuestConfig, *,
                 golden: Golden | None = None) -> None:
        self._hv = hypervisor
        self._config = config
        self._golden = golden
        self.name = config.name
        self.os = config.os
        self.ssh_port: int = 0
        self.timeline = Timeline()
        self.cloned = golden is not None
        self.host_key = golden.guest.host_key if golden else KeyPair.generate(f"{config.name}-host")
        workdir = config.workdir
        self.overlay = workdir / "disk.qcow2"
        self._seed = workdir / "seed.iso"
        self._console = workdir / "console.log"
        self._known_hosts = workdir / "known_hosts"
        self._ssh: SshClient | None = None
        self._dom = None
        self.destroyed = False
        self.kept = False

    @property
    def config(self) -> GuestConfig:
        return self._config

    @property
    def golden_name(self) -> str | None:
        return self._golden.name if self._golden else None

    # -- start ------------------------------------------------------------------
    def start(self) -> "Guest":
        """Create the overlay and seed, start the domain and wait for SSH and cloud-init.
        On any failure everything made so far is removed before the error propagates."""
        try:
            if self._golden is not None:
                self._restore_clone(self._golden)
            else:
                self._prepare()
                self._launch()
                self._wait_ready()
        except BaseException:
            self.destroy()
            raise
        return self

    def _prepare(self) -> None:
        t0 = time.monotonic()
        cfg = self._config
        data = cloudinit.user_data(cfg.login_key, self.host_key, cfg.user_data)
        user_data = cloudinit.dump_cloud_config(data)  # a bad user_data fails before any file
        with writable(cfg.workdir.parent, f"preparing guest {self.name}"):
            cfg.workdir.mkdir(mode=0o700, parents=True)
            create_overlay(cfg.image.disk, cfg.image.format, self.overlay)
            seed.write_seed(self._seed, seed.NOCLOUD_LABEL, seed.nocloud_files(
                user_data, cloudinit.meta_data(cfg.name, cfg.name)))
        self.timeline.add("prepare", time.monotonic() - t0)

    def _spec(self, port: int) -> DomainSpec:
        cfg = self._config
        return DomainSpec(
            name=cfg.name, virt_type=cfg.virt_type, memory_mib=cfg.memory_mib, cpus=cfg.cpus,
            disk=self.overlay, disk_format="qcow2", seed=self._seed, console_log=self._console,
            ssh_port=port, kernel=cfg.image.kernel, initrd=cfg.image.initrd,
            cmdline=cfg.image.cmdline, metadata=dict(cfg.metadata))

    def _start_on_free_port(self, start: Callable[[int], Any]) -> None:
        """Call ``start(port)`` (it starts the domain forwarding *port*) with free ports until
        one is not taken meanwhile by another program; then pin the host key for it."""
        for attempt in range(PORT_ATTEMPTS):
            port = free_port()
            try:
                self._dom = start(port)
            except PortInUse:
                if attempt == PORT_ATTEMPTS - 1:
                    raise
                continue
            self.ssh_port = port
            break
        write_known_hosts(self._known_hosts, "127.0.0.1", self.ssh_port, self.host_key)

    def _launch(self) -> None:
        t0 = time.monotonic()
        self._start_on_free_port(lambda port: self._hv.create(domain_xml(self._spec(port))))
        self.timeline.add("domain-start", time.monotonic() - t0)

    def _crash_check(self) -> str | None:
        try:
            console = self._console.read_bytes().decode("utf-8", errors="replace")
        except OSError:
            console = ""
        panic = find_panic(console)
        if panic:
            return panic
        boots = console.count(KERNEL_BANNER)
        if boots >= REBOOT_LOOP:
            return f"rebooted {boots - 1} times (a reboot loop)"
        if self._dom is not None and not self._hv.is_running(self._dom):
            return "stopped (its QEMU process exited)"
        return None

    def _auth_attempt(self, remaining: float) -> SshClient:
        cfg = self._config
        client = SshClient(self.ssh_port, cfg.user, cfg.login_key_file, self._known_hosts)
        try:
            client.connect(timeout=min(20.0, max(remaining, 1.0)))
        except HostKeyMismatch:
            raise
        except paramiko.SSHException as exc:
            raise Retry(f"{type(exc).__name__}: {exc}") from exc
        return client

    def _wait_ready(self) -> None:
        cfg = self._config
        waiter = PhaseWaiter(guest_name=self.name, crash_check=self._crash_check,
                             console_tail=self.console_tail, timeline=self.timeline)

        def banner(remaining: float):
            data = read_banner(self.ssh_port, timeout=min(3.0, remaining))
            if not data.startswith(b"SSH-"):
                raise Retry(f"no SSH banner yet (got {data[:40]!r})")
            return data

        waiter.phase("ssh-banner", banner, cfg.limits["boot"])
        self._ssh = waiter.phase("ssh-auth", self._auth_attempt, cfg.limits["ssh"])
        def cloud_init(remaining: float):
            try:
                return self._ssh.run(CLOUD_INIT_WAIT, timeout=max(remaining, 1.0))
            except CommandTimeout as exc:
                raise Retry("cloud-init status --wait still running") from exc

        status = waiter.phase("cloud-init", cloud_init, cfg.limits["cloud-init"])
        # 0: done; 2: done with recoverable errors (deprecations); 127: no cloud-init
        if status.exit_code not in (0, 2, 127):
            raise CloudInitError(f"guest {self.name}: cloud-init reported an error "
                                 "(often a bad user_data)", status=status.stdout + status.stderr)
        self.cloud_init_status = status.stdout

    # -- warm clones ----------------------------------------------------------------
    def save_as_golden(self, save_file: Path) -> Golden:
        """Save this ready guest's memory state and freeze its disk: it becomes a golden."""
        t0 = time.monotonic()
        if self._ssh is not None:
            self._ssh.close()
            self._ssh = None
        self._hv.save(self.name, save_file)
        self._dom = None
        self.overlay.chmod(0o400)  # frozen: clones only read it, through their own overlays
        golden = Golden(guest=self, save_file=save_file, xml=self._hv.saved_xml(save_file))
        self.timeline.add("save", time.monotonic() - t0)
        return golden

    def _restore_clone(self, golden: Golden) -> None:
        t0 = time.monotonic()
        cfg = self._config
        with writable(cfg.workdir.parent, f"preparing clone {self.name}"):
            cfg.workdir.mkdir(mode=0o700, parents=True)
            create_overlay(golden.frozen_disk, "qcow2", self.overlay)
        self.timeline.add("prepare", time.monotonic() - t0)
        t0 = time.monotonic()
        self._start_on_free_port(lambda port: self._hv.restore(golden.save_file, retarget(
            golden.xml, disk=self.overlay, console_log=self._console, ssh_port=port), golden.name))
        self.timeline.add("restore", time.monotonic() - t0)
        waiter = PhaseWaiter(guest_name=self.name, crash_check=self._crash_check,
                             console_tail=self.console_tail, timeline=self.timeline)
        self._ssh = waiter.phase("ssh-auth", self._auth_attempt, cfg.limits["ssh"], interval=0.2)
        t0 = time.monotonic()
        # the guest's clock stopped while it was saved: set it from the host's
        self._ssh.run(f"sudo -n date -u -s @{time.time():.3f} >/dev/null", timeout=60, check=True)
        self.timeline.add("clock", time.monotonic() - t0)

    # -- use ----------------------------------------------------------------------
    def _client(self) -> SshClient:
        if self._ssh is None or self.destroyed:
            raise HypervisorError(f"guest {self.name} is not running")
        return self._ssh

    def run(self, command: str, *, timeout: float | None = None, check: bool = False) -> CommandResult:
        """Run *command* with the login user's shell; see :class:`CommandResult`."""
        return self._client().run(command, timeout=timeout or self._config.command_timeout, check=check)

    def put(self, local_path: str | os.PathLike, remote_path: str) -> None:
        self._client().sftp().put(os.fspath(local_path), remote_path)

    def get(self, remote_path: str, local_path: str | os.PathLike) -> None:
        self._client().sftp().get(remote_path, os.fspath(local_path))

    def console_log(self) -> str:
        """Everything the guest wrote on its serial console so far (for a clone: its
        golden's boot, then what the clone wrote after the restore)."""
        before = self._golden.guest.console_log() if self._golden else ""
        try:
            return before + self._console.read_bytes().decode("utf-8", errors="replace")
        except OSError:
            return before

    def console_tail(self, lines: int = CONSOLE_TAIL_LINES) -> str:
        return "\n".join(self.console_log().replace("\r", "").splitlines()[-lines:])

    def ssh_command(self) -> list[str]:
        """An OpenSSH argv that logs in with the same key and the pinned host key."""
        return ["ssh", "-i", str(self._config.login_key_file), "-p", str(self.ssh_port),
                "-o", f"UserKnownHostsFile={self._known_hosts}", "-o", "GlobalKnownHostsFile=/dev/null",
                "-o", "StrictHostKeyChecking=yes", "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
                f"{self._config.user}@127.0.0.1"]

    # -- teardown -------------------------------------------------------------------
    def keep(self) -> None:
        """Leave the guest running for inspection (``--kvm-keep``); close our connection only."""
        if self._ssh is not None:
            self._ssh.close()
        self.kept = True

    def destroy(self) -> None:
        """Destroy the domain and remove every file made for it. Idempotent; every step runs."""
        if self.destroyed:
            return
        t0 = time.monotonic()
        errors: list[BaseException] = []
        if self._ssh is not None:
            self._ssh.close()
        try:
            self._hv.destroy(self.name)
        except Exception as exc:  # keep going: the files must go too
            errors.append(exc)
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(self._config.workdir)
        log = self._hv.qemu_log(self.name)
        if log is not None and not self.cloned:  # a clone shares its golden's log
            with contextlib.suppress(FileNotFoundError):
                log.unlink()
        self.destroyed = True
        if self._golden is not None:
            self._golden.in_use = False
        self.timeline.add("destroy", time.monotonic() - t0)
        if errors:
            raise errors[0]

    def __enter__(self) -> "Guest":
        return self

    def __exit__(self, *exc_info) -> None:
        self.destroy()

    def __repr__(self) -> str:
        return f"<Guest {self.name} os={self.os} ssh=127.0.0.1:{self.ssh_port}>"
