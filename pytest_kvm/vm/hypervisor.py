"""The one libvirt connection: which URI, the embedded driver's set-up, error translation
and sweeping up domains left by dead runs.

This is the only module that imports ``libvirt``; every ``libvirtError`` is
turned into a :class:`~pytest_kvm.errors.HypervisorError` here.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import threading
import urllib.parse
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from .embed import EmbedSlot, libvirt_state_dir, take_embed_slot
from .libvirtxml.storage import pool_xml, volume_xml
from ..errors import AgentCommandFailed, HypervisorError

if TYPE_CHECKING:
    from ..hosts.uris import HostUri

SYSTEM_SOCKET = Path("/run/libvirt/libvirt-sock")


class PortInUse(HypervisorError):
    """QEMU could not bind the host forward (another program took the port)."""


def _libvirt():
    # libvirt (and its embedded driver) log warnings to stderr; errors reach us as exceptions.
    os.environ.setdefault("LIBVIRT_LOG_OUTPUTS", "4:file:/dev/null")
    try:
        import libvirt  # noqa: PLC0415 - heavy import, only when a guest is needed
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise HypervisorError("libvirt-python is not installed: pip install libvirt-python "
                              "(needs apt install libvirt-dev pkg-config gcc)") from exc
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
    return libvirt


_event_loop_lock = threading.Lock()
_event_loop_started = False


def _ensure_event_loop() -> None:
    """The embedded driver needs a libvirt event loop running in this process."""
    global _event_loop_started  # noqa: PLW0603 - one event loop per process is libvirt's rule
    libvirt = _libvirt()
    with _event_loop_lock:
        if _event_loop_started:
            return
        libvirt.virEventRegisterDefaultImpl()

        def loop() -> None:
            while True:
                libvirt.virEventRunDefaultImpl()

        threading.Thread(target=loop, name="pytest-kvm-libvirt-events", daemon=True).start()
        _event_loop_started = True


def _send_all(stream, data: bytes) -> None:
    """Send all of *data* on a libvirt stream (one ``send`` may take only part of it)."""
    view = memoryview(data)
    while view:
        view = view[stream.send(bytes(view[:1 << 20])):]


def default_uri() -> str | None:
    """``qemu:///system`` when a libvirt daemon is reachable, else None (use the embedded driver)."""
    if os.geteuid() == 0 and SYSTEM_SOCKET.exists():
        return "qemu:///system"
    return None


def runs_qemu_here(uri: str | None) -> bool:
    """Whether QEMU of *uri* runs on this machine (the embedded driver, a local daemon), so
    that it must be installed here; a remote host's (``qemu+ssh://host/...``, what the
    watchdog of a ``--kvm-host`` run opens) runs there."""
    if uri is None:
        return True
    parts = urllib.parse.urlsplit(uri)
    transport = parts.scheme.partition("+")[2]
    return not parts.hostname or transport in ("unix", "")


LOCAL_UNREACHABLE = ("Start libvirtd (libvirtd -d; virtlogd -d), or drop --kvm-uri to use the "
                     "embedded driver that needs no daemon.")


def remote_unreachable(host: "HostUri") -> str:
    """What to check when libvirt on a ``--kvm-host`` cannot be reached (any SSH transport)."""
    port = f" -p {host.port}" if host.port != 22 else ""
    return (f"Check that the host is up, that ssh works (`ssh{port} {host.user}@{host.hostname} "
            f"true` from here, with no password prompt) and that libvirtd runs there (`virsh "
            f"-c {host.display_uri} list` from here), or drop that --kvm-host.")


#: how libvirt says the guest agent answered a command with a failure (an internal error);
#: not connected or silent is VIR_ERR_AGENT_UNRESPONSIVE. qemu-ga's guest-set-time, for
#: one, sets the time and then fails where `hwclock -w` does (no RTC on s390x, no hwclock
#: in Debian 13's images)
AGENT_FAILED = "unable to execute QEMU agent command"


