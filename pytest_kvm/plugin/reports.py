"""What a test's report shows of its guests and of a host that could not be opened.

- A failed test's report gets one section per guest: its name, OS, acceleration, the
  console's last lines and the timeline. The section is a captured-stdout section
  (``Captured stdout pytest-kvm guest NAME``): pytest's JUnit XML writes those, and only
  those, into ``<system-out>`` (with ``junit_logging = system-out``, ``out-err`` or
  ``all``), which is what GitHub, GitLab and Jenkins show of a failed test.
- Every test that used a guest gets ``user_properties`` (JUnit ``<property>``, whatever
  ``junit_logging`` says): ``kvm_guest_name``, ``kvm_guest_os``, ``kvm_guest_accel`` and,
  for a kept guest, ``kvm_guest_ssh``.
- With pytest-html writing a report (``--html``), the record is also an extra of the
  failed test (``extras.text``).
- When the session's host could not be opened (:attr:`KvmSession.start_error`), every
  test that needs it meets the same error: the first report shows its message without
  the traceback through the plugin (``--tb=long`` or ``--full-trace`` keep it), the
  others one line pointing to the first.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:  # pragma: no cover
    from ..guest.facade import Guest
    from .state import PluginState

SECTION_KEY = "stdout pytest-kvm guest"  # pytest names the section "Captured {key} {when}"
SHORT_MESSAGE = 160  # characters of the first error repeated on each later test's line


def accel_of(guest: Guest) -> str:
    return "kvm" if guest.config.virt_type == "kvm" else "tcg"


def record(guest: Guest) -> str:
    """The guest's record as text: what it is, its console's last lines, its timeline."""
    lines = [f"pytest-kvm guest {guest.name}: os {guest.os}, accel {accel_of(guest)}",
             "console, last lines:", guest.console_tail().rstrip("\n")]
    if guest.timeline.entries:
        lines += ["timeline:", guest.timeline.format()]
    return "\n".join(lines) + "\n"


def add_records(item: pytest.Item, report: pytest.TestReport, guests: list[Guest]) -> None:
    """Add each guest's record to a failed setup or call *report* (and to the item's
    sections, which later reports of the test carry too: JUnit writes the last one's)."""
    html = item.config.pluginmanager.hasplugin("html") and item.config.getoption("htmlpath", None)
    for g in guests:
        text = record(g)
        key = f"{SECTION_KEY} {g.name}"
        item.add_report_section(report.when, key, text)
        report.sections.append((f"Captured {key} {report.when}", text))
        if html:
            from pytest_html import extras  # noqa: PLC0415 - only where pytest-html runs
            report.extras = [*getattr(report, "extras", []),
                             extras.text(text, name=f"guest {g.name}")]


def add_properties(item: pytest.Item, guests: list[Guest]) -> None:
    """Each guest's short fields as the test's ``user_properties`` (call this before the
    teardown report is made: JUnit reads the properties from it)."""
    for g in guests:
        item.user_properties += [("kvm_guest_name", g.name), ("kvm_guest_os", g.os),
                                 ("kvm_guest_accel", accel_of(g))]
        if g.kept:
            item.user_properties.append(("kvm_guest_ssh", g.access()))


def shorten_start_error(item: pytest.Item, call: pytest.CallInfo, report: pytest.TestReport,
                        state: PluginState) -> None:
    """If *report* failed on the session's start error, show it once without the plugin's
    traceback, then one line per test pointing to the first."""
    session = state.made
    error = session.start_error if session is not None else None
    if error is None or call.excinfo is None or call.excinfo.value is not error:
        return
    option = item.config.option
    if getattr(option, "fulltrace", False):
        return
    text = f"{type(error).__name__}: {' '.join(str(error).split())}"
    if state.start_error_test is None:
        state.start_error_test = item.nodeid
        if getattr(option, "tbstyle", "auto") == "auto":
            report.longrepr = (f"{text}\npytest-kvm: no guest can start in this session; the "
                               f"other tests that need one fail with a line pointing here "
                               f"(--tb=long shows the traceback)")
        return
    short = text if len(text) <= SHORT_MESSAGE else text[:SHORT_MESSAGE - 3] + "..."
    report.longrepr = f"no guest can start (see {state.start_error_test}): {short}"
