"""What ``guest.run(command, sudo=, env=, cwd=)`` sends: the user's command wrapped for the
family's shell and privilege tool, every value quoted, never pasted raw.

POSIX families (``sh``/``bash``): ``[ROOT] [env K=V ...] SHELL -c 'cd DIR && COMMAND'``,
each word quoted with :func:`shlex.quote`, so a value holding quotes, spaces or ``$``
reaches the command unchanged. Without any option the command is sent as it is (the
login shell runs it, as over ``ssh host COMMAND``). ``ROOT`` comes from the family's
privilege tool (:data:`PRIVILEGES`), and nowhere else: ``sudo -n`` / ``doas -n`` in front,
or for ``su`` the rest as one argument, ``su -m root -c '...'``. A family whose login
cannot become root refuses ``sudo=True`` instead of running the command unprivileged.

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
#: how a login user runs a command as root: a tool that takes the command as words
#: (``sudo -n``, ``doas -n``: never a password prompt), ``su`` (FreeBSD base: a ``wheel``
#: member becomes root without a password while root has none), or ``admin`` (the login
#: is root or an Administrator already). A family may also have None: it cannot.
PRIVILEGES = ("sudo", "doas", "su", "admin")


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
    """*command* as the guest's handle must send it to run with root rights (*sudo*, through
    *privilege*: one of :data:`PRIVILEGES` or None), extra environment variables (*env*) and
    working directory (*cwd*)."""
    env = _check_env(env or {})
    if cwd is not None and (not isinstance(cwd, str) or not cwd):
        raise CommandSpecError(f"cwd must be a non-empty path string, not {cwd!r}")
    if shell == "cmd.exe":
        return _wrap_cmd(command, env=env, cwd=cwd)
    if sudo:
        _check_privilege(privilege)
    if not (sudo or env or cwd):
        return command
    inner = f"cd {shlex.quote(cwd)} && {command}" if cwd else command
    words: list[str] = []
    if env:
        words += ["env", *(f"{name}={value}" for name, value in env.items())]
    words += [shell, "-c", inner]
    if not sudo or privilege == "admin":
        return shlex.join(words)
    if privilege == "su":
        # su passes the words after the login name to the shell: -m keeps the login user's
        # shell (the family's), its environment and directory, as sudo keeps the directory
        return shlex.join(["su", "-m", "root", "-c", shlex.join(words)])
    return shlex.join([str(privilege), "-n", *words])


def _check_privilege(privilege: str | None) -> None:
    if privilege is None:
        raise CommandSpecError("sudo=True: this guest's login user has no way to become root "
                               "(its family's privilege tool is None)")
    if privilege not in PRIVILEGES:
        raise CommandSpecError(f"unknown privilege tool {privilege!r}; known: "
                               f"{', '.join(PRIVILEGES)}")


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


_PS_QUOTES = ("'", "\u2018", "\u2019", "\u201a", "\u201b")  # PowerShell closes a literal at each


def ps_quote(value: str) -> str:
    """*value* as a PowerShell single-quoted (verbatim) string literal."""
    if "\x00" in value:
        raise CommandSpecError("a NUL character cannot be passed to PowerShell")
    for quote in _PS_QUOTES:
        value = value.replace(quote, quote * 2)
    return f"'{value}'"
