"""A fake remote libvirt host on this machine, reachable only over SSH (for issue 13's
``--kvm-host qemu+ssh://...`` tests). A helper for end-to-end tests, not a test module.

One :class:`FakeHost` is a set of private namespaces holding its own ``libvirtd``:

- a network namespace with only ``lo`` (no veth, no bridge, no address outside
  127.0.0.0/8): the guests' QEMU port forwards bind 127.0.0.1 *inside* it, so from
  this machine they are reachable only through the SSH connection, as on a real
  remote host;
- a mount namespace where ``/run``, ``/etc/libvirt``, ``/var/cache``, ``/var/log``
  are private tmpfs, ``/var/lib`` an overlay on a tmpfs and ``/dev/pts`` a new devpts
  instance: libvirtd's sockets, pid file, state, config, logs, storage pools, domains
  and consoles are this host's own, so two FakeHosts run side by side and nothing is
  written to the real ``/var``;
- a UTS namespace (its own host name) and a PID namespace whose init is a small
  reaper: when it dies the kernel kills every process inside (libvirtd, QEMU, sshd
  sessions), which is what makes cleanup complete even after a crash of the test
  process (the init and socat are started with ``setpriv --pdeathsig KILL``, so they
  die with the process that started them; the death signal follows the *thread* that
  started them, so start FakeHosts from the thread that stops them).

SSH: ``socat`` listens on 127.0.0.1:``ssh_port`` in the root namespace and, per
connection, runs ``sshd -i`` (inetd mode) inside the namespaces, with a host key and
an authorised client key (ed25519) made for this FakeHost in its temporary directory.
No daemon listens inside the namespace; the only way in is that SSH port.

libvirt 9.0's ``ssh`` transport has no URI parameter for a known_hosts file (only the
``libssh``/``libssh2`` transports read ``known_hosts=``; ``ssh`` silently ignores it
and uses ``~/.ssh/known_hosts``), so :attr:`FakeHost.uri` points ``command=`` at a
wrapper that runs ``ssh`` with this host's known_hosts file and strict checking;
:attr:`FakeHost.libssh_uri` pins the same key through libvirt's own libssh client.
"""
from __future__ import annotations

import contextlib
import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import quote

NSENTER = ("nsenter", "--net", "--mount", "--pid", "--uts")
PDEATHSIG = ("setpriv", "--pdeathsig", "KILL", "--")

# PID 1 of the namespace: reaps orphans (libvirt's QEMU processes are re-parented to it)
# and does nothing else; when it dies the kernel kills the whole PID namespace.
_INIT = """
import os, time
while True:
    try:
        os.wait()
    except ChildProcessError:
        time.sleep(0.5)
"""

# Run once inside the new namespaces (as root there) before libvirtd starts.
_SETUP = """
set -eu
hostname "$2"
ip link set lo up
mount -t tmpfs -o mode=0755 fakehost-run /run
mkdir -p /run/libvirt /run/sshd /run/lock /run/fakehost/var-lib /run/fakehost/work
mount -t overlay -o lowerdir=/var/lib,upperdir=/run/fakehost/var-lib,workdir=/run/fakehost/work \
      fakehost-var-lib /var/lib
for dir in /var/cache /var/log /etc/libvirt; do
  mount -t tmpfs -o mode=0755 fakehost "$dir"
done
# its own ptys (QEMU's serial consoles), not in this machine's /dev/pts
mount -t devpts -o newinstance,ptmxmode=0666,mode=0620 fakehost-pts /dev/pts
mount --bind /dev/pts/ptmx /dev/ptmx
mkdir -p /var/lib/libvirt /var/cache/libvirt /var/log/libvirt /etc/libvirt/qemu
install -m 0644 "$1/libvirtd.conf" /etc/libvirt/libvirtd.conf
install -m 0644 "$1/qemu.conf" /etc/libvirt/qemu.conf
"""

_LIBVIRTD_CONF = """\
# written by tests/e2e/remotehost.py: a FakeHost's libvirtd
listen_tls = 0
listen_tcp = 0
# only root inside the namespace reaches the sockets (sshd logs in as root)
unix_sock_group = "root"
unix_sock_ro_perms = "0700"
unix_sock_rw_perms = "0700"
auth_unix_ro = "none"
auth_unix_rw = "none"
log_outputs = "3:file:/var/log/libvirt/libvirtd.log"
"""

