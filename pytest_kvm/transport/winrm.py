"""The WinRM handle of a Windows guest: ``run`` in cmd.exe, ``run_ps``, ``put``, ``get``.

It offers what the SSH handle offers (``run(command, timeout=, check=)`` returning
:class:`~pytest_kvm.transport.ssh.CommandResult`, raising :class:`~pytest_kvm.errors.CommandFailed`
and :class:`~pytest_kvm.errors.CommandTimeout`) over WinRM on a 127.0.0.1 host
forward to the guest's port 5985.

It is built on pywinrm (WinRS: cmd.exe command lines with their own exit code and
separate stdout/stderr); ``docs/design/winrm.md`` says why not pypsrp.

**Transfers.** ``put`` starts one PowerShell that decodes base64 lines from its
stdin into the file, and sends the file through WinRM ``Send`` messages of
``PUT_CHUNK`` bytes: no command line (cmd.exe stops at 8191 characters) carries
data, and each message stays far below WinRM's default 500 KiB envelope.
``get`` reads ``GET_CHUNK`` bytes per command, returned as base64 on stdout.
Both compare SHA-256 digests of the two ends.

**Auth.** NTLM by default: pywinrm encrypts NTLM messages even over HTTP, so the
guest keeps ``AllowUnencrypted`` off. The password is random per guest
(:meth:`Credentials.generate`); the seed creates the user with it.

All pywinrm and requests exceptions are translated in :class:`PyWinRMTransport`,
the one boundary; the handle itself only talks to the small
:class:`WinRMTransport` interface, so its logic is testable without a guest.
"""
from __future__ import annotations

import base64
import contextlib
import hashlib
import re
import secrets
import string
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from ..commands import ps_quote
from ..families import LOGIN_USER
from ..files import write_owner_only
from ..errors import CommandFailed, CommandTimeout, InfrastructureError, KvmError
from ..output import LineLog
from ..result import CommandResult
from .archive import OverLimit
from .ssh import HOST

POLL_SECONDS = 5  # longest single Receive long-poll: a timeout is noticed this late at most
PUT_CHUNK = 96 * 1024  # raw bytes per stdin Send (~171 KiB on the wire after two base64 passes)
GET_CHUNK = 384 * 1024  # raw bytes read per command
MAX_COMMAND_LINE = 8000  # cmd.exe refuses command lines over 8191 characters
CODEPAGE_UTF8 = 65001
PASSWORD_SYMBOLS = "-_.~+="  # no quote, caret, percent or ampersand: safe in any shell or URL
POWERSHELL = "powershell.exe -NoProfile -NonInteractive -ExecutionPolicy Bypass"
_PRELUDE = "$ProgressPreference = 'SilentlyContinue'\n"  # progress bars arrive as CLIXML on stderr
# like a shell script: the exit code is the last command's (a native one's own code)
_KEEP_EXIT_CODE = "\nif (-not $?) { if ($LASTEXITCODE) { exit $LASTEXITCODE } else { exit 1 } }"
_CLIXML_HEADER = "#< CLIXML"
_CLIXML_ESCAPE = re.compile(r"_x([0-9A-Fa-f]{4})_")


class WinRMError(InfrastructureError):
    """WinRM could not be used: the guest is unreachable, answered with a fault, or a file
    transfer arrived damaged."""


def require_pywinrm() -> None:
    """Raise :class:`WinRMError` saying how to install pywinrm when it is missing (an extra:
    only Windows guests need it), before a Windows guest is booted for nothing."""
    try:
        import winrm  # noqa: F401, PLC0415 - checked only for Windows guests
    except ImportError:
        raise WinRMError("Windows guests talk WinRM through pywinrm, which is not installed: "
                         "pip install 'pytest-kvm[winrm]'") from None


class WinRMAuthError(WinRMError):
    """The guest refused the credentials (expected while it boots: the seed creates the user)."""


class NoOutputYet(Exception):
    """A Receive long-poll ended without output; the command is still running."""


