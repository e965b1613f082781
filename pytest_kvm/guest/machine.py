"""The state one guest's parts share: its domain on its host, the forwarded port, the
logged-in handle, its console, its timeline; and what they all do with it (start the
domain on a free port, read the console, tell a crash, log in through the family's
transport, remove everything)."""
from __future__ import annotations

import contextlib
import shutil
import socket
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..errors import HypervisorError
from ..keys import write_known_hosts
from ..output import guest_logger
from ..transport.login import LoginTarget, login_for
from ..vm.hypervisor import PortInUse
from ..waiting import PhaseWaiter, Timeline, find_panic
from ..workdir import CONSOLE_FILE, PASSWORD_FILE

if TYPE_CHECKING:
    from ..hosts.base import GuestFiles, Host
    from ..transport.handle import Handle
    from .config import GuestConfig
    from .golden import Golden

PORT_ATTEMPTS = 8
REBOOT_LOOP = 3  # kernel banners seen while waiting: one reboot may be the user's, two are a loop
CONSOLE_TAIL_LINES = 40


def free_port() -> int:
    """A port free on 127.0.0.1 right now; a clash later is retried by the caller."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def count_boots(console: str, banner: str | None) -> int:
    """Kernel starts seen in *console* (0 for a family without a known banner)."""
    return console.count(banner) if banner else 0


class Machine:
    """One guest's domain and handle. Its parts (cold start, clone, power, attachments)
    and the :class:`~pytest_kvm.guest.facade.Guest` facade change it; nothing else does."""

    def __init__(self, host: "Host", config: "GuestConfig", golden: "Golden | None") -> None:
        self.host = host
        self.config = config  # a clone made ahead gets its taker's shares and networks
        self.golden = golden  # the golden a clone is restored from; None: booted cold
        self.name = config.name
        self.dom = None
        self.port = 0  # the 127.0.0.1 port forwarded to the guest's SSH (or WinRM) port
        self.handle: Handle | None = None  # logged in once the guest is up
        self.files: GuestFiles | None = None  # made by the cold start
        self.timeline = Timeline()
        self.console = config.workdir / CONSOLE_FILE
        self.known_hosts = config.workdir / "known_hosts"
        self.destroyed = False
        self.powered_off = False  # shut down by guest.shutdown(); guest.start() boots it again
        self.boots_before = 0  # kernel banners on the console before the current wait
        self.started = threading.Event()  # set when start() returned or failed, or on destroy
        # the domain XML for a forward port: a cold boot's, or a clone's retargeted golden
        self.xml_for_port: Callable[[int], str] | None = None
        # identity: the guest's own, or its golden's (set by the parts that start it)
        self.hostname = config.name
        self.host_public = ""
        self.login_key_file = config.login_key_file
        self.credentials = None
        self.mac = ""
        self.state_kept = False  # QEMU saved the state a revert goes back to (guest/revert.py)

    @property
    def running(self) -> bool:
        """Started, not shut down and not destroyed."""
        return self.dom is not None and not self.destroyed and not self.powered_off

    # -- the domain -----------------------------------------------------------------------
    def start_on_free_port(self, start: Callable[[int], Any]) -> None:
        """Call ``start(port)`` (it starts the domain forwarding *port*) with free ports until
        one is not taken meanwhile by another program; then pin the host key for it."""
        for attempt in range(PORT_ATTEMPTS):
            port = free_port()
            try:
                self.dom = start(port)
            except PortInUse:
                if attempt == PORT_ATTEMPTS - 1:
                    raise
                continue
            self.port = port
            break
        if self.config.family.seeds_host_key:
            write_known_hosts(self.known_hosts, "127.0.0.1", self.port, self.host_public)

    def start_domain(self, port: int):
        """Start the guest's domain (cold, or again after a shutdown) forwarding *port*."""
        return self.host.start(self.xml_for_port(port), self.console)

    def running_after(self, seconds: float) -> bool:
        """Whether the domain still runs *seconds* after its connection dropped: libvirt
        notices a QEMU that died (killed, crashed) a moment after its sockets closed."""
        end = time.monotonic() + seconds
        while self.host.is_running(self.dom):
            if time.monotonic() >= end:
                return True
            time.sleep(0.1)
        return False

    # -- the console ------------------------------------------------------------------------
    def console_log(self) -> str:
        files = ([self.golden.console_log] if self.golden else []) + [self.console]
        text = ""
        for path in files:
            with contextlib.suppress(OSError):
                text += path.read_bytes().decode("utf-8", errors="replace")
        return text

    def console_tail(self, lines: int = CONSOLE_TAIL_LINES) -> str:
        return "\n".join(self.console_log().replace("\r", "").splitlines()[-lines:])

    def console_boots(self) -> int:
        with contextlib.suppress(OSError):
            return count_boots(self.console.read_bytes().decode("utf-8", errors="replace"),
                               self.config.family.boot_banner)
        return 0

    def crash_check(self) -> str | None:
        try:
            console = self.console.read_bytes().decode("utf-8", errors="replace")
        except OSError:
            console = ""
        fam = self.config.family
        panic = find_panic(console, fam.panic_markers)
        if panic:
            return panic
        boots = count_boots(console, fam.boot_banner) - self.boots_before
        if boots >= REBOOT_LOOP:
            return f"rebooted {boots - 1} times (a reboot loop)"
        if self.dom is not None and not self.host.is_running(self.dom):
            return "stopped (its QEMU process exited)"
        return None

    def waiter(self, crash_check: Callable[[], str | None] | None = None) -> PhaseWaiter:
        return PhaseWaiter(guest_name=self.name, crash_check=crash_check or self.crash_check,
                           console_tail=self.console_tail, timeline=self.timeline)

    # -- logging in ---------------------------------------------------------------------------
    def login(self):
        """The family's transport's login (see :mod:`pytest_kvm.transport.login`)."""
        cfg = self.config
        return login_for(cfg.family.transport, LoginTarget(
            port=self.port, user=cfg.user, key_file=self.login_key_file,
            known_hosts=self.known_hosts, credentials=self.credentials,
            password_file=cfg.workdir / PASSWORD_FILE, dial=self.host.dial(),
            proxy_command=self.host.proxy_command(), restored=self.golden is not None,
            name=self.name))

    def close_handle(self) -> None:
        if self.handle is not None:
            self.handle.close()
            self.handle = None

    def log(self, message: str, *args: Any) -> None:
        guest_logger(self.name).info(message, *args)

    # -- the end ------------------------------------------------------------------------------
    def remove(self) -> None:
        """Destroy the domain and remove every file made for it; every step runs."""
        errors: list[BaseException] = []
        self.close_handle()
        try:
            self.host.destroy(self.name)
        except Exception as exc:  # keep going: the files must go too
            errors.append(exc)
        try:
            self.host.remove(self.name)
        except Exception as exc:  # keep going: the local files must go too
            errors.append(exc)
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(self.config.workdir)
        self.host.remove_qemu_log(self.name)
        if errors:
            raise errors[0]

    def check_running(self, action: str) -> None:
        if self.destroyed or self.powered_off or self.dom is None:
            raise HypervisorError(f"cannot {action} guest {self.name}: it is not running"
                                  + ("; call guest.start()" if self.powered_off else ""))
