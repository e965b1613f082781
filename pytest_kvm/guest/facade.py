"""The lifecycle of one guest: start (overlay, seed, domain), wait until ready, use, destroy."""
from __future__ import annotations

import concurrent.futures
import contextlib
import hashlib
import inspect
import os
import shlex
import shutil
import socket
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import paramiko

from ..seed import cloudinit, iso as seed

from ..transport import commands, integrations
from ..files import writable
from .golden import CONSOLE_FILE, DISK_FILE, PASSWORD_FILE, SAVE_FILE, SEED_FILE, Golden
from ..vm.domain import NVRAM_FILE, CloneIdentity, DomainSpec, domain_xml, family_fields, \
    filesystem_xml, host_problems, private_nic_commands, random_mac, retarget
from ..errors import CloudInitError, CommandTimeout, ConnectionLost, HostKeyMismatch, \
    HypervisorError, KvmError, LoginRefused
from ..families import Family, family
from ..vm.hypervisor import Hypervisor, PortInUse
from ..images.store import BaseImage
from ..keys import KeyPair, write_known_hosts
from ..networks.segments import Attachment, Networks
from ..vm.saveimage import SaveImage
from ..spec import Share
from ..output import LineLog, guest_logger
from ..hosts.placement import GuestFiles, LocalPlacement, Placement
from ..transport.handle import Handle
from ..result import CommandResult
from ..transport.ssh import SshClient, read_banner
from ..images.qemu_img import flatten_onto
from ..waiting import Limit, PhaseWaiter, Retry, Timeline, find_panic
from ..transport.winrm import Credentials, WinRMClient, WinRMError

PORT_ATTEMPTS = 8
REBOOT_LOOP = 3  # kernel banners seen while waiting: one reboot may be the user's, two are a loop
CONSOLE_TAIL_LINES = 40
AGENT_WAIT = 5.0  # seconds a restored clone's guest agent may take to answer
STOP_NOTICED = 3.0  # seconds libvirt may take to see that a QEMU died under a command
RECONNECT_WAIT = 20.0  # seconds one new login may take after a connection dropped


def _count_boots(console: str, banner: str | None) -> int:
    """Kernel starts seen in *console* (0 for a family without a known banner)."""
    return console.count(banner) if banner else 0


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
    family: Family = field(default_factory=lambda: family("linux"))
    seed_format: str | None = None  # None: the family's
    unique: bool = False  # a clone gets its own hostname and machine-id
    tpm: bool | None = None  # None: the family's default
    machine_type: str | None = None  # the versioned machine type (pinned); None: the alias
    shares: tuple[Share, ...] = ()  # host directories mounted once the guest is up
    artifacts: tuple[str, ...] = ()  # guest paths collected for a failed test
    networks: tuple[str, ...] = ()  # private networks joined once the guest is up
    network_name: str | None = None  # its name on them (name=); its own name is one too
    network_mode: str = "user"  # the user-mode NIC's reach (--kvm-network): "user" or "isolated"
    # its volumes' names on a remote host (default: its name); a snapshot golden's outlive the run
    volume_prefix: str | None = None

    @property
    def user(self) -> str:
        return self.family.login_user


def domain_spec(cfg: GuestConfig, port: int, mac: str | None = None,
                files: GuestFiles | None = None) -> DomainSpec:
    """The domain of a guest booted cold from *cfg*, forwarding 127.0.0.1:*port*; *files*:
    where its disk, seed, kernel and initrd are on the hypervisor's machine (default: the
    work directory and the cached image, on this machine)."""
    direct = cfg.family.direct_kernel_boot and cfg.image.kernel is not None
    workdir = cfg.workdir
    files = files or GuestFiles(disk=workdir / DISK_FILE, seed=workdir / SEED_FILE,
                                kernel=cfg.image.kernel, initrd=cfg.image.initrd, console="file")
    return DomainSpec(
        name=cfg.name, virt_type=cfg.virt_type, memory_mib=cfg.memory_mib, cpus=cfg.cpus,
        disk=files.disk, disk_format="qcow2", seed=files.seed,
        console_log=workdir / CONSOLE_FILE, console=files.console, ssh_port=port,
        kernel=files.kernel if direct else None, initrd=files.initrd if direct else None,
        cmdline=cfg.image.cmdline if direct else "", metadata=dict(cfg.metadata),
        machine_type=cfg.machine_type, mac=mac, network_mode=cfg.network_mode,
        **family_fields(cfg.family, workdir, firmware=cfg.image.firmware, tpm=cfg.tpm))