# For simplicity QEMU runs as root, unconfined, like the plugin's embedded driver under
# root: user/group root, no security driver, no chown of disk images.
_QEMU_CONF = """\
# written by tests/e2e/remotehost.py: QEMU as root, no security driver (a test harness)
user = "root"
group = "root"
security_driver = "none"
dynamic_ownership = 0
stdio_handler = "file"
"""

# libvirt's default device list without /dev/kvm: QEMU's private /dev (and its cgroup) lack it
_NO_KVM = """\
# no /dev/kvm for QEMU (FakeHost(kvm_usable=False)): KVM advertised, unusable
cgroup_device_acl = ["/dev/null", "/dev/full", "/dev/zero", "/dev/random", "/dev/urandom",
                     "/dev/ptmx", "/dev/rtc", "/dev/hpet"]
"""

_SSHD_CONFIG = """\
# written by tests/e2e/remotehost.py: run as `sshd -i` inside a FakeHost's namespaces
HostKey {dir}/host_ed25519
AuthorizedKeysFile {dir}/authorized_keys
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
UsePAM no
# the key files live under /tmp (mode 1777), which StrictModes refuses as their parent
StrictModes no
# direct-tcpip channels reach the guests' forwards on 127.0.0.1 inside the namespace
AllowTcpForwarding yes
PermitTTY no
PrintMotd no
PidFile none
Subsystem sftp /usr/lib/openssh/sftp-server
LogLevel VERBOSE
"""


class FakeHostError(RuntimeError):
    """The fake host could not be set up; the message carries what its daemons said."""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait(what: str, ready, timeout: float, diagnostics=lambda: "") -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if time.monotonic() > deadline:
            raise FakeHostError(f"{what}: not ready after {timeout:.0f} s. {diagnostics()}")
        time.sleep(0.05)


