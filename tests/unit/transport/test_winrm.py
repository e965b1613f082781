"""The WinRM handle's own logic against a fake transport (no Windows here), and the one
pywinrm boundary against a local HTTP server on 127.0.0.1."""
import base64
import hashlib
import http.server
import re
import shlex
import string
import sys
import threading

import pytest

from pytest_kvm.transport import winrm
from pytest_kvm.errors import CommandFailed, CommandTimeout, InfrastructureError, KvmError
from pytest_kvm.result import CommandResult
from pytest_kvm.transport.ssh import SshClient
from pytest_kvm.transport.winrm import (Credentials, NoOutputYet, WinRMAuthError, WinRMClient, WinRMError,
                              clixml_to_text, powershell_command)


def decode_command(command):
    """The PowerShell script inside a powershell.exe -EncodedCommand command line."""
    match = re.search(r"-EncodedCommand (\S+)$", command)
    assert match, command
    return base64.b64decode(match.group(1)).decode("utf-16-le")


class FakeTransport:
    """A WinRS server in memory: *behave(command, stdin_bytes)* answers each command with a
    list of receive results (``(stdout, stderr, code, done)`` tuples or ``NoOutputYet``)."""

    def __init__(self, behave):
        self.behave = behave
        self.calls = []
        self.shells = set()
        self.closed = False
        self.stdin = {}
        self.replies = {}
        self.commands = {}

    def open_shell(self):
        shell = f"shell-{len(self.calls)}"
        self.shells.add(shell)
        self.calls.append(("open_shell",))
        return shell

    def start(self, shell_id, command, *, stdin):
        assert shell_id in self.shells
        command_id = f"cmd-{len(self.calls)}"
        self.calls.append(("start", command, stdin))
        self.commands[command_id] = command
        self.stdin[command_id] = bytearray()
        if not stdin:
            self.replies[command_id] = list(self.behave(command, b""))
        return command_id

    def send(self, shell_id, command_id, data, *, end):
        self.calls.append(("send", len(data), end))
        self.stdin[command_id] += data
        if end:
            self.replies[command_id] = list(self.behave(self.commands[command_id],
                                                        bytes(self.stdin[command_id])))

    def receive(self, shell_id, command_id, *, wait):
        self.calls.append(("receive", wait))
        reply = self.replies[command_id].pop(0)
        if isinstance(reply, Exception) or reply is NoOutputYet:
            raise reply() if reply is NoOutputYet else reply
        return reply

    def terminate(self, shell_id, command_id):
        self.calls.append(("terminate",))

    def close_shell(self, shell_id):
        self.shells.remove(shell_id)
        self.calls.append(("close_shell",))

    def close(self):
        self.closed = True


def client(behave, **kwargs):
    transport = FakeTransport(behave)
    return WinRMClient(45985, Credentials("pytest", "pw"), transport=transport, **kwargs), transport


# -- run ----------------------------------------------------------------------------------
def test_run_collects_streams_and_normalises_line_ends():
    handle, transport = client(lambda cmd, _: [(b"a\r\n", b"", 0, False), NoOutputYet,
                                               (b"b\r\n", b"warn\r\n", 3, True)])
    result = handle.run("dir C:\\", timeout=30)
    assert result == CommandResult("dir C:\\", 3, "a\nb\n", "warn\n")
    assert not result.ok
    assert ("start", "dir C:\\", False) in transport.calls  # the command line goes to cmd.exe as is
    assert transport.calls[-2:] == [("terminate",), ("close_shell",)]
    assert transport.shells == set()  # one shell per command, always deleted


def test_run_check_raises_command_failed_with_the_result():
    handle, _ = client(lambda cmd, _: [(b"out", b"boom", 1, True)])
    with pytest.raises(CommandFailed) as info:
        handle.run("exit /b 1", timeout=5, check=True)
    assert info.value.result.exit_code == 1 and info.value.result.stderr == "boom"
    assert "boom" in str(info.value)


def test_run_timeout_keeps_partial_output_and_cleans_up(monkeypatch):
    clock = iter(range(0, 1000, 4))
    monkeypatch.setattr(winrm.time, "monotonic", lambda: next(clock))
    handle, transport = client(lambda cmd, _: [(b"started\r\n", b"", -1, False)] + [NoOutputYet] * 50)
    with pytest.raises(CommandTimeout) as info:
        handle.run("ping -t localhost", timeout=10)
    assert info.value.result.stdout == "started\n"
    assert info.value.result.exit_code == -1 and info.value.timeout == 10
    waits = [call[1] for call in transport.calls if call[0] == "receive"]
    assert waits and all(0 < wait <= winrm.POLL_SECONDS for wait in waits)
    assert ("terminate",) in transport.calls and transport.shells == set()