# -- credentials ------------------------------------------------------------------------
@dataclass(frozen=True)
class Credentials:
    user: str
    password: str

    @classmethod
    def generate(cls, user: str = LOGIN_USER) -> "Credentials":
        return cls(user, generate_password(user))

    def __repr__(self) -> str:  # never print the password (pytest shows reprs on failure)
        return f"Credentials(user={self.user!r}, password=<hidden>)"


def generate_password(user: str = LOGIN_USER, length: int = 24) -> str:
    """A random password meeting Windows' complexity rule (upper, lower, digit, symbol; not
    containing the user name), from ``secrets``: never a fixed default."""
    while True:
        chars = list(secrets.token_urlsafe(length)[:length])
        chars += [secrets.choice(string.ascii_uppercase), secrets.choice(string.ascii_lowercase),
                  secrets.choice(string.digits), secrets.choice(PASSWORD_SYMBOLS)]
        secrets.SystemRandom().shuffle(chars)
        password = "".join(chars)
        if user.lower() not in password.lower():
            return password


# -- PowerShell wrapping (pure) ---------------------------------------------------------------
def encode_powershell(script: str) -> str:
    """*script* as PowerShell's ``-EncodedCommand`` wants it: base64 of UTF-16LE."""
    return base64.b64encode(script.encode("utf-16-le")).decode("ascii")


def powershell_command(script: str, *, wrap: bool = True) -> str | None:
    """A cmd.exe command line running *script* (exit code: the script's ``exit``, else its
    last command's), or None if it would not fit on a command line. *wrap* False leaves
    the script alone (one made of ``begin``/``process``/``end`` blocks allows nothing else)."""
    if wrap:
        script = _PRELUDE + script + _KEEP_EXIT_CODE
    command = f"{POWERSHELL} -EncodedCommand {encode_powershell(script)}"
    return command if len(command) <= MAX_COMMAND_LINE else None


def stdin_powershell_command() -> str:
    """A command line running a script sent on stdin as base64 of UTF-8, for scripts too
    long for a command line. The script is dot-sourced, so its ``exit`` ends the process;
    the caller appends the exit-code epilogue to the script itself."""
    bootstrap = ("$text = [System.Text.Encoding]::UTF8.GetString("
                 "[System.Convert]::FromBase64String([Console]::In.ReadToEnd()))\n"
                 ". ([scriptblock]::Create($text))")
    return f"{POWERSHELL} -EncodedCommand {encode_powershell(_PRELUDE + bootstrap)}"


def clixml_to_text(stderr: str) -> str:
    """PowerShell's serialised error stream (``#< CLIXML`` and ``<Objs>`` documents) as the
    text it would have printed; anything else unchanged. Progress records are dropped."""
    if not stderr.startswith(_CLIXML_HEADER):
        return stderr
    lines = []
    for document in re.findall(r"<Objs\b.*?</Objs>", stderr, flags=re.DOTALL):
        try:
            root = ET.fromstring(document)
        except ET.ParseError:
            return stderr
        for element in root.iter():
            if element.tag.rpartition("}")[2] == "S" and element.get("S") and element.text:
                lines.append(_CLIXML_ESCAPE.sub(lambda m: chr(int(m.group(1), 16)), element.text))
    return "".join(lines).replace("\r\n", "\n")


def put_script(remote: str) -> str:
    """Decode base64 lines from stdin into *remote*; print the SHA-256 of what was written."""
    return "\n".join([
        "begin {",
        "    $ErrorActionPreference = 'Stop'",
        "    $ProgressPreference = 'SilentlyContinue'",
        f"    $fd = [System.IO.File]::Create({ps_quote(remote)})",
        "    $sha = [System.Security.Cryptography.SHA256]::Create()",
        "}",
        "process {",
        "    $bytes = [System.Convert]::FromBase64String($input)",
        "    [void]$sha.TransformBlock($bytes, 0, $bytes.Length, $bytes, 0)",
        "    $fd.Write($bytes, 0, $bytes.Length)",
        "}",
        "end {",
        "    $fd.Close()",
        "    [void]$sha.TransformFinalBlock((New-Object byte[] 0), 0, 0)",
        "    [System.BitConverter]::ToString($sha.Hash).Replace('-', '').ToLowerInvariant()",
        "}",
    ])