def _unreachable(libvirt, exc) -> bool:
    """Whether *exc* says that libvirt could not be reached at all (the connection, not a
    call on it): a failed open, a refused socket, a transport (SSH) that did not connect."""
    code = exc.get_error_code()
    message = exc.get_error_message() or ""
    if code in (libvirt.VIR_ERR_NO_CONNECT, libvirt.VIR_ERR_AUTH_FAILED,
                libvirt.VIR_ERR_AUTH_UNAVAILABLE):
        return True
    return code == libvirt.VIR_ERR_SYSTEM_ERROR and (
        exc.get_error_domain() in (libvirt.VIR_FROM_RPC, libvirt.VIR_FROM_REMOTE)
        or "socket" in message or "unable to connect" in message)


@contextlib.contextmanager
def translate(action: str, uri: str = "", console_tail: str = "",
              unreachable: str = LOCAL_UNREACHABLE) -> Iterator[None]:
    """Turn ``libvirtError`` raised in the block into our own errors, by error code;
    *unreachable* says what to do when libvirt cannot be reached."""
    libvirt = _libvirt()
    try:
        yield
    except libvirt.libvirtError as exc:
        message = exc.get_error_message() or str(exc)
        if "Could not set up host forwarding rule" in message:
            raise PortInUse(f"{action}: host port already in use: {message}") from exc
        if exc.get_error_code() == libvirt.VIR_ERR_INTERNAL_ERROR and AGENT_FAILED in message:
            raise AgentCommandFailed(f"{action}: {message}", console_tail=console_tail) from exc
        if _unreachable(libvirt, exc):
            raise HypervisorError(
                f"{action}: libvirt is not reachable at {uri!r}: {message}. {unreachable}") from exc
        raise HypervisorError(f"{action}: {message}", console_tail=console_tail) from exc