class Guest:
    """A running guest and its command handle (SSH, or WinRM for Windows). Leaving the
    ``with`` block destroys it. Everything that differs between OS families comes from
    ``config.family`` (see :mod:`pytest_kvm.families`)."""

    def __init__(self, hypervisor: Hypervisor, config: GuestConfig, *,
                 golden: Golden | None = None, placement: Placement | None = None) -> None:
        """*placement*: where the guest's files live and how its port is reached (default:
        this machine; see :mod:`pytest_kvm.hosts.placement`)."""
        self._hv = hypervisor
        self._placement: Placement = placement or LocalPlacement(hypervisor)
        self._files: GuestFiles | None = None  # made by _prepare (cold boots)
        self._config = config
        self._golden = golden
        self.name = config.name
        self.os = config.os
        self.family = config.family.name
        self.port: int = 0  # the 127.0.0.1 port forwarded to the guest's SSH (or WinRM) port
        self.timeline = Timeline()
        self.cloud_init_status = ""  # `cloud-init status --long` once ready (cold boots)
        self.cloned = golden is not None
        if golden is None:
            self.hostname = config.name
            self._host_key = KeyPair.generate(f"{config.name}-host")
            self.host_public = self._host_key.public_openssh
            self.login_key_file = config.login_key_file
            # a WinRM login has no key: the seed creates the user with this random password
            self.credentials = (Credentials.generate(config.user)
                                if config.family.transport == "winrm" else None)
        else:
            self._use_golden(golden)
        workdir = config.workdir
        self.overlay = workdir / DISK_FILE
        self._seed = workdir / SEED_FILE
        self._console = workdir / CONSOLE_FILE
        self._known_hosts = workdir / "known_hosts"
        self.mac = random_mac() if golden is None else ""  # the NIC's; a clone's: at restore
        self._handle: Handle | None = None  # logged in once the guest is up
        self._dom = None
        self.destroyed = False
        self.kept = False
        self.started = threading.Event()  # set when start() returned or failed, or on destroy
        self._destroy_lock = threading.Lock()
        self._shares_mounted = False
        self.powered_off = False  # shut down by guest.shutdown(); guest.start() boots it again
        # (guest, key) -> Golden: the session's user goldens (set by KvmSession)
        self._freezer: Callable[[Guest, str], Golden] | None = None
        self._boots_before = 0  # kernel banners on the console before the current wait
        self._xml_for_port: Callable[[int], str] = lambda port: domain_xml(self._spec(port))
        self._networks: Networks | None = None  # the session's (set by KvmSession)
        self._attachments: list[Attachment] = []  # this guest's NICs on its networks

    def _use_golden(self, golden: Golden) -> None:
        """Become a clone of *golden*: its host key, login key and credentials; its hostname
        unless this clone asked to be unique (then its own name)."""
        self._golden = golden
        self.hostname = self.name if self._config.unique else golden.hostname
        self.host_public = golden.host_public
        self.login_key_file = golden.login_key_file
        self.credentials = golden.credentials

    @property
    def config(self) -> GuestConfig:
        return self._config

    @property
    def user(self) -> str:
        """The account the handle logs in as (the family's login user)."""
        return self._config.user

    @property
    def known_hosts(self) -> Path:
        """The known_hosts file pinning this guest's host key on its forwarded port."""
        return self._known_hosts

    @property
    def ssh_port(self) -> int:
        """The forwarded port (named for the SSH families; a Windows guest's is WinRM's)."""
        return self.port

    @property
    def golden_name(self) -> str | None:
        """The golden this clone was restored from (its name when it booted), else None."""
        return self._golden.hostname if self._golden else None

    # -- start ------------------------------------------------------------------
    def start(self) -> "Guest":
        """Create the overlay and seed, start the domain and wait for SSH and cloud-init.
        On any failure everything made so far is removed before the error propagates.
        Starting a started guest (a clone made ahead) does nothing."""
        if self.started.is_set():
            if self.destroyed:
                raise HypervisorError(f"guest {self.name} failed to start or was destroyed")
            if self.powered_off:
                self._boot_again()
            self._connect_or_destroy()  # a clone made ahead: the shares and networks of its taker
            return self
        try:
            if self._golden is not None:
                self._start_clone()
            else:
                self._prepare()
                self._launch()
                self._wait_ready()
        except BaseException:
            self.destroy()
            raise
        finally:
            self.started.set()
        self._connect_or_destroy()
        return self

    def hand_over(self, taker: GuestConfig) -> None:
        """A clone made ahead goes to a test: mount the shares, join the networks and collect
        the artifacts that test asked for (in *taker*, its own config), not those of the test
        it was made for."""
        if self._shares_mounted or self._attachments:
            raise KvmError(f"guest {self.name} already has its shares or networks")
        self._config = replace(self._config, shares=taker.shares, artifacts=taker.artifacts,
                               networks=taker.networks, network_name=taker.network_name)

    def _connect_or_destroy(self) -> None:
        """Once the guest is up: its shares and networks, or nothing of it is left."""
        try:
            self._mount_shares()
            self._join_networks()
        except BaseException:
            self.destroy()
            raise

    def _mount_shares(self) -> None:
        """Hot-plug a virtiofs device per share and mount it (read-only unless writable)."""
        if self._shares_mounted or not self._config.shares:
            return
        t0 = time.monotonic()
        template = self._config.family.share_mount_command
        assert template is not None  # the session refuses shares for such families
        for index, share in enumerate(self._config.shares):
            tag = f"pytest-kvm-{index}"
            self._hv.attach(self._dom, filesystem_xml(tag, share.source),
                            f"share {share.source} ({share.mount_point})")
            self.run(template.format(tag=shlex.quote(tag), mount_point=shlex.quote(share.mount_point),
                                     mode="rw" if share.writable else "ro"),
                     sudo=True, check=True, timeout=120)
        self._shares_mounted = True
        self.timeline.add("shares", time.monotonic() - t0)

    # -- networks -------------------------------------------------------------------
    @property
    def network_names(self) -> tuple[str, ...]:
        """The names the other guests on its networks know it by: ``name=`` (if given) and
        its own name, each also as ``NAME.NETWORK``."""
        alias = self._config.network_name
        return (alias, self.name) if alias else (self.name,)

    @property
    def networks(self) -> tuple[str, ...]:
        """The private networks this guest is on (``networks=``)."""
        return self._config.networks

    def address(self, network: str, version: int = 4) -> str:
        """This guest's address on *network*: IPv4 (``169.254.N.H``), or IPv6 with
        ``version=6`` (``fdXX:...:N::H``)."""
        if version not in (4, 6):
            raise ValueError(f"version must be 4 or 6, not {version!r}")
        for attachment in self._attachments:
            if attachment.network == network:
                return attachment.ipv4 if version == 4 else attachment.ipv6
        raise KvmError(f"guest {self.name} is not on network {network!r}; its networks: "
                       f"{', '.join(self._config.networks) or 'none'} (give networks=)")

    def _join_networks(self) -> None:
        """A NIC per network (hot-plugged), its addresses set, and every guest on those
        networks told the names of the others (hosts files)."""
        names = self._config.networks
        if not names or self._attachments:
            return
        if self._networks is None:
            raise KvmError(f"guest {self.name} was not made by a session: it cannot join networks")
        t0 = time.monotonic()
        self._attachments = self._networks.join(self, names)
        self._plug_networks()
        for neighbour in self._networks.neighbours(self):
            if neighbour is self or neighbour.running:
                neighbour._write_hosts()
        self.timeline.add("networks", time.monotonic() - t0)

    def _plug_networks(self) -> None:
        """Hot-plug this guest's private NICs into its (new) QEMU and configure them."""
        fam = self._config.family
        for attachment in self._attachments:
            for command in private_nic_commands(attachment.index, attachment.mac, fam.nic_model,
                                                attachment.socket, attachment.hub):
                self._hv.monitor(self._dom, command, f"plugging a NIC on network {attachment.network}")
        self._configure_networks()

    def _configure_networks(self) -> None:
        """Set the addresses of the private NICs (after a plug, or a reboot lost them)."""
        template = self._config.family.network_command
        assert template is not None  # the session refuses networks for such families
        for a in self._attachments:
            self.run(template.format(mac=shlex.quote(a.mac), ipv4=a.ipv4, prefix4=a.prefix4,
                                     ipv6=a.ipv6, prefix6=a.prefix6, scope4=a.scope4,
                                     scope6=a.scope6, mtu=a.mtu),
                     sudo=True, check=True, timeout=120)

    def _write_hosts(self) -> None:
        lines = self._networks.hosts_for(self)
        self.run(self._config.family.hosts_command.format(lines=" ".join(map(shlex.quote, lines))),
                 sudo=True, check=True, timeout=60)

    @property
    def running(self) -> bool:
        """Started, not shut down and not destroyed."""
        return self._dom is not None and not self.destroyed and not self.powered_off

    def _prepare(self) -> None:
        t0 = time.monotonic()
        cfg = self._config
        fam = cfg.family
        # a bad user_data fails here, before any file is made
        user_data = cloudinit.render_user_data(
            fam, login_key=cfg.login_key, host_key=self._host_key,
            password=self.credentials.password if self.credentials else None, extra=cfg.user_data)
        guest_seed = seed.build_seed(cfg.seed_format or fam.seed_format, instance_id=cfg.name,
                                     hostname=cfg.name, user_data=user_data,
                                     public_keys={"pytest-kvm": cfg.login_key.public_openssh})
        problems = host_problems(self._spec(0))
        if problems:
            raise HypervisorError(f"cannot boot {self.name} ({cfg.os}, family {fam.name}): "
                                  + "; ".join(problems))
        with writable(cfg.workdir.parent, f"preparing guest {self.name}"):
            cfg.workdir.mkdir(mode=0o700, parents=True, exist_ok=True)
            self._files = self._placement.prepare(cfg.name, cfg.image, cfg.workdir, guest_seed,
                                                  cfg.volume_prefix)
        self.timeline.add("prepare", time.monotonic() - t0)

    def _spec(self, port: int) -> DomainSpec:
        return domain_spec(self._config, port, self.mac, self._files)

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
            self.port = port
            break
        if self._config.family.seeds_host_key:
            write_known_hosts(self._known_hosts, "127.0.0.1", self.port, self.host_public)

    def _launch(self) -> None:
        t0 = time.monotonic()
        self._start_on_free_port(self._start_domain)
        self.timeline.add("domain-start", time.monotonic() - t0)

    def _start_domain(self, port: int):
        return self._placement.start(self._xml_for_port(port), self._console)

    def _crash_check(self) -> str | None:
        try:
            console = self._console.read_bytes().decode("utf-8", errors="replace")
        except OSError:
            console = ""
        fam = self._config.family
        panic = find_panic(console, fam.panic_markers)
        if panic:
            return panic
        boots = _count_boots(console, fam.boot_banner) - self._boots_before
        if boots >= REBOOT_LOOP:
            return f"rebooted {boots - 1} times (a reboot loop)"
        if self._dom is not None and not self._hv.is_running(self._dom):
            return "stopped (its QEMU process exited)"
        return None

    def _new_handle(self) -> Handle:
        """A handle for the family's transport, not logged in yet."""
        cfg = self._config
        return {
            "ssh": lambda: SshClient(self.port, cfg.user, self.login_key_file, self._known_hosts,
                                     dial=self._placement.dial(),
                                     proxy_command=self._placement.proxy_command()),
            "winrm": lambda: WinRMClient(self.port, self.credentials,
                                         password_file=cfg.workdir / PASSWORD_FILE),
        }[cfg.family.transport]()

    def _ssh_login(self, remaining: float) -> Handle:
        client = self._new_handle()
        try:
            client.connect(timeout=min(20.0, max(remaining, 1.0)))
        except HostKeyMismatch:
            raise
        except paramiko.AuthenticationException as exc:
            if self.cloned:  # a restored guest is fully up: no key is on its way
                raise LoginRefused(f"guest {self.name} refused the login key "
                                   f"{self.login_key_file}: {exc}") from exc
            raise Retry(f"{type(exc).__name__}: {exc}") from exc
        except paramiko.SSHException as exc:
            raise Retry(f"{type(exc).__name__}: {exc}") from exc
        return client

    def _winrm_login(self, remaining: float) -> Handle:
        client = self._new_handle()
        try:
            client.connect(timeout=min(30.0, max(remaining, 1.0)))
        except WinRMError as exc:  # not listening yet, or our user does not exist yet
            client.close()
            raise Retry(f"{type(exc).__name__}: {exc}") from exc
        return client

    def _ssh_banner(self, remaining: float) -> bytes:
        data = read_banner(self.port, timeout=min(3.0, remaining), dial=self._placement.dial())
        if not data.startswith(b"SSH-"):
            raise Retry(f"no SSH banner yet (got {data[:40]!r})")
        return data

    def _login_phases(self) -> list[tuple[str, Callable[[float], Any], str]]:
        """(phase, attempt, limit) until the handle is logged in, by the family's transport.
        With user-mode networking QEMU accepts TCP before the guest listens, so SSH waits
        for sshd's banner first; WinRM answers only once cloudbase-init made our user."""
        return {
            "ssh": [("ssh-banner", self._ssh_banner, "boot"), ("ssh-auth", self._ssh_login, "ssh")],
            "winrm": [("winrm", self._winrm_login, "boot")],
        }[self._config.family.transport]

    def _wait_ready(self, timeout: float | None = None, *, new_boot_of: str | None = None) -> None:
        """Log in and wait for the guest's init. *timeout* replaces each phase's limit;
        *new_boot_of*: the boot id of a boot that must be over (a reboot)."""
        cfg = self._config
        fam = cfg.family
        waiter = PhaseWaiter(guest_name=self.name, crash_check=self._crash_check,
                             console_tail=self.console_tail, timeline=self.timeline)

        def limit(name: str) -> Limit:
            return cfg.limits[name] if timeout is None else Limit(timeout, f"timeout={timeout:g} given")

        handle = None
        phases = self._login_phases()
        for phase, attempt, limit_name in phases:
            if new_boot_of is not None and phase == phases[-1][0]:
                # down and up again: the whole boot's limit, not a login's
                attempt = self._new_boot_login(attempt, new_boot_of)
                phase, limit_name = "new-boot", "boot"
            handle = waiter.phase(phase, attempt, limit(limit_name))
        self._handle = handle
        if fam.ready_command is None:  # the login proves the seed was applied
            return

        def init_done(remaining: float):
            try:
                return self._handle.run(fam.ready_command, timeout=max(remaining, 1.0))
            except CommandTimeout as exc:
                raise Retry("the guest's init (cloud-init) is still running") from exc

        status = waiter.phase("cloud-init", init_done, limit("cloud-init"))
        # cloud-init: 0 done; 2 done with recoverable errors (deprecations); 127 not installed
        if status.exit_code not in fam.ready_exit_codes:
            raise CloudInitError(f"guest {self.name}: cloud-init reported an error "
                                 "(often a bad user_data)", status=status.stdout + status.stderr)
        self.cloud_init_status = status.stdout

    # -- power --------------------------------------------------------------------------
    def _new_boot_login(self, login: Callable[[float], Any], old_boot: str) -> Callable[[float], Any]:
        """*login*, accepted only once the guest runs a boot other than *old_boot* (a login
        that still reached the old one, before it went down, is closed and tried again)."""
        def attempt(remaining: float):
            try:
                handle = login(remaining)
            except LoginRefused as exc:  # the old boot's sshd went away in the middle of it
                raise Retry(str(exc)) from exc
            try:
                boot = handle.run(self._config.family.boot_id_command, timeout=max(remaining, 5.0))
            except (KvmError, OSError, EOFError) as exc:
                handle.close()
                raise Retry(f"logged in, then lost the connection ({exc})") from exc
            if boot.stdout.strip() == old_boot:
                handle.close()
                raise Retry("still the boot before the reboot")
            return handle
        return attempt

    def boot_id(self) -> str:
        """What identifies the guest's current boot (Linux: the kernel's boot_id)."""
        return self.run(self._config.family.boot_id_command, check=True, timeout=60).stdout.strip()

    def _power_command(self, command: str | None, action: str) -> None:
        """Ask the guest's OS to *action* (its command as root, else ACPI through libvirt);
        the connection drops meanwhile, which is expected here."""
        if command is None:
            self._hv.power(self._dom, action)
        else:
            with contextlib.suppress(ConnectionLost, CommandTimeout):
                self.run(command, sudo=True, timeout=30)
        if self._handle is not None:
            self._handle.close()
            self._handle = None
        self._shares_mounted = False  # a new boot has nothing mounted

    def _console_boots(self) -> int:
        with contextlib.suppress(OSError):
            return _count_boots(self._console.read_bytes().decode("utf-8", errors="replace"),
                                self._config.family.boot_banner)
        return 0

    def reboot(self, timeout: float | None = None) -> "Guest":
        """Reboot through the family's command (libvirt's ACPI reboot where it has none),
        wait until the guest runs a new boot and log in again with the pinned host key.
        The phases go to the timeline; a guest that never comes back is a
        :class:`BootTimeout` with the console tail. *timeout*: each phase's limit (default:
        the boot limits). Shares are mounted again."""
        return self._restart("reboot", self._config.family.reboot_command, timeout)

    def reset(self, timeout: float | None = None) -> "Guest":
        """A hard reset (the reset button: no clean shutdown), then like :meth:`reboot`."""
        return self._restart("reset", None, timeout)

    def _restart(self, action: str, command: str | None, timeout: float | None) -> "Guest":
        self._running_handle(action)
        old_boot = self.boot_id()
        self._boots_before = self._console_boots()
        try:
            t0 = time.monotonic()
            self._power_command(command, action)
            self.timeline.add(action, time.monotonic() - t0)
            self._wait_ready(timeout, new_boot_of=old_boot)
        finally:
            self._boots_before = 0
        if self.cloned:
            # as after the restore: a new boot reads the clock from the RTC of a QEMU that was
            # restored from a saved state; do not count on it matching the host's
            clock = self._config.family.clock_command_for(time.time())
            if clock is not None:
                t0 = time.monotonic()
                self._handle.run(clock, timeout=60, check=True)
                self.timeline.add("clock", time.monotonic() - t0)
        self._mount_shares()
        if self._attachments:  # the NICs stayed in QEMU; the new boot has no addresses on them
            self._configure_networks()
            self._write_hosts()  # cloud-init may have written the hosts file anew at boot
        return self

    def wait_ready(self, timeout: float | None = None) -> "Guest":
        """Wait until the guest can be logged into again (after a reboot the test started
        itself, or sshd restarted) and its init is done; the handle then works again."""
        if self.powered_off or self.destroyed:
            raise HypervisorError(f"guest {self.name} is not running"
                                  + ("; call guest.start()" if self.powered_off else ""))
        if self._handle is not None:
            self._handle.close()
            self._handle = None
        self._wait_ready(timeout)
        return self

    def shutdown(self, timeout: float | None = None) -> "Guest":
        """Power the guest off cleanly (the family's command, else ACPI) and wait until its
        domain stopped; :meth:`start` boots it again on the same disk. A guest that does not
        stop within *timeout* (default: the boot limit) is a :class:`BootTimeout`."""
        self._running_handle("shutdown")
        t0 = time.monotonic()
        self._power_command(self._config.family.poweroff_command, "shutdown")
        limit = (self._config.limits["boot"] if timeout is None
                 else Limit(timeout, f"timeout={timeout:g} given"))

        def stopped(_remaining: float):
            return True if not self._hv.exists(self.name) else None

        waiter = PhaseWaiter(guest_name=self.name, crash_check=lambda: None,
                             console_tail=self.console_tail, timeline=self.timeline)
        waiter.phase("shutdown", stopped, limit)
        self._dom = None
        self.powered_off = True
        self._shares_mounted = False  # the devices went with the QEMU: start() adds them again
        self.timeline.add("powered-off", time.monotonic() - t0)
        return self

    def _boot_again(self) -> None:
        """Boot a shut-down guest on its own disk (same domain, a new forward port)."""
        t0 = time.monotonic()
        self._boots_before = self._console_boots()
        try:
            self._start_on_free_port(self._start_domain)
            self.powered_off = False
            self.timeline.add("domain-start", time.monotonic() - t0)
            self._wait_ready()
        finally:
            self._boots_before = 0
        if self._attachments:  # a new QEMU: plug the NICs again
            self._plug_networks()
            self._write_hosts()

    def _running_handle(self, action: str) -> None:
        if self.destroyed or self.powered_off or self._dom is None:
            raise HypervisorError(f"cannot {action} guest {self.name}: it is not running"
                                  + ("; call guest.start()" if self.powered_off else ""))

    # -- warm clones ----------------------------------------------------------------
    def save_as_golden(self, key: str) -> Golden:
        """Save this ready guest's memory state and freeze its disk: it becomes a golden,
        whose directory is this guest's work directory."""
        t0 = time.monotonic()
        if self._handle is not None:
            self._handle.close()
            self._handle = None
        image, host_files = self._placement.save_golden(self.name, self._files, self._config.workdir)
        self._dom = None
        self._remove_qemu_log()  # its QEMU is gone; clones have logs of their own
        golden = Golden(key=key, directory=self._config.workdir, image=image,
                        login_key=self._config.login_key, host_public=self.host_public,
                        hostname=self.hostname, credentials=self.credentials,
                        host_files=host_files)
        self.timeline.add("save", time.monotonic() - t0)
        return golden

    def freeze(self, key: str | None = None) -> Golden:
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

    def freeze_into(self, key: str, directory: Path) -> Golden:
        """Save this guest as a golden in *directory*, independent of the guest's own files
        (a clone's disk is flattened onto the base image: it no longer needs its golden),
        then remove the guest. Used by :meth:`freeze`."""
        t0 = time.monotonic()
        self._running_handle("freeze")
        if self._config.shares:
            raise KvmError(f"cannot freeze guest {self.name}: it has shares (QEMU cannot save a "
                           f"guest with virtiofs); give the clones the share instead")
        if self._config.networks:
            raise KvmError(f"cannot freeze guest {self.name}: it is on networks (their NICs are "
                           f"plugged into its QEMU only); give the clones networks= instead")
        if self._handle is not None:
            self._handle.close()
            self._handle = None
        self._hv.save(self.name, directory / SAVE_FILE)
        self._dom = None
        self._remove_qemu_log()
        disk = directory / DISK_FILE
        parent = self._golden
        console = b""
        if parent is not None:
            flatten_onto(self.overlay, self._config.image.disk, self._config.image.format, disk)
            shutil.copyfile(parent.seed, directory / SEED_FILE)
            with contextlib.suppress(OSError):
                console = parent.console_log.read_bytes()
        else:
            os.replace(self.overlay, disk)
            disk.chmod(0o400)
            os.replace(self._seed, directory / SEED_FILE)
        with contextlib.suppress(OSError):
            console += self._console.read_bytes()
        (directory / CONSOLE_FILE).write_bytes(console)
        nvram = self._config.workdir / NVRAM_FILE
        if nvram.exists():
            shutil.copyfile(nvram, directory / NVRAM_FILE)
        golden = Golden(key=key, directory=directory, image=SaveImage.read(directory / SAVE_FILE),
                        login_key=parent.login_key if parent else self._config.login_key,
                        host_public=self.host_public, hostname=self.hostname,
                        credentials=self.credentials)
        self.timeline.add("freeze", time.monotonic() - t0)
        self.destroy()
        return golden

    def _start_clone(self) -> None:
        """Restore this clone; if the golden came from the snapshot cache and its first
        clone fails, the session makes the golden anew (a stale cache never fails a test)."""
        golden = self._golden
        generation = golden.generation
        try:
            self._restore_clone(golden)
        except (KvmError, OSError, ValueError) as exc:  # ValueError: a damaged save image
            if golden.verified or golden.replace is None:
                raise
            self._remove()
            self.timeline = Timeline()
            golden.replace(exc, generation)
            self._use_golden(golden)
            self._restore_clone(golden)
        golden.verified = True

    def _restore_clone(self, golden: Golden) -> None:
        t0 = time.monotonic()
        cfg = self._config
        with writable(cfg.workdir.parent, f"preparing clone {self.name}"):
            cfg.workdir.mkdir(mode=0o700, parents=True)
            disk = self._placement.clone_disk(self.name, golden, cfg.workdir)
            nvram = self._copy_nvram(golden)
        identity = CloneIdentity(name=self.name, disk=disk, console_log=self._console,
                                 ssh_port=0, guest_port=cfg.family.guest_port, nvram=nvram,
                                 seed=golden.seed, metadata=dict(cfg.metadata),
                                 network_mode=cfg.network_mode)
        self.mac = identity.mac
        self.timeline.add("prepare", time.monotonic() - t0)
        t0 = time.monotonic()

        # the same domain booted cold again after a shutdown (its disk: this clone's overlay)
        self._xml_for_port = lambda port: retarget(golden.image.xml, replace(identity, ssh_port=port))

        self._start_on_free_port(lambda port: self._placement.restore(
            self.name, golden, self._xml_for_port(port), cfg.workdir, self._console))
        self.timeline.add("restore", time.monotonic() - t0)
        # the guest's clock stopped while it was saved: set it from the host's, through the
        # guest agent while we log in (else with the family's clock command afterwards)
        by_agent = concurrent.futures.ThreadPoolExecutor(max_workers=1)
        agent_clock = by_agent.submit(self._clock_by_agent)
        by_agent.shutdown(wait=False)
        waiter = PhaseWaiter(guest_name=self.name, crash_check=self._crash_check,
                             console_tail=self.console_tail, timeline=self.timeline)
        phase, attempt, limit = self._login_phases()[-1]  # the guest is up: log in again
        self._handle = waiter.phase(phase, attempt, cfg.limits["ssh"], interval=0.2)
        t0 = time.monotonic()
        try:
            agent_clock.result(timeout=AGENT_WAIT + 5)
            how = "set from the host's through the guest agent"
        except Exception as exc:  # no agent in this image (or it did not answer): log in and set it
            clock = cfg.family.clock_command_for(time.time())
            if clock is not None:
                self._handle.run(clock, timeout=60, check=True)
            how = (("set from the host's with the family's clock command" if clock is not None
                    else "not set: the family has no clock command")
                   + f" (the guest agent did not answer: {exc or type(exc).__name__})")
        self.timeline.add("clock", time.monotonic() - t0)
        guest_logger(self.name).info("clock %s", how)
        if cfg.unique:
            t0 = time.monotonic()
            self._handle.run(cfg.family.identity_command_for(self.hostname), timeout=120,
                          check=True)
            self.timeline.add("identity", time.monotonic() - t0)

    def _clock_by_agent(self, deadline: float = AGENT_WAIT) -> None:
        """Set the clock through the guest agent, retrying while it reconnects after the
        restore; each try reads the host's time anew."""
        end = time.monotonic() + deadline
        while True:
            if self.destroyed:  # a clone that failed meanwhile: its domain is gone
                raise HypervisorError(f"guest {self.name} was destroyed before its clock was set")
            try:
                return self._hv.set_time(self._dom, time.time(), timeout=2)
            except HypervisorError:
                if time.monotonic() > end:
                    raise
                time.sleep(0.1)

    def _copy_nvram(self, golden: Golden) -> Path | None:
        """A UEFI clone's own copy of its golden's variable store (None without UEFI)."""
        source = golden.directory / NVRAM_FILE
        if not source.exists():
            return None
        target = self._config.workdir / NVRAM_FILE
        shutil.copyfile(source, target)
        return target

    # -- use ----------------------------------------------------------------------
    def _client(self) -> Handle:
        """The logged-in handle; an SSH connection that dropped since its last use (a reboot
        the test started, sshd restarted) is logged in again once, if the guest lets us."""
        if self.destroyed:
            raise HypervisorError(f"guest {self.name} was destroyed")
        if self.powered_off:
            raise HypervisorError(f"guest {self.name} is shut down: call guest.start() to boot it")
        if self._handle is None:
            raise HypervisorError(f"guest {self.name} is not running")
        if not self._handle.active:
            self._reconnect()
        return self._handle

    def _reconnect(self) -> None:
        self._handle.close()
        self._handle = None
        if self._dom is None or not self._hv.is_running(self._dom):
            raise ConnectionLost(f"guest {self.name} stopped: its domain is no longer running "
                                 f"(powered off from inside, destroyed or crashed)",
                                 console_tail=self.console_tail())
        try:
            _phase, login, _limit = self._login_phases()[-1]
            self._handle = login(RECONNECT_WAIT)
        except (Retry, LoginRefused, OSError, EOFError, paramiko.SSHException) as exc:
            raise ConnectionLost(
                f"the connection to guest {self.name} was lost and logging in again failed "
                f"({type(exc).__name__}: {exc}). If the test rebooted it, wait for it with "
                f"guest.wait_ready() (or reboot with guest.reboot(), which waits)") from exc

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
        fam = self._config.family
        wrapped = commands.wrap(command, shell=fam.shell, privilege=fam.privilege, sudo=sudo,
                                env=env, cwd=cwd)
        data = input.encode("utf-8") if isinstance(input, str) else input
        logger = guest_logger(self.name)
        logger.info("$ %s%s", command, commands.describe_options(sudo=sudo, env=env, cwd=cwd))
        return self._use(command, lambda client: client.run(
            wrapped, timeout=timeout or self._config.command_timeout, check=check, input=data,
            log=LineLog(logger)))

    def _use(self, what: str, call: Callable[[Handle], Any]) -> Any:
        """Call *call* with the handle; a lost connection is explained by the domain's state."""
        client = self._client()
        try:
            return call(client)
        except ConnectionLost as exc:
            if self.destroyed or self._dom is None or not self._running_after(STOP_NOTICED):
                raise ConnectionLost(
                    f"guest {self.name} stopped while the plugin ran {what!r}: its domain is no "
                    f"longer running (destroyed, powered off or crashed)",
                    console_tail=self.console_tail()) from exc
            raise ConnectionLost(
                f"lost the connection to guest {self.name} while running {what!r}; the guest "
                f"is still running: it may be rebooting or shutting down, or its sshd was "
                f"restarted ({exc})") from exc

    def _running_after(self, seconds: float) -> bool:
        """Whether the domain still runs *seconds* after its connection dropped: libvirt
        notices a QEMU that died (killed, crashed) a moment after its sockets closed."""
        end = time.monotonic() + seconds
        while self._hv.is_running(self._dom):
            if time.monotonic() >= end:
                return True
            time.sleep(0.1)
        return False

    def run_ps(self, script: str, *, timeout: float | None = None, check: bool = False) -> CommandResult:
        """Run a PowerShell *script* (Windows guests, whose handle is WinRM)."""
        return self._use("a PowerShell script", lambda client: client.run_ps(
            script, timeout=timeout or self._config.command_timeout, check=check))

    def put(self, local_path: str | os.PathLike, remote_path: str, *,
            exclude: Sequence[str] = (), timeout: float | None = None) -> None:
        """Copy a local file, or a directory tree, into the guest. A file goes by SFTP (WinRM
        chunks on Windows) to *remote_path*; a directory's contents are streamed as one tar
        archive and unpacked into *remote_path* (made if missing): modes, symlinks and empty
        directories kept, paths matching an ``exclude`` glob (e.g. ``".git"``, ``"*.pyc"``)
        left out. Trees need an SSH guest."""
        local = Path(local_path)
        self._use(f"put {local} -> {remote_path}", lambda client: client.put(
            local, remote_path, exclude=exclude, timeout=timeout or self._config.command_timeout))

    def get(self, remote_path: str, local_path: str | os.PathLike, *,
            exclude: Sequence[str] = (), sudo: bool = False, timeout: float | None = None) -> None:
        """Copy a file, or a directory tree, from the guest to *local_path*. A directory's
        contents are streamed as one tar archive and unpacked into *local_path* (made if
        missing); a member that would land outside it (``..``, an absolute path, a link
        pointing out) is refused with :class:`~pytest_kvm.transport.archive.UnsafeArchive`.
        ``sudo=True`` reads as root (files the login user may not read)."""
        local = Path(local_path)
        self._use(f"get {remote_path} -> {local}", lambda client: client.get(
            remote_path, local, exclude=exclude, timeout=timeout or self._config.command_timeout,
            as_root=self._as_root if sudo else None))

    def _as_root(self, command: str) -> str:
        fam = self._config.family
        return commands.wrap(command, shell=fam.shell, privilege=fam.privilege, sudo=True)

    def testinfra(self):
        """A `testinfra <https://testinfra.readthedocs.io>`_ host on this guest (SSH with the
        pinned host key and the session's key; needs ``pip install 'pytest-kvm[testinfra]'``)."""
        return integrations.testinfra_host(self)

    def console_log(self) -> str:
        """Everything the guest wrote on its serial console so far (for a clone: its
        golden's boot, then what the clone wrote after the restore)."""
        files = ([self._golden.console_log] if self._golden else []) + [self._console]
        text = ""
        for path in files:
            with contextlib.suppress(OSError):
                text += path.read_bytes().decode("utf-8", errors="replace")
        return text

    def console_tail(self, lines: int = CONSOLE_TAIL_LINES) -> str:
        return "\n".join(self.console_log().replace("\r", "").splitlines()[-lines:])

    def access(self) -> str:
        """How a person reaches this guest (printed for kept guests): an ssh command line, or
        for WinRM the endpoint, user and the file holding the generated password."""
        return (self._handle or self._new_handle()).access()

    def ssh_command(self) -> list[str]:
        """An OpenSSH argv that logs in with the same key and the pinned host key."""
        return (self._handle or self._new_handle()).ssh_command()

    @property
    def proxy_command(self) -> list[str] | None:
        """How OpenSSH reaches the forwarded port (an argv for ``ProxyCommand``): through the
        remote host a guest runs on (``--kvm-host``); None on this machine."""
        return self._placement.proxy_command()

    # -- teardown -------------------------------------------------------------------
    def keep(self) -> None:
        """Leave the guest running for inspection (``--kvm-keep``); close our connection only."""
        if self._handle is not None:
            self._handle.close()
        self.kept = True

    def destroy(self) -> None:
        """Destroy the domain and remove every file made for it. Idempotent; every step runs."""
        with self._destroy_lock:  # the background reclaimer and the session end may race
            if self.destroyed:
                return
            t0 = time.monotonic()
            try:
                self._remove()
            finally:
                self.destroyed = True
                self.started.set()  # nobody waits for a destroyed guest to come up
                self.timeline.add("destroy", time.monotonic() - t0)

    def _remove(self) -> None:
        errors: list[BaseException] = []
        if self._handle is not None:
            self._handle.close()
            self._handle = None
        try:
            self._hv.destroy(self.name)
        except Exception as exc:  # keep going: the files must go too
            errors.append(exc)
        if self._networks is not None:
            self._networks.leave(self.name)
        try:
            self._placement.remove(self.name)
        except Exception as exc:  # keep going: the local files must go too
            errors.append(exc)
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(self._config.workdir)
        self._remove_qemu_log()
        if errors:
            raise errors[0]

    def _remove_qemu_log(self) -> None:
        log = self._hv.qemu_log(self.name)
        if log is not None:
            with contextlib.suppress(FileNotFoundError):
                log.unlink()

    def __enter__(self) -> "Guest":
        return self

    def __exit__(self, *exc_info) -> None:
        self.destroy()

    def __repr__(self) -> str:
        return (f"<Guest {self.name} os={self.os} family={self.family} "
                f"{self._config.family.transport}=127.0.0.1:{self.port}>")