def get_chunk_script(remote: str, offset: int, length: int) -> str:
    """Print up to *length* bytes of *remote* from *offset*, as base64 (empty at the end)."""
    return "\n".join([
        "$ErrorActionPreference = 'Stop'",
        f"$fs = [System.IO.File]::Open({ps_quote(remote)}, 'Open', 'Read', 'ReadWrite')",
        "try {",
        f"    [void]$fs.Seek({int(offset)}, 'Begin')",
        f"    $buffer = New-Object byte[] {int(length)}",
        "    $total = 0",
        "    while ($total -lt $buffer.Length) {",
        "        $read = $fs.Read($buffer, $total, $buffer.Length - $total)",
        "        if ($read -le 0) { break }",
        "        $total += $read",
        "    }",
        "    [System.Convert]::ToBase64String($buffer, 0, $total)",
        "} finally { $fs.Close() }",
    ])


def hash_script(remote: str) -> str:
    return (f"(Get-FileHash -Algorithm SHA256 -LiteralPath {ps_quote(remote)}).Hash"
            ".ToLowerInvariant()")


def _chunks(path: Path, size: int, digest: "hashlib._Hash") -> Iterator[bytes]:
    """*path* as base64 lines of *size* raw bytes each, hashing as it reads."""
    with open(path, "rb") as stream:
        while data := stream.read(size):
            digest.update(data)
            yield base64.b64encode(data) + b"\r\n"


def _with_last(items: Iterable[bytes]) -> Iterator[tuple[bytes, bool]]:
    """Each item with whether it is the last; an empty input is one empty last item."""
    iterator = iter(items)
    try:
        current = next(iterator)
    except StopIteration:
        yield b"", True
        return
    for following in iterator:
        yield current, False
        current = following
    yield current, True


# -- transport ----------------------------------------------------------------------------
class WinRMTransport(Protocol):
    """The WinRS operations the handle needs; :class:`PyWinRMTransport` is the real one."""

    def open_shell(self) -> str: ...
    def start(self, shell_id: str, command: str, *, stdin: bool) -> str: ...
    def send(self, shell_id: str, command_id: str, data: bytes, *, end: bool) -> None: ...
    def receive(self, shell_id: str, command_id: str, *,
                wait: float) -> tuple[bytes, bytes, int, bool]: ...
    def terminate(self, shell_id: str, command_id: str) -> None: ...
    def close_shell(self, shell_id: str) -> None: ...
    def close(self) -> None: ...


