"""run()'s options as the guest's shell receives them: quoting and the log line."""
import logging
import shlex
import subprocess

import pytest

from pytest_kvm.commands import CommandSpecError, describe_options, wrap
from pytest_kvm.output import LineLog

TRICKY = "it's a \"quoted\" $HOME `x` with  spaces"


def sh(command: str) -> str:
    """What a POSIX shell makes of *command* (our wrap uses bash/sh -c: both here)."""
    return subprocess.run(["sh", "-c", command], capture_output=True, text=True, check=True).stdout


def test_no_option_leaves_the_command_alone():
    assert wrap("echo $HOME", shell="bash", privilege="sudo") == "echo $HOME"


def test_env_and_cwd_values_arrive_unchanged(tmp_path):
    odd = tmp_path / "dir with 'q' $x"
    odd.mkdir()
    command = wrap('printf "%s|" "$A" "$B"; pwd', shell="sh", privilege="sudo",
                   env={"A": TRICKY, "B": "$(id)"}, cwd=str(odd))
    assert sh(command) == f"{TRICKY}|$(id)|{odd}\n"


def test_sudo_goes_first_through_the_family_tool():
    assert shlex.split(wrap("id", shell="bash", privilege="sudo", sudo=True)) == \
        ["sudo", "-n", "bash", "-c", "id"]
    assert shlex.split(wrap("id", shell="sh", privilege="doas", sudo=True, env={"A": "1"})) == \
        ["doas", "-n", "env", "A=1", "sh", "-c", "id"]


@pytest.mark.parametrize("env", [{"1A": "x"}, {"A-B": "x"}, {"A": 3}])
def test_bad_env_is_refused(env):
    with pytest.raises(CommandSpecError, match="env"):
        wrap("true", shell="sh", privilege=None, env=env)


def test_windows_cmd_form_and_refusals():
    assert wrap("dir", shell="cmd.exe", privilege=None, sudo=True, env={"A": "b c"},
                cwd="C:\\Temp") == 'cd /d "C:\\Temp" && set "A=b c" && dir'
    with pytest.raises(CommandSpecError, match="cmd.exe"):
        wrap("dir", shell="cmd.exe", privilege=None, env={"A": '"'})
    with pytest.raises(CommandSpecError, match="cmd.exe"):
        wrap("dir", shell="cmd.exe", privilege=None, cwd="C:\\%TEMP%")


def test_log_line_names_env_but_not_values():
    text = describe_options(sudo=True, env={"TOKEN": "secret"}, cwd="/src")
    assert "TOKEN" in text and "secret" not in text and "sudo" in text and "/src" in text
    assert describe_options() == ""


def test_line_log_splits_chunks_into_lines(caplog):
    caplog.set_level(logging.INFO, logger="t")
    log = LineLog(logging.getLogger("t"))
    for chunk in (b"a", b"b\nc", b"\n", b"tail"):
        log.feed("stdout", chunk)
    log.feed("stderr", b"oops\r\n")
    log.close()
    assert [r.getMessage() for r in caplog.records] == ["ab", "c", "[stderr] oops", "tail"]