class Hypervisor:
    """An open libvirt connection and what this process started through it."""

    def __init__(self, conn, uri: str, embed: EmbedSlot | None = None) -> None:
        self._conn = conn
        self.uri = uri
        self._embed = embed
        self._machines: dict[tuple[str, str], str] | None = None
        self._caps: ET.Element | None = None

    @classmethod
    def open(cls, uri: str | None, state_dir: Path | None = None) -> "Hypervisor":
        """Open *uri*; without one, libvirtd's system URI if it runs, else a free embedded root."""
        uri = uri or default_uri()
        state_dir = state_dir or libvirt_state_dir()
        return cls._open(uri, take_embed_slot(state_dir) if uri is None else None)

    @classmethod
    def open_remote(cls, host: "HostUri") -> "Hypervisor":
        """Open a remote host's libvirt (``qemu+ssh://...``), with keepalives so that a host
        that went away is an error, not a hang. Messages name it by its label."""
        libvirt = _libvirt()
        _ensure_event_loop()  # keepalives and console streams need it
        with translate(f"opening libvirt on {host.label} ({host.display_uri})", host.label,
                       unreachable=remote_unreachable(host)):
            conn = libvirt.open(host.uri)
            conn.setKeepAlive(5, 6)
        return cls(conn, host.label)

    @classmethod
    def open_embed_slot(cls, index: int, state_dir: Path | None = None) -> "Hypervisor":
        """Open embedded root number *index* if no live process holds it (for reaping)."""
        return cls._open(None, take_embed_slot(state_dir or libvirt_state_dir(), index))

    @classmethod
    def _open(cls, uri: str | None, embed: EmbedSlot | None) -> "Hypervisor":
        libvirt = _libvirt()
        if runs_qemu_here(uri) and not shutil.which("qemu-system-x86_64"):
            raise HypervisorError("qemu-system-x86_64 not found: apt install qemu-system-x86")
        if embed is not None:
            uri = f"qemu:///embed?root={embed.root}"
        assert uri is not None
        if "embed" in uri:
            _ensure_event_loop()
        with translate("opening libvirt", uri):
            conn = libvirt.open(uri)
        return cls(conn, uri, embed)

    @property
    def embed_index(self) -> int | None:
        return self._embed.index if self._embed else None

    def qemu_log(self, name: str) -> Path | None:
        if self._embed is None:
            return None
        return self._embed.root / "log" / "qemu" / f"{name}.log"

    def create(self, xml: str, *, autodestroy: bool = False, paused: bool = False):
        """Start a transient domain from *xml*; returns the libvirt domain. *autodestroy*:
        libvirt destroys it when this connection closes (the process died, the link broke);
        *paused*: its CPUs wait for :meth:`resume` (open its console first)."""
        libvirt = _libvirt()
        flags = ((libvirt.VIR_DOMAIN_START_AUTODESTROY if autodestroy else 0)
                 | (libvirt.VIR_DOMAIN_START_PAUSED if paused else 0))
        with translate("starting the guest", self.uri):
            return self._conn.createXML(xml, flags)

    def start_problem(self, xml: str) -> str | None:
        """Start the transient domain *xml* paused (and autodestroyed) and destroy it at
        once: None if it started, else libvirt's message (see
        :func:`~pytest_kvm.vm.accel.confirm_kvm`)."""
        libvirt = _libvirt()
        try:
            dom = self._conn.createXML(xml, libvirt.VIR_DOMAIN_START_PAUSED
                                       | libvirt.VIR_DOMAIN_START_AUTODESTROY)
        except libvirt.libvirtError as exc:
            if _unreachable(libvirt, exc):
                with translate("probing KVM", self.uri):
                    raise
            return exc.get_error_message() or str(exc)
        with contextlib.suppress(libvirt.libvirtError):  # gone anyway with our connection
            dom.destroy()
        return None

    def resume(self, dom) -> None:
        with translate(f"resuming {dom.name()}", self.uri):
            dom.resume()

    # -- storage volumes (remote hosts: see pytest_kvm.hosts.remote) ------------------------
    def ensure_pool(self, name: str, path: str) -> None:
        """A started directory pool *name* at *path* (defined, built and set to autostart
        the first time)."""
        libvirt = _libvirt()
        with translate(f"setting up storage pool {name}", self.uri):
            try:
                pool = self._conn.storagePoolLookupByName(name)
            except libvirt.libvirtError as exc:
                if exc.get_error_code() != libvirt.VIR_ERR_NO_STORAGE_POOL:
                    raise
                pool = self._conn.storagePoolDefineXML(pool_xml(name, path), 0)
                pool.build(0)
                pool.setAutostart(1)
            if not pool.isActive():
                pool.create(0)

    def volumes(self, pool: str) -> dict[str, str]:
        """The pool's volumes: name -> path on the host."""
        with translate(f"listing volumes of {pool}", self.uri):
            the_pool = self._conn.storagePoolLookupByName(pool)
            the_pool.refresh(0)
            found = {}
            for vol in the_pool.listAllVolumes(0):
                with _unless("VIR_ERR_NO_STORAGE_VOL"):  # removed since the listing
                    found[vol.name()] = vol.path()
            return found

    def upload_volume(self, pool: str, name: str, source: Path | bytes) -> str:
        """A new volume *name* holding *source* (a file, or bytes); returns its host path."""
        size = len(source) if isinstance(source, bytes) else Path(source).stat().st_size
        with translate(f"uploading {name} to pool {pool}", self.uri):
            vol = self._conn.storagePoolLookupByName(pool).createXML(
                volume_xml(name, capacity=size, format="raw"), 0)
            stream = self._conn.newStream(0)
            try:
                vol.upload(stream, 0, size, 0)
                if isinstance(source, bytes):
                    _send_all(stream, source)
                else:
                    with open(source, "rb") as reader:
                        stream.sendAll(lambda _stream, nbytes, fh: fh.read(nbytes), reader)
                stream.finish()
            except BaseException:
                with contextlib.suppress(Exception):
                    stream.abort()
                with contextlib.suppress(Exception):
                    vol.delete(0)
                raise
            return vol.path()

    def create_overlay_volume(self, pool: str, name: str, backing: str, backing_format: str,
                              capacity: int) -> str:
        """A qcow2 volume *name* over the host file *backing*; returns its host path."""
        with translate(f"creating overlay {name} in pool {pool}", self.uri):
            return self._conn.storagePoolLookupByName(pool).createXML(
                volume_xml(name, capacity=capacity, format="qcow2", backing=backing,
                           backing_format=backing_format), 0).path()

    def _volume(self, pool: str, name: str):
        """Volume *name* of *pool*, looked up again after a refresh (a file libvirt wrote
        there itself, a saved state, is unknown to the pool until then)."""
        libvirt = _libvirt()
        the_pool = self._conn.storagePoolLookupByName(pool)
        with _unless("VIR_ERR_NO_STORAGE_VOL"):
            return the_pool.storageVolLookupByName(name)
        the_pool.refresh(0)
        return the_pool.storageVolLookupByName(name)

    def read_volume(self, pool: str, name: str, offset: int, length: int) -> bytes:
        """*length* bytes of volume *name* from *offset* (fewer at its end)."""
        with translate(f"reading volume {name}", self.uri):
            vol = self._volume(pool, name)
            stream = self._conn.newStream(0)
            vol.download(stream, offset, length, 0)
            chunks = []
            while True:
                data = stream.recv(min(1 << 20, max(length, 1)))
                if not isinstance(data, bytes) or not data:
                    break
                chunks.append(data)
            stream.finish()
            return b"".join(chunks)[:length]

    def write_volume(self, pool: str, name: str, offset: int, data: bytes) -> None:
        """Overwrite *data* into volume *name* at *offset* (the rest stays)."""
        with translate(f"writing volume {name}", self.uri):
            vol = self._volume(pool, name)
            stream = self._conn.newStream(0)
            try:
                vol.upload(stream, offset, len(data), 0)
                _send_all(stream, data)
                stream.finish()
            except BaseException:
                with contextlib.suppress(Exception):
                    stream.abort()
                raise

    def volume_capacity(self, pool: str, name: str) -> int:
        """The size a guest sees of volume *name*: a qcow2 overlay's virtual size, a raw
        file's length."""
        with translate(f"reading volume {name}", self.uri):
            return self._volume(pool, name).info()[1]

    def copy_volume(self, pool: str, source: str, name: str) -> str:
        """A new raw volume *name* with the contents of volume *source* (the host copies it,
        with a reflink where its file system has them); returns its host path."""
        with translate(f"copying volume {source} to {name}", self.uri):
            src = self._volume(pool, source)
            capacity = src.info()[1]
            return self._conn.storagePoolLookupByName(pool).createXMLFrom(
                volume_xml(name, capacity=capacity, format="raw"), src, 0).path()

    def delete_volume(self, pool: str, name: str) -> bool:
        """Delete volume *name*; False if it did not exist."""
        libvirt = _libvirt()
        with translate(f"deleting volume {name}", self.uri):
            try:
                vol = self._conn.storagePoolLookupByName(pool).storageVolLookupByName(name)
            except libvirt.libvirtError as exc:
                if exc.get_error_code() == libvirt.VIR_ERR_NO_STORAGE_VOL:
                    return False
                raise
            vol.delete(0)
        return True

    def mirror_console(self, dom, path: Path) -> threading.Thread:
        """Append what *dom* writes on its serial console (a ``pty`` serial) to the local
        file *path*, from a thread that ends when the domain does."""
        libvirt = _libvirt()
        with translate(f"opening the console of {dom.name()}", self.uri):
            stream = self._conn.newStream(0)
            dom.openConsole(None, stream, libvirt.VIR_DOMAIN_CONSOLE_FORCE)

        def copy() -> None:
            with open(path, "ab", buffering=0) as out:
                while True:
                    try:
                        data = stream.recv(65536)
                    except libvirt.libvirtError:
                        return
                    if not isinstance(data, bytes) or not data:
                        return
                    out.write(data)

        thread = threading.Thread(target=copy, name=f"console-{dom.name()}", daemon=True)
        thread.start()
        return thread

    def save(self, name: str, path: Path | str) -> None:
        """Save a running domain's memory state to *path*; the domain stops."""
        with translate(f"saving {name}", self.uri):
            self._conn.lookupByName(name).save(str(path))

    def restore(self, path: Path | str, name: str, *, paused: bool = False):
        """Start a domain from the saved state at *path* (a file or a FIFO fed by
        :class:`~pytest_kvm.vm.saveimage.Feeder`), as the definition saved in it says;
        returns the running (or, *paused*, paused: see :meth:`resume`) domain *name*."""
        libvirt = _libvirt()
        with translate(f"restoring {name}", self.uri):
            self._conn.restoreFlags(str(path), None, libvirt.VIR_DOMAIN_SAVE_PAUSED if paused
                                    else libvirt.VIR_DOMAIN_SAVE_RUNNING)
            return self._conn.lookupByName(name)

    def versions(self) -> dict[str, str]:
        """The libvirt library's and the hypervisor's (QEMU's) versions, as ``x.y.z``."""
        def dotted(number: int) -> str:
            return f"{number // 1000000}.{number // 1000 % 1000}.{number % 1000}"

        with translate("reading versions", self.uri):
            return {"libvirt": dotted(self._conn.getLibVersion()),
                    "qemu": dotted(self._conn.getVersion())}

    def _capabilities(self) -> ET.Element:
        """The host's capabilities document, read once per connection (a remote host's
        is a round trip of some 10 KB)."""
        if self._caps is None:
            with translate("reading the host's capabilities", self.uri):
                self._caps = ET.fromstring(self._conn.getCapabilities())
        return self._caps

    def canonical_machine(self, alias: str, arch: str = "x86_64") -> str:
        """The versioned machine type QEMU for *arch* (the kernel's name) means by *alias*
        (``pc`` -> ``pc-i440fx-7.2``, ``virt`` -> ``virt-7.2``): a saved state restores
        only onto the same machine type."""
        if self._machines is None:
            self._machines = {}
            for guest in self._capabilities().iter("guest"):
                found = guest.find("arch")
                for machine in found.iter("machine") if found is not None else ():
                    if machine.get("canonical") and machine.text:
                        self._machines[(found.get("name"), machine.text)] = machine.get("canonical")
        return self._machines.get((arch, alias), alias)

    def host_cpu(self) -> str:
        """The host CPU as its libvirt describes it (model, vendor and a hash of the feature
        names): what a ``host-passthrough`` guest on a remote host sees."""
        cpu = self._capabilities().find("host/cpu")
        if cpu is None:
            return "unknown"
        features = ",".join(sorted(f.get("name", "") for f in cpu.findall("feature")))
        return (f"{cpu.findtext('vendor', '')} {cpu.findtext('model', 'unknown')} "
                f"({hashlib.sha256(features.encode()).hexdigest()[:12]})")

    def offers_kvm(self) -> bool:
        """Whether the host's libvirt can run x86_64 guests of domain type ``kvm``."""
        return any(arch.get("name") == "x86_64" and arch.find("domain[@type='kvm']") is not None
                   for arch in self._capabilities().iter("arch"))

    def set_time(self, dom, epoch: float, timeout: int = 5) -> None:
        """Set the guest's clock to *epoch* through its QEMU guest agent (no login needed);
        raises HypervisorError if no agent answers within *timeout* seconds, and
        AgentCommandFailed if it answers that it could not."""
        with translate("setting the guest clock through its agent", self.uri):
            dom.agentSetResponseTimeout(timeout, 0)
            seconds = int(epoch)
            dom.setTime({"seconds": seconds, "nseconds": int((epoch - seconds) * 1e9)}, 0)

    def power(self, dom, action: str) -> None:
        """``reboot`` or ``shutdown`` through ACPI (the guest's OS does it), or ``reset``
        (a hard reset, like the button)."""
        with translate(f"{action} of {dom.name()}", self.uri):
            {"reboot": lambda: dom.reboot(0), "shutdown": dom.shutdown,
             "reset": lambda: dom.reset(0)}[action]()

    def attach(self, dom, xml: str, what: str) -> None:
        """Hot-plug the device *xml* into running domain *dom*."""
        libvirt = _libvirt()
        with translate(f"attaching {what} to {dom.name()}", self.uri):
            dom.attachDeviceFlags(xml, libvirt.VIR_DOMAIN_AFFECT_LIVE)

    def monitor(self, dom, command: dict, what: str) -> dict:
        """Send one QMP *command* to *dom*'s QEMU through libvirt (for what libvirt cannot
        do itself: see :func:`~pytest_kvm.vm.domain.private_nic_commands`); QEMU's error is a
        :class:`HypervisorError` naming *what*."""
        import libvirt_qemu  # noqa: PLC0415 - part of libvirt-python, loaded with it

        with translate(f"{what} ({dom.name()})", self.uri):
            reply = json.loads(libvirt_qemu.qemuMonitorCommand(dom, json.dumps(command), 0))
        if "error" in reply:
            raise HypervisorError(f"{what} ({dom.name()}): QEMU said "
                                  f"{reply['error'].get('desc', reply['error'])}")
        return reply

    def is_running(self, dom) -> bool:
        libvirt = _libvirt()
        try:
            state, _reason = dom.state()
        except libvirt.libvirtError:
            return False
        return state in (libvirt.VIR_DOMAIN_RUNNING, libvirt.VIR_DOMAIN_BLOCKED,
                         libvirt.VIR_DOMAIN_PAUSED)

    def destroy(self, name: str) -> bool:
        """Destroy domain *name* if it exists; True if it was running."""
        libvirt = _libvirt()
        with translate(f"destroying {name}", self.uri):
            try:
                dom = self._conn.lookupByName(name)
            except libvirt.libvirtError as exc:
                if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:  # gone; anything else
                    return False  # (a broken connection) must not pass for "gone"
                raise
            try:
                dom.destroy()
            except libvirt.libvirtError as exc:
                if exc.get_error_code() in (libvirt.VIR_ERR_NO_DOMAIN, libvirt.VIR_ERR_OPERATION_INVALID):
                    return False
                raise
        return True

    def exists(self, name: str) -> bool:
        """Whether libvirt still knows domain *name* (a transient one that powered off is
        removed a moment after it stopped; its name is free only then)."""
        libvirt = _libvirt()
        with translate(f"looking up {name}", self.uri):
            try:
                self._conn.lookupByName(name)
            except libvirt.libvirtError as exc:
                if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                    return False
                raise
        return True

    def our_domains(self) -> dict[str, dict[str, str]]:
        """Running domains started by pytest-kvm (any run): name -> run metadata."""
        from .domain import META_NS, NAME_PREFIX, run_metadata  # noqa: PLC0415 - default_uri needs none
        libvirt = _libvirt()
        found = {}
        with translate("listing domains", self.uri):
            for dom in self._conn.listAllDomains():
                try:
                    name = dom.name()
                    if not name.startswith(NAME_PREFIX):
                        continue
                    # only our element, not the whole XML: a remote host's libssh transport
                    # (libvirt 9.0) stalls on a running domain's large XML and then crashes
                    element = dom.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, META_NS, 0)
                except libvirt.libvirtError as exc:
                    if exc.get_error_code() in (libvirt.VIR_ERR_NO_DOMAIN,  # went away meanwhile
                                                libvirt.VIR_ERR_NO_DOMAIN_METADATA):  # not ours
                        continue
                    raise
                found[name] = run_metadata(element)
        return found

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._conn.close()
        self._embed = None  # the root stays this process's (see take_embed_slot)


@contextlib.contextmanager
def _unless(code: str) -> Iterator[None]:
    """Ignore a libvirtError of error *code*, libvirt's constant's name (e.g.
    ``VIR_ERR_NO_STORAGE_VOL``: a volume gone since it was listed)."""
    libvirt = _libvirt()
    try:
        yield
    except libvirt.libvirtError as exc:
        if exc.get_error_code() != getattr(libvirt, code):
            raise