def _netns(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/net")
    except OSError:
        return None


def _children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        # the field after the ")" closing the command name: state, then the parent's PID
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.append(int(entry))
    return found


class FakeHost:
    """A libvirt host reachable only over SSH at 127.0.0.1:``ssh_port``; see the module's
    docstring. Use as a context manager (or :meth:`start` / :meth:`close`)."""

    def __init__(self, *, user: str = "root", start_timeout: float = 60.0,
                 kvm_usable: bool = True) -> None:
        """*kvm_usable* False: its libvirt advertises KVM (it probes ``/dev/kvm`` itself)
        but its QEMU cannot open ``/dev/kvm`` (left out of the devices QEMU is given), as
        on a host whose QEMU user lacks access or whose nested virtualisation is off."""
        self.user = user
        self.kvm_usable = kvm_usable
        #: the host's own name (its UTS namespace), what ``getHostname()`` answers
        self.hostname = f"fakehost-{secrets.token_hex(4)}"
        self.start_timeout = start_timeout
        self.dir: Path | None = None
        self.ssh_port = 0
        self.init_pid = 0
        self._netns: str | None = None
        self._holder: subprocess.Popen | None = None
        self._libvirtd: subprocess.Popen | None = None
        self._socat: subprocess.Popen | None = None

    # -- public surface -------------------------------------------------------------------

    @property
    def key_file(self) -> Path:
        """The client's private key (ed25519, no passphrase) authorised on this host."""
        return self._path("client_ed25519")

    @property
    def known_hosts(self) -> Path:
        """An OpenSSH known_hosts file pinning this host's key for ``[127.0.0.1]:PORT``."""
        return self._path("known_hosts")

    @property
    def host_public_key(self) -> str:
        """The host's public key, ``ssh-ed25519 AAAA...``."""
        return " ".join(self._path("host_ed25519.pub").read_text().split()[:2])

    @property
    def ssh_command(self) -> Path:
        """An ``ssh`` wrapper that pins this host's key: what :attr:`uri` runs."""
        return self._path("ssh")

    @property
    def uri(self) -> str:
        """``qemu+ssh://`` URI through the system ``ssh`` (non-interactive, key pinned)."""
        query = (f"keyfile={quote(str(self.key_file))}&no_tty=1"
                 f"&command={quote(str(self.ssh_command))}")
        return f"qemu+ssh://{self.user}@127.0.0.1:{self.ssh_port}/system?{query}"

    @property
    def libssh_uri(self) -> str:
        """``qemu+libssh://`` URI: libvirt's built-in SSH client, key pinned by known_hosts."""
        query = (f"keyfile={quote(str(self.key_file))}&known_hosts={quote(str(self.known_hosts))}"
                 "&known_hosts_verify=normal&sshauth=privkey")
        return f"qemu+libssh://{self.user}@127.0.0.1:{self.ssh_port}/system?{query}"

    def run(self, cmd: str | Sequence[str], *, timeout: float = 60.0, check: bool = True,
            input: str | None = None) -> subprocess.CompletedProcess:
        """Run *cmd* (a shell string, or an argv) inside the host's namespaces; returns the
        completed process with text stdout/stderr. Raises on a non-zero exit if *check*."""
        argv = ["sh", "-c", cmd] if isinstance(cmd, str) else list(cmd)
        result = subprocess.run([*self._enter(), *argv], capture_output=True, timeout=timeout,
                                text=True, input=input, env=self._env())
        if check and result.returncode != 0:
            raise FakeHostError(f"{argv!r} in the fake host exited {result.returncode}: "
                                f"{result.stderr.strip()}")
        return result

    def path(self, inside: str) -> Path:
        """A path of the host's private file system, seen from here (through /proc)."""
        return Path(f"/proc/{self.init_pid}/root") / inside.lstrip("/")

    def processes(self) -> list[int]:
        """PIDs (as seen here) of every process in this host's network namespace."""
        if self._netns is None:
            return []
        return [int(p) for p in os.listdir("/proc")
                if p.isdigit() and int(p) != os.getpid() and _netns(int(p)) == self._netns]

    def libvirtd_log(self, lines: int = 40) -> str:
        with contextlib.suppress(OSError):
            text = self.path("/var/log/libvirt/libvirtd.log").read_text(errors="replace")
            return "\n".join(text.splitlines()[-lines:])
        return ""

    # -- lifecycle ------------------------------------------------------------------------

    def __enter__(self) -> "FakeHost":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    def start(self) -> "FakeHost":
        try:
            self._make_keys()
            self._start_namespaces()
            self._start_libvirtd()
            self._start_ssh()
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        """Stop everything this host started; every step runs, a second call does nothing.

        Killing the namespace's init makes the kernel kill every process in its PID
        namespace; init is reaped by unshare, libvirtd by its nsenter, so nothing is left
        for this machine's PID 1 to reap, and when this returns the processes are gone."""
        inside = self.processes()
        if self._socat is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self._socat.pid, signal.SIGKILL)  # socat and its connections
        if self.init_pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.init_pid, signal.SIGKILL)
        for proc in (self._socat, self._holder, self._libvirtd):
            if proc is not None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()  # only matters if the namespace never came up
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=10)
        self._socat = self._holder = self._libvirtd = None
        with contextlib.suppress(FakeHostError):
            _wait("the fake host's processes to end",
                  lambda: not any(os.path.exists(f"/proc/{pid}") for pid in inside), 10)
        self._netns = None
        self.init_pid = 0
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None

    # -- steps ----------------------------------------------------------------------------

    def _path(self, name: str) -> Path:
        if self.dir is None:
            raise FakeHostError("the fake host is not started")
        return self.dir / name

    def _env(self) -> dict[str, str]:
        return {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root", "LANG": "C.UTF-8"}

    def _enter(self) -> list[str]:
        return [*NSENTER, "-t", str(self.init_pid), "--"]

    def _make_keys(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix=f"pytest-kvm-{self.hostname}-"))
        for name in ("host_ed25519", "client_ed25519"):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C",
                            f"pytest-kvm fake host {name}", "-f", str(self.dir / name)],
                           check=True, capture_output=True)
        shutil.copy(self.dir / "client_ed25519.pub", self.dir / "authorized_keys")
        (self.dir / "sshd_config").write_text(_SSHD_CONFIG.format(dir=self.dir))
        (self.dir / "libvirtd.conf").write_text(_LIBVIRTD_CONF)
        (self.dir / "qemu.conf").write_text(_QEMU_CONF + ("" if self.kvm_usable else _NO_KVM))

    def _start_namespaces(self) -> None:
        own = _netns(os.getpid())
        with open(self._path("unshare.log"), "ab") as unshare_log:
            self._holder = subprocess.Popen(
                [*PDEATHSIG, "unshare", "--net", "--mount", "--uts", "--pid", "--fork",
                 "--mount-proc", "--propagation", "private", "--kill-child=SIGKILL", "--",
                 sys.executable, "-c", _INIT],
                stdin=subprocess.DEVNULL, stderr=unshare_log, start_new_session=True)
        # unshare 2.38 says "sigprocmask unblock failed" when its child dies of SIGKILL,
        # which is how every FakeHost ends: its stderr goes to a file

        def init_running() -> bool:
            if self._holder.poll() is not None:
                raise FakeHostError(f"unshare exited {self._holder.returncode}")
            for child in _children(self._holder.pid):
                if _netns(child) not in (None, own):
                    self.init_pid = child
                    return True
            return False

        _wait("the namespace's init", init_running, 10)
        self._netns = _netns(self.init_pid)
        setup = subprocess.run([*self._enter(), "sh", "-c", _SETUP, "setup", str(self.dir),
                                self.hostname],
                               capture_output=True, text=True, env=self._env(), timeout=30)
        if setup.returncode != 0:
            raise FakeHostError(f"setting up the namespace failed: {setup.stderr.strip()}")

    def _start_libvirtd(self) -> None:
        with open(self._path("libvirtd.out"), "wb") as log:
            # not daemonised: nsenter waits for it, so this Popen is its handle
            self._libvirtd = subprocess.Popen(
                [*self._enter(), "/usr/sbin/libvirtd", "--pid-file", "/run/libvirtd.pid"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=self._env())
        socket_path = self.path("/run/libvirt/libvirt-sock")

        def listening() -> bool:
            if self._libvirtd.poll() is not None:
                raise FakeHostError(f"libvirtd exited {self._libvirtd.returncode}: "
                                    f"{self._path('libvirtd.out').read_text(errors='replace')}"
                                    f"{self.libvirtd_log()}")
            return socket_path.exists()

        _wait("libvirtd's socket", listening, self.start_timeout, self.libvirtd_log)

    def _start_ssh(self) -> None:
        host_key = self._path("host_ed25519.pub").read_text().split()
        sshd = [*self._enter(), "/usr/sbin/sshd", "-i", "-f", str(self._path("sshd_config")),
                "-E", str(self._path("sshd.log"))]
        for _attempt in range(5):
            port = _free_port()  # may be taken before socat binds it: then try another
            self.known_hosts.write_text(f"[127.0.0.1]:{port} {host_key[0]} {host_key[1]}\n")
            self._write_ssh_wrapper()
            with open(self._path("socat.log"), "ab") as socat_log:
                self._socat = subprocess.Popen(
                    [*PDEATHSIG, "socat", f"TCP-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork",
                     "EXEC:" + " ".join(shlex.quote(a) for a in sshd)],
                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=socat_log,
                    start_new_session=True, env=self._env())
            self.ssh_port = port
            try:
                _wait("socat's port", self._ssh_port_open, 10)
                return
            except FakeHostError:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self._socat.pid, signal.SIGKILL)
                self._socat.wait()
                self._socat = None
        raise FakeHostError("no free port for the fake host's SSH: "
                            + self._path("socat.log").read_text(errors="replace"))

    def _ssh_port_open(self) -> bool:
        """Whether socat itself listens on ``ssh_port`` (by socket inode: not a connection,
        which would start an sshd, and not another program that took the port)."""
        if self._socat is None or self._socat.poll() is not None:
            raise FakeHostError(f"socat exited {self._socat and self._socat.returncode}")
        fd_dir = Path(f"/proc/{self._socat.pid}/fd")
        inodes = set()
        with contextlib.suppress(OSError):
            for fd in fd_dir.iterdir():
                with contextlib.suppress(OSError):
                    target = os.readlink(fd)
                    if target.startswith("socket:["):
                        inodes.add(target[8:-1])
        local = f"0100007F:{self.ssh_port:04X}"
        for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[1] == local and fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                return True
        return False

    def _write_ssh_wrapper(self) -> None:
        # libvirt's ssh transport adds "-o StrictHostKeyChecking=no" only for no_verify=1;
        # ssh keeps the first value of an option, so ours (yes) win over it anyway
        options = ["-F", "/dev/null", "-o", f"UserKnownHostsFile={self.known_hosts}",
                   "-o", "GlobalKnownHostsFile=/dev/null", "-o", "StrictHostKeyChecking=yes",
                   "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes"]
        self.ssh_command.write_text("#!/bin/sh\n# written by tests/e2e/remotehost.py\n"
                                    f"exec /usr/bin/ssh {shlex.join(options)} \"$@\"\n")
        self.ssh_command.chmod(0o700)