def test_connect_proves_a_command_runs():
    handle, _ = client(lambda cmd, _: [(b"pytest-kvm\r\n", b"", 0, True)])
    assert not handle.connected
    handle.connect(timeout=5)
    assert handle.connected
    handle.close()
    assert not handle.connected
    with pytest.raises(WinRMError, match="closed"):
        handle.run("ver", timeout=5)


def test_connect_passes_auth_errors_on():
    def refuse(cmd, _):
        raise WinRMAuthError("refused")
    handle, _ = client(refuse)
    with pytest.raises(WinRMAuthError):
        handle.connect(timeout=5)
    assert not handle.connected


# -- PowerShell -----------------------------------------------------------------------------
def test_run_ps_encodes_utf16le_and_keeps_native_exit_codes():
    seen = []

    def behave(cmd, _):
        seen.append(cmd)
        return [(b"ok\r\n", b"", 0, True)]

    handle, _ = client(behave)
    result = handle.run_ps("Write-Output 'é'", timeout=5)
    assert result.command == "Write-Output 'é'" and result.stdout == "ok\n"
    command = seen[0]
    assert command.startswith("powershell.exe -NoProfile -NonInteractive -ExecutionPolicy Bypass "
                              "-EncodedCommand ")
    script = decode_command(command)
    assert script.startswith("$ProgressPreference = 'SilentlyContinue'\n")
    assert "Write-Output 'é'\n" in script
    assert script.rstrip().endswith("exit 1 } }")
    assert "exit $LASTEXITCODE" in script


def test_run_ps_turns_clixml_into_text():
    clixml = ('#< CLIXML\r\n<Objs Version="1.1.0.1" xmlns="http://schemas.microsoft.com/powershell/2004/04">'
              '<Obj S="progress" RefId="0"><TN RefId="0"><T>System.Management.Automation.PSCustomObject'
              '</T></TN></Obj><S S="Error">Get-Item : Cannot find path_x000D__x000A_</S>'
              '<S S="Error">+ CategoryInfo : ObjectNotFound_x000D__x000A_</S></Objs>')
    handle, _ = client(lambda cmd, _: [(b"", clixml.encode(), 1, True)])
    result = handle.run_ps("Get-Item nope", timeout=5)
    assert result.stderr == "Get-Item : Cannot find path\n+ CategoryInfo : ObjectNotFound\n"
    assert result.exit_code == 1


def test_clixml_leaves_plain_text_and_broken_documents_alone():
    assert clixml_to_text("plain error\n") == "plain error\n"
    broken = "#< CLIXML\r\n<Objs><S S='Error'>unterminated</Objs>"
    assert clixml_to_text(broken) == broken


def test_long_script_goes_through_stdin_not_the_command_line():
    script = "Write-Output 'x'\n" * 2000  # far over cmd.exe's 8191 characters once encoded
    assert powershell_command(script) is None
    handle, transport = client(lambda cmd, stdin: [(base64.b64decode(stdin), b"", 0, True)])
    result = handle.run_ps(script, timeout=5)
    start = next(call for call in transport.calls if call[0] == "start")
    assert len(start[1]) <= winrm.MAX_COMMAND_LINE and start[2] is True  # stdin, not a console
    assert "[Console]::In.ReadToEnd()" in decode_command(start[1])
    assert result.stdout.startswith(script)  # the fake echoes the decoded script back
    assert "exit $LASTEXITCODE" in result.stdout


# -- files --------------------------------------------------------------------------------------
class FakeFiles:
    """Just enough of a Windows guest to answer the put/get/hash scripts."""

    def __init__(self):
        self.files = {}
        self.corrupt = False

    def __call__(self, command, stdin):
        script = decode_command(command)
        path = re.search(r"::(?:Create|Open)\('([^']*)'|-LiteralPath '([^']*)'", script)
        path = path.group(1) or path.group(2)
        if "FromBase64String($input)" in script:  # put: base64 lines on stdin
            data = b"".join(base64.b64decode(line) for line in stdin.split(b"\r\n") if line)
            if self.corrupt:
                data = data[:-1]
            self.files[path] = data
            return [(hashlib.sha256(data).hexdigest().encode() + b"\r\n", b"", 0, True)]
        if path not in self.files:
            return [(b"", f"Cannot find {path}".encode(), 1, True)]
        data = self.files[path]
        if "Get-FileHash" in script:
            return [(hashlib.sha256(data).hexdigest().upper().encode() + b"\r\n", b"", 0, True)]
        offset = int(re.search(r"Seek\((\d+),", script).group(1))
        length = int(re.search(r"New-Object byte\[\] (\d+)", script).group(1))
        return [(base64.b64encode(data[offset:offset + length]) + b"\r\n", b"", 0, True)]