class PyWinRMTransport:
    """WinRS over pywinrm's ``Protocol``; the one place its exceptions become ours."""

    def __init__(self, endpoint: str, credentials: Credentials, *, auth: str = "ntlm") -> None:
        require_pywinrm()
        from winrm.protocol import Protocol as WinRMProtocol

        self.endpoint = endpoint
        self._protocol = WinRMProtocol(
            endpoint, transport=auth, username=credentials.user, password=credentials.password,
            read_timeout_sec=POLL_SECONDS + 25, operation_timeout_sec=POLL_SECONDS + 15,
            # NTLM encrypts over HTTP; Basic cannot, and needs AllowUnencrypted in the guest
            message_encryption="never" if auth == "basic" else "auto",
            proxy=None,  # never route the 127.0.0.1 forward through an environment proxy
            ca_trust_path=None)  # plain HTTP: no CA bundle from the environment either

    @contextlib.contextmanager
    def _translated(self, what: str):
        import requests
        from winrm import exceptions as wx

        try:
            yield
        except wx.WinRMOperationTimeoutError:
            raise NoOutputYet() from None
        except wx.AuthenticationError as exc:
            raise WinRMAuthError(f"WinRM at {self.endpoint} refused the credentials ({what}): "
                                 f"{exc}") from exc
        except wx.WinRMTransportError as exc:
            if exc.code == 401:
                raise WinRMAuthError(f"WinRM at {self.endpoint} refused the credentials "
                                     f"({what}): HTTP 401") from exc
            raise WinRMError(f"WinRM at {self.endpoint} failed ({what}): {exc}") from exc
        except (wx.WinRMError, requests.exceptions.RequestException) as exc:
            raise WinRMError(f"WinRM at {self.endpoint} failed ({what}): "
                             f"{type(exc).__name__}: {exc}") from exc

    def open_shell(self) -> str:
        with self._translated("open shell"):
            return self._protocol.open_shell(codepage=CODEPAGE_UTF8, noprofile=True)

    def start(self, shell_id: str, command: str, *, stdin: bool) -> str:
        with self._translated("start command"):
            # stdin must not be a console for a process that reads piped data
            return self._protocol.run_command(shell_id, command, console_mode_stdin=not stdin)

    def send(self, shell_id: str, command_id: str, data: bytes, *, end: bool) -> None:
        with self._translated("send input"):
            self._protocol.send_command_input(shell_id, command_id, data, end=end)

    def receive(self, shell_id: str, command_id: str, *, wait: float) -> tuple[bytes, bytes, int, bool]:
        # the server holds a Receive for the operation timeout at most: that is our poll
        self._protocol.operation_timeout_sec = max(1, min(POLL_SECONDS, int(wait + 0.999)))
        with self._translated("receive output"):
            return self._protocol.get_command_output_raw(shell_id, command_id)

    def terminate(self, shell_id: str, command_id: str) -> None:
        with self._translated("terminate command"):
            self._protocol.cleanup_command(shell_id, command_id)

    def close_shell(self, shell_id: str) -> None:
        with self._translated("close shell"):
            self._protocol.close_shell(shell_id, close_session=False)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._protocol.transport.close_session()


