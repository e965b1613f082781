"""What ``guest.run(command, sudo=, env=, cwd=)`` sends: the user's command wrapped for the
family's shell and privilege tool, every value quoted, never pasted raw.

POSIX families (``sh``/``bash``): ``[sudo -n] [env K=V ...] SHELL -c 'cd DIR && COMMAND'``,
each word quoted with :func:`shlex.quote`, so a value holding quotes, spaces or ``$``
reaches the command unchanged. Without any option the command is sent as it is (the
login shell runs it, as over ``ssh host COMMAND``).

Windows (``cmd.exe``): ``cd /d "DIR" && set "K=V" && COMMAND``; the WinRM user is an
administrator already, so ``sudo`` changes nothing. cmd.exe has no quoting that keeps
``"``, ``%`` or a line break literal, so such values are refused.
"""
from __future__ import annotations

import re
import shlex
from collections.abc import Mapping

from .errors import KvmError

ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_CMD_UNSAFE = re.compile(r'["%\r\n]')


class CommandSpecError(KvmError, ValueError):
    """A ``run()`` option that cannot be expressed safely (the message names it)."""


def _check_env(env: Mapping[str, str]) -> dict[str, str]:
    checked = {}
    for name, value in env.items():
        if not isinstance(name, str) or not ENV_NAME.match(name):
            raise CommandSpecError(f"env: {name!r} is not a valid environment variable name")
        if not isinstance(value, str):
            raise CommandSpecError(f"env: the value of {name} must be a string, not "
                                   f"{type(value).__name__}")
        checked[name] = value
    return checked


def wrap(command: str, *, shell: str, privilege: str | None, sudo: bool = False,
         env: Mapping[str, str] | None = None, cwd: str | None = None) -> str:
    """*command* as the guest's handle must send it to run with root rights (*sudo*),
    extra environment variables (*env*) and working directory (*cwd*)."""
    env = _check_env(env or {})
    if cwd is not None and (not isinstance(cwd, str) or not cwd):
        raise CommandSpecError(f"cwd must be a non-empty path string, not {cwd!r}")
    if shell == "cmd.exe":
        return _wrap_cmd(command, env=env, cwd=cwd)
    if not (sudo or env or cwd):
        return command
    inner = f"cd {shlex.quote(cwd)} && {command}" if cwd else command
    words: list[str] = []
    if sudo and privilege:
        words += [privilege, "-n"]
    if env:
        words += ["env", *(f"{name}={value}" for name, value in env.items())]
    words += [shell, "-c", inner]
    return shlex.join(words)


def _wrap_cmd(command: str, *, env: Mapping[str, str], cwd: str | None) -> str:
    parts = []
    if cwd is not None:
        if _CMD_UNSAFE.search(cwd):
            raise CommandSpecError(f"cwd {cwd!r}: cmd.exe cannot take '\"', '%' or line breaks")
        parts.append(f'cd /d "{cwd}"')
    for name, value in env.items():
        if _CMD_UNSAFE.search(value):
            raise CommandSpecError(f"env {name}: cmd.exe cannot take '\"', '%' or line breaks "
                                   f"in a value")
        parts.append(f'set "{name}={value}"')
    return " && ".join([*parts, command])


def describe_options(*, sudo: bool = False, env: Mapping[str, str] | None = None,
                     cwd: str | None = None) -> str:
    """The options of a ``run()`` for its log line; environment values are left out (they may
    be secrets)."""
    parts = (["sudo"] if sudo else []) + ([f"cwd={cwd}"] if cwd else []) \
        + ([f"env: {', '.join(env)}"] if env else [])
    return f"  ({'; '.join(parts)})" if parts else ""