@pytest.mark.parametrize("size", [0, 1, winrm.PUT_CHUNK, winrm.PUT_CHUNK * 3 + 17])
def test_put_streams_chunks_and_verifies(tmp_path, size):
    payload = bytes((i * 7) % 256 for i in range(size))
    (tmp_path / "in.bin").write_bytes(payload)
    files = FakeFiles()
    handle, transport = client(files)
    handle.put(tmp_path / "in.bin", "C:\\Users\\pytest\\in.bin")
    assert files.files["C:\\Users\\pytest\\in.bin"] == payload
    sends = [call for call in transport.calls if call[0] == "send"]
    assert len(sends) == max(1, -(-size // winrm.PUT_CHUNK))
    assert [end for _, _, end in sends] == [False] * (len(sends) - 1) + [True]
    assert all(length <= winrm.PUT_CHUNK * 4 // 3 + 4 for _, length, _ in sends)
    start = next(call for call in transport.calls if call[0] == "start")
    assert start[2] is True and len(start[1]) <= winrm.MAX_COMMAND_LINE
    assert decode_command(start[1]).startswith("begin {")  # begin/process/end: nothing before it


def test_put_refuses_a_damaged_copy(tmp_path):
    (tmp_path / "in.bin").write_bytes(b"payload")
    files = FakeFiles()
    files.corrupt = True
    handle, _ = client(files)
    with pytest.raises(WinRMError, match="sha256"):
        handle.put(tmp_path / "in.bin", "C:\\x")


def test_put_quotes_the_remote_path(tmp_path):
    (tmp_path / "in.bin").write_bytes(b"x")
    files = FakeFiles()
    handle, transport = client(files)
    handle.put(tmp_path / "in.bin", "C:\\it's here.txt")
    start = next(call for call in transport.calls if call[0] == "start")
    assert "[System.IO.File]::Create('C:\\it''s here.txt')" in decode_command(start[1])


@pytest.mark.parametrize("size", [0, 5, winrm.GET_CHUNK, winrm.GET_CHUNK * 2 + 3])
def test_get_reads_chunks_and_verifies(tmp_path, size):
    files = FakeFiles()
    files.files["C:\\out.bin"] = bytes((i * 13) % 256 for i in range(size))
    handle, transport = client(files)
    handle.get("C:\\out.bin", tmp_path / "out.bin")
    assert (tmp_path / "out.bin").read_bytes() == files.files["C:\\out.bin"]
    reads = [call for call in transport.calls if call[0] == "start"]
    assert len(reads) == size // winrm.GET_CHUNK + 1 + 1  # the chunks, then the hash


def test_get_of_a_missing_file_is_a_command_failure(tmp_path):
    handle, _ = client(FakeFiles())
    with pytest.raises(CommandFailed) as info:
        handle.get("C:\\nope", tmp_path / "x")
    assert "Cannot find C:\\nope" in info.value.result.stderr
    assert info.value.result.command.startswith("get C:\\nope")


def test_put_of_an_early_failing_script_reports_its_error(tmp_path):
    (tmp_path / "in.bin").write_bytes(b"x" * (winrm.PUT_CHUNK * 2))

    class Quits(FakeTransport):
        def send(self, shell_id, command_id, data, *, end):
            self.calls.append(("send", len(data), end))
            self.replies[command_id] = [(b"", b"Access denied", 1, True)]
            raise WinRMError("the pipe is closed")

    transport = Quits(None)
    handle = WinRMClient(1, Credentials("pytest", "pw"), transport=transport)
    with pytest.raises(CommandFailed, match="Access denied"):
        handle.put(tmp_path / "in.bin", "C:\\Windows\\x")
    assert len([c for c in transport.calls if c[0] == "send"]) == 1


def test_a_send_error_under_a_running_command_is_infrastructure_not_its_failure(tmp_path, monkeypatch):
    """The input never arrived and the command still waits for it: the transfer failed
    (an InfrastructureError), within one poll, not a CommandTimeout at the command's limit."""
    (tmp_path / "in.bin").write_bytes(b"x" * (winrm.PUT_CHUNK * 2))

    class Drops(FakeTransport):
        def send(self, shell_id, command_id, data, *, end):
            self.calls.append(("send", len(data), end))
            self.replies[command_id] = [NoOutputYet] * 1000  # still waiting for its stdin
            raise WinRMError("connection reset by peer")

    clock = iter(range(0, 100000))  # each look at the clock: one second later
    monkeypatch.setattr(winrm.time, "monotonic", lambda: next(clock))
    transport = Drops(None)
    handle = WinRMClient(1, Credentials("pytest", "pw"), transport=transport)
    with pytest.raises(WinRMError, match="sending input .* failed and the command did not end") as info:
        handle.put(tmp_path / "in.bin", "C:\\x", timeout=3600)
    assert isinstance(info.value, InfrastructureError) and not isinstance(info.value, CommandTimeout)
    assert "connection reset by peer" in str(info.value)
    assert len([c for c in transport.calls if c[0] == "receive"]) <= winrm.POLL_SECONDS  # not the hour
    assert ("terminate",) in transport.calls and transport.shells == set()


def test_handles_say_what_their_transport_cannot_do(tmp_path):
    handle, _ = client(lambda cmd, _: [])
    (tmp_path / "tree").mkdir()
    with pytest.raises(KvmError, match="directory trees need an SSH guest"):
        handle.put(tmp_path / "tree", "C:\\tree")
    with pytest.raises(KvmError, match="has no SSH; see access"):
        handle.ssh_command()
    ssh = SshClient(2222, "pytest", tmp_path / "key", tmp_path / "known_hosts")
    with pytest.raises(KvmError, match="run_ps needs a Windows guest"):
        ssh.run_ps("Get-Date", timeout=5)
    assert shlex.split(ssh.access()) == ssh.ssh_command()
    assert ssh.ssh_command()[-1] == "pytest@127.0.0.1" and "StrictHostKeyChecking=yes" in ssh.ssh_command()


def test_winrm_access_names_the_password_file_never_the_password(tmp_path):
    handle = WinRMClient(45986, Credentials("pytest", "s3cret-Passw0rd"), transport=FakeTransport(None),
                         password_file=tmp_path / "winrm-password")
    text = handle.access()
    assert "s3cret" not in text and str(tmp_path / "winrm-password") in text
    assert (tmp_path / "winrm-password").read_text() == "s3cret-Passw0rd"
    assert (tmp_path / "winrm-password").stat().st_mode & 0o777 == 0o600


# -- credentials --------------------------------------------------------------------------------
def test_passwords_are_random_complex_and_hidden():
    passwords = {winrm.generate_password() for _ in range(50)}
    assert len(passwords) == 50
    for password in passwords:
        assert len(password) >= 24
        assert any(c in string.ascii_uppercase for c in password)
        assert any(c in string.ascii_lowercase for c in password)
        assert any(c in string.digits for c in password)
        assert any(c in winrm.PASSWORD_SYMBOLS for c in password)
        assert not set(password) & set("'\"`$%^&|<>!")
        assert "pytest" not in password.lower()
    credentials = Credentials.generate()
    assert credentials.user == "pytest"
    assert credentials.password not in repr(credentials) and "hidden" in repr(credentials)


# -- the pywinrm boundary -------------------------------------------------------------------------
class _Refuse(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.send_response(401)
        self.send_header("WWW-Authenticate", 'Basic realm="WSMAN"')
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


def test_pywinrm_boundary_maps_401_and_ignores_proxy_environment(monkeypatch):
    # an environment proxy that does not exist: using it would be a connection error
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")
    monkeypatch.setenv("http_proxy", "http://127.0.0.1:9")
    server = http.server.HTTPServer(("127.0.0.1", 0), _Refuse)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        transport = winrm.PyWinRMTransport(f"http://127.0.0.1:{server.server_port}/wsman",
                                           Credentials("pytest", "wrong"), auth="basic")
        with pytest.raises(WinRMAuthError, match="refused the credentials"):
            transport.open_shell()
    finally:
        server.shutdown()
        server.server_close()


def test_pywinrm_boundary_maps_unreachable_and_timeouts():
    import requests
    from winrm import exceptions as wx

    transport = winrm.PyWinRMTransport("http://127.0.0.1:1/wsman", Credentials("u", "p"))

    class Protocol:
        operation_timeout_sec = 20

        def __init__(self, error):
            self.error = error

        def get_command_output_raw(self, shell_id, command_id):
            raise self.error

    for error, expected in [(wx.WinRMOperationTimeoutError(), NoOutputYet),
                            (requests.exceptions.ConnectionError("reset"), WinRMError),
                            (wx.WinRMTransportError("http", 500, "boom"), WinRMError),
                            (wx.WinRMTransportError("http", 401, ""), WinRMAuthError),
                            (wx.InvalidCredentialsError("no"), WinRMAuthError)]:
        transport._protocol = Protocol(error)
        with pytest.raises(expected):
            transport.receive("s", "c", wait=2.2)
        assert transport._protocol.operation_timeout_sec == 3  # the poll follows the wait


def test_without_pywinrm_a_windows_guest_says_which_extra_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "winrm", None)  # import winrm -> ImportError
    with pytest.raises(WinRMError, match=r"pip install 'pytest-kvm\[winrm\]'"):
        winrm.require_pywinrm()
    with pytest.raises(WinRMError, match="pywinrm"):
        winrm.PyWinRMTransport("http://127.0.0.1:1/wsman", Credentials("pytest", "pw"))