# -- the handle ---------------------------------------------------------------------------
class WinRMClient:
    """Commands and files in a Windows guest over WinRM on ``127.0.0.1:port``.

    ``run`` executes a cmd.exe command line, ``run_ps`` a PowerShell script. Each
    command gets its own WinRS shell, deleted afterwards (that also ends anything it
    left running). Output is decoded as UTF-8 (the shell uses code page 65001) and
    its ``\\r\\n`` line ends become ``\\n``, so results read as on the other families.
    """

    def __init__(self, port: int, credentials: Credentials, *, auth: str = "ntlm",
                 transfer_timeout: float = 600.0, transport: WinRMTransport | None = None,
                 password_file: Path | None = None) -> None:
        """*password_file*: where :meth:`access` writes the password for a person (0600)."""
        self.port = port
        self.password_file = password_file
        self.credentials = credentials
        self.user = credentials.user
        self.transfer_timeout = transfer_timeout
        self._transport = transport or PyWinRMTransport(f"http://{HOST}:{port}/wsman", credentials,
                                                        auth=auth)
        self._lock = threading.Lock()
        self._connected = False
        self._closed = False

    # -- connection ---------------------------------------------------------------------
    def connect(self, timeout: float) -> None:
        """Prove that WinRM answers and takes our credentials (one trivial command).
        Raises :class:`WinRMAuthError` or :class:`WinRMError`: both are worth retrying
        while the guest boots."""
        try:
            result = self.run("echo pytest-kvm", timeout=timeout)
        except CommandTimeout as exc:
            raise WinRMError(f"WinRM on 127.0.0.1:{self.port} did not run a command "
                             f"within {timeout:g} s") from exc
        if "pytest-kvm" not in result.stdout:
            raise WinRMError(f"WinRM on 127.0.0.1:{self.port} answered {result!r} to an echo")
        self._connected = True

    @property
    def connected(self) -> bool:
        return self._connected and not self._closed

    @property
    def active(self) -> bool:
        """WinRM is HTTP: no connection to drop; usable until closed."""
        return not self._closed

    def access(self) -> str:
        """The endpoint, the user and a 0600 file holding the password (never the password)."""
        where = "not written"
        if self.password_file is not None:
            write_owner_only(self.password_file, self.credentials.password.encode())
            where = f"in {self.password_file}"
        return (f"winrm http://{HOST}:{self.port}/wsman user {self.user} password {where}")

    def ssh_command(self) -> list[str]:
        raise KvmError(f"the guest on {HOST}:{self.port} is reached over WinRM and has no SSH; "
                       f"see access()")

    def close(self) -> None:
        self._closed = True
        self._transport.close()

    # -- commands -----------------------------------------------------------------------
    def run(self, command: str, *, timeout: float, check: bool = False,
            input: bytes | None = None, log: LineLog | None = None) -> CommandResult:
        """Run *command* in cmd.exe; *input* goes to its stdin, *log* gets output as it arrives."""
        return self._finish(self._execute(command, timeout=timeout, shown=command,
                                          stdin=[input] if input else None, log=log), check)

    def run_ps(self, script: str, *, timeout: float, check: bool = False) -> CommandResult:
        """Run PowerShell *script*; the exit code is its ``exit N``, else its last command's.
        stderr is the error text PowerShell would have printed, not its CLIXML."""
        command = powershell_command(script)
        if command is not None:
            result = self._execute(command, timeout=timeout, shown=script)
        else:
            payload = base64.b64encode((script + _KEEP_EXIT_CODE).encode("utf-8"))
            result = self._execute(stdin_powershell_command(), timeout=timeout, shown=script,
                                   stdin=[payload])
        result = CommandResult(result.command, result.exit_code, result.stdout,
                               clixml_to_text(result.stderr))
        return self._finish(result, check)

    @staticmethod
    def _finish(result: CommandResult, check: bool) -> CommandResult:
        if check and not result.ok:
            raise CommandFailed(result)
        return result

    def _execute(self, command: str, *, timeout: float, shown: str,
                 stdin: Iterable[bytes] | None = None, log: LineLog | None = None) -> CommandResult:
        """Run one command line in a fresh shell; *shown* is what results and errors call it."""
        if self._closed:
            raise WinRMError(f"WinRM handle for 127.0.0.1:{self.port} is closed")
        deadline = time.monotonic() + timeout
        out, err = bytearray(), bytearray()

        def result(code: int) -> CommandResult:
            return CommandResult(shown, code, _text(out), _text(err))

        with self._lock:
            shell_id = self._transport.open_shell()
            try:
                command_id = self._transport.start(shell_id, command, stdin=stdin is not None)
                try:
                    send_error: WinRMError | None = None
                    if stdin is not None:
                        for chunk, last in _with_last(stdin):
                            if time.monotonic() >= deadline:
                                raise CommandTimeout(result(-1), timeout)
                            try:
                                self._transport.send(shell_id, command_id, chunk, end=last)
                            except WinRMError as exc:
                                # the process may have quit early (its error is in its output),
                                # then it ends within one poll; one still running waits for
                                # input that never came: the transfer failed, not the command
                                send_error = exc
                                deadline = min(deadline, time.monotonic() + POLL_SECONDS)
                                break
                    while True:
                        remaining = deadline - time.monotonic()
                        if remaining <= 0:
                            if send_error is not None:
                                raise WinRMError(
                                    f"WinRM at {HOST}:{self.port}: sending input to {shown!r} "
                                    f"failed and the command did not end ({send_error})"
                                ) from send_error
                            raise CommandTimeout(result(-1), timeout)
                        try:
                            stdout, stderr, code, done = self._transport.receive(
                                shell_id, command_id, wait=min(POLL_SECONDS, remaining))
                        except NoOutputYet:
                            continue
                        out += stdout
                        err += stderr
                        if log is not None:
                            log.feed("stdout", stdout)
                            log.feed("stderr", stderr)
                        if done:
                            break
                finally:
                    with contextlib.suppress(WinRMError):
                        self._transport.terminate(shell_id, command_id)
            finally:
                with contextlib.suppress(WinRMError):
                    self._transport.close_shell(shell_id)
                if log is not None:
                    log.close()
        return result(code)

    # -- files ----------------------------------------------------------------------------
    def put(self, local: Path, remote_path: str, *, exclude: Sequence[str] = (),
            timeout: float | None = None) -> None:
        """Copy a local file to *remote_path* in the guest (a Windows path), verified by SHA-256."""
        local = Path(local)
        if local.is_dir():
            raise KvmError(_NO_TREES.format(what=f"put {local}"))
        digest = hashlib.sha256()
        command = powershell_command(put_script(remote_path), wrap=False)
        assert command is not None  # the script is short: only the path varies
        result = self._execute(command, timeout=timeout or self.transfer_timeout,
                               shown=f"put {local} -> {remote_path}",
                               stdin=_chunks(local, PUT_CHUNK, digest))
        self._finish(CommandResult(result.command, result.exit_code, result.stdout,
                                   clixml_to_text(result.stderr)), check=True)
        remote_digest = result.stdout.strip().lower()
        if remote_digest != digest.hexdigest():
            raise WinRMError(f"put {local} -> {remote_path}: the guest wrote sha256 {remote_digest!r}, "
                             f"the file has {digest.hexdigest()}")

    def get(self, remote_path: str, local: Path, *, exclude: Sequence[str] = (),
            timeout: float | None = None, as_root: Callable[[str], str] | None = None,
            max_bytes: int | None = None) -> None:
        """Copy the file *remote_path* from the guest to *local*, verified by SHA-256 (the
        login is an administrator: *as_root* changes nothing; a directory tree needs SSH);
        *max_bytes*: :class:`~.archive.OverLimit` once more than that came."""
        local = Path(local)
        deadline = time.monotonic() + (timeout or self.transfer_timeout)
        digest = hashlib.sha256()
        offset = 0
        with open(local, "wb") as stream:
            while True:
                data = base64.b64decode(self._ps_checked(
                    get_chunk_script(remote_path, offset, GET_CHUNK), deadline,
                    shown=f"get {remote_path} (from byte {offset})").strip())
                stream.write(data)
                digest.update(data)
                offset += len(data)
                if max_bytes is not None and offset > max_bytes:
                    raise OverLimit(f"get {remote_path}: more than {max_bytes} bytes: stopped at "
                                    "the size limit")
                if len(data) < GET_CHUNK:
                    break
        remote_digest = self._ps_checked(hash_script(remote_path), deadline,
                                         shown=f"sha256 of {remote_path}").strip().lower()
        if remote_digest != digest.hexdigest():
            raise WinRMError(f"get {remote_path} -> {local}: received sha256 {digest.hexdigest()}, "
                             f"the guest's file has {remote_digest!r} (did it change meanwhile?)")

    def _ps_checked(self, script: str, deadline: float, *, shown: str) -> str:
        command = powershell_command(script)
        assert command is not None
        result = self._execute(command, timeout=max(deadline - time.monotonic(), 0.001), shown=shown)
        result = CommandResult(result.command, result.exit_code, result.stdout,
                               clixml_to_text(result.stderr))
        self._finish(result, check=True)
        return result.stdout

    def __repr__(self) -> str:
        return f"<WinRMClient {self.user}@127.0.0.1:{self.port}>"


_NO_TREES = ("{what}: directory trees need an SSH guest; over WinRM copy an archive file and "
             "unpack it with run_ps('Expand-Archive ...')")


def _text(data: bytes | bytearray) -> str:
    return bytes(data).decode("utf-8", errors="replace").replace("\r\n", "\n")
