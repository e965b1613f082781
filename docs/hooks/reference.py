"""MkDocs hook: the reference pages' tables that the code already states, generated from it at
build time so they cannot drift: every option and ini key from ``pytest_addoption``, every
marker keyword from :func:`pytest_kvm.spec.guest_request`, every ``pytest-kvm`` command from
its argparse parser.

A page asks for one with a line ``<!-- generated: NAME -->`` (NAME in :data:`GENERATORS`).
``tests/unit/test_docs.py`` checks the output against the code."""
from __future__ import annotations

import argparse
import inspect
import re
from collections.abc import Callable

PLACEHOLDER = re.compile(r"^<!-- generated: ([a-z-]+) -->$", re.M)


class _Recorder:
    """Stands in for pytest's ``Parser`` and its option group: records what
    ``pytest_addoption`` declares (only the calls it makes, by name)."""

    def __init__(self) -> None:
        self.options: list[tuple[tuple[str, ...], dict]] = []
        self.inis: list[tuple[str, str, dict]] = []

    def getgroup(self, *args, **kwargs) -> "_Recorder":
        return self

    def addoption(self, *names: str, **kwargs) -> None:
        self.options.append((names, kwargs))

    def addini(self, name: str, help: str, **kwargs) -> None:  # noqa: A002 - pytest's name
        self.inis.append((name, help, kwargs))


def declared() -> _Recorder:
    from pytest_kvm.plugin.hooks import pytest_addoption

    recorder = _Recorder()
    pytest_addoption(recorder)  # type: ignore[arg-type]
    return recorder


def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def options_table() -> str:
    rows = ["| option | values | what |", "|---|---|---|"]
    for names, kw in declared().options:
        metavar = kw.get("metavar")
        values = "|".join(kw["choices"]) if kw.get("choices") else (metavar or "")
        if kw.get("action") == "append":
            values += " (repeatable)"
        rows.append(f"| `{', '.join(names)}` | {_cell(values)} | {_cell(kw.get('help', ''))} |")
    return "\n".join(rows) + "\n"


def ini_table() -> str:
    rows = ["| ini key | type | what |", "|---|---|---|"]
    for name, help_text, kw in declared().inis:
        rows.append(f"| `{name}` | {kw.get('type') or 'string'} | {_cell(help_text)} |")
    return "\n".join(rows) + "\n"


def marker_keywords() -> str:
    from pytest_kvm.spec import guest_request

    rows = ["| keyword | default |", "|---|---|"]
    for p in inspect.signature(guest_request).parameters.values():
        default = "" if p.default is p.empty else f"`{p.default!r}`"
        rows.append(f"| `{p.name}` | {default} |")
    return "\n".join(rows) + "\n"


def _commands(parser: argparse.ArgumentParser, prefix: str):
    """(command line, help, parser) of every leaf command under *parser*."""
    for action in parser._actions:  # argparse has no public walk of its subcommands
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help for a in action._choices_actions}
            for name, sub in action.choices.items():
                if any(isinstance(a, argparse._SubParsersAction) for a in sub._actions):
                    yield from _commands(sub, f"{prefix} {name}")
                else:
                    yield f"{prefix} {name}", helps.get(name) or "", sub


def cli_commands() -> list[tuple[str, str, argparse.ArgumentParser]]:
    from pytest_kvm.cli import build_parser

    return list(_commands(build_parser(), "pytest-kvm"))


def cli_reference() -> str:
    out = []
    for line, help_text, sub in cli_commands():
        usage = " ".join(sub.format_usage().split())[len("usage: "):]
        out.append(f"### `{line}`\n\n{_cell(help_text)}\n\n```\n{usage}\n```\n")
        options = [a for a in sub._actions if a.help != argparse.SUPPRESS
                   and not isinstance(a, argparse._HelpAction)]
        if options:
            out.append("| argument | what |\n|---|---|")
            for a in options:
                name = ", ".join(a.option_strings) or (a.metavar or a.dest)
                what = a.help or {"+": "one or more", "?": "optional", "*": "any number"}.get(
                    str(a.nargs), "")
                out.append(f"| `{name}` | {_cell(what)} |")
            out.append("")
    return "\n".join(out) + "\n"


def cli_global_options() -> str:
    from pytest_kvm.cli import build_parser

    rows = ["| option | what |", "|---|---|"]
    for a in build_parser()._actions:
        if a.option_strings and not isinstance(a, argparse._HelpAction):
            rows.append(f"| `{', '.join(a.option_strings)}` | {_cell(a.help or '')} |")
    return "\n".join(rows) + "\n"


GENERATORS: dict[str, Callable[[], str]] = {
    "options": options_table, "ini": ini_table, "marker-keywords": marker_keywords,
    "cli": cli_reference, "cli-global-options": cli_global_options,
}


def expand(markdown: str) -> str:
    """*markdown* with each placeholder replaced by its generated text."""
    def one(m: re.Match) -> str:
        if m[1] not in GENERATORS:
            raise ValueError(f"unknown generated section {m[1]!r}; known: {sorted(GENERATORS)}")
        return GENERATORS[m[1]]()
    return PLACEHOLDER.sub(one, markdown)


def on_page_markdown(markdown: str, **kwargs) -> str:  # the MkDocs hook
    return expand(markdown)
