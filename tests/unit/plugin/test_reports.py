"""The guest's record in a failed test's reports: the terminal section, JUnit XML
(properties always, ``<system-out>`` following ``junit_logging``) and pytest-html's
extras. A fake guest in the test's stash stands for a booted one (what the ``guest``
fixture records there), so nothing boots."""
import xml.etree.ElementTree as ET

import pytest

CONFTEST = """
from types import SimpleNamespace

import pytest

from pytest_kvm.plugin.stash import GUESTS_KEY
from pytest_kvm.waiting import Timeline


class FakeGuest:
    def __init__(self, name):
        self.name, self.os, self.kept = name, "debian-12", False
        self.config = SimpleNamespace(virt_type="qemu")
        self.timeline = Timeline()
        self.timeline.add("restore", 1.25)

    def console_tail(self):
        return f"{self.name} login: the console's last line\\n"

    def access(self):
        return f"ssh -p 2222 -i /run/key tester@127.0.0.1  # {self.name}"


@pytest.fixture
def fake_guest(request):
    g = FakeGuest("pytest-kvm-1-ab-1")
    request.node.stash.setdefault(GUESTS_KEY, []).append(g)
    return g
"""

TESTS = """
def test_fails(fake_guest):
    fake_guest.kept = True  # as --kvm-keep failed does in the guest fixture's teardown
    assert False, "the guest said no"

def test_passes(fake_guest):
    pass
"""


def run(pytester, *args):
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_it=TESTS)
    result = pytester.runpytest("-p", "no:cacheprovider", "--junitxml=junit.xml", *args)
    result.assert_outcomes(failed=1, passed=1)
    cases = {c.get("name"): c for c in ET.parse(pytester.path / "junit.xml").iter("testcase")}
    return result, cases


def properties(case):
    return [(p.get("name"), p.get("value")) for p in case.iter("property")]


def test_a_failed_test_shows_each_guest_in_a_section(pytester):
    result, _ = run(pytester)
    result.stdout.fnmatch_lines([
        "*Captured stdout pytest-kvm guest pytest-kvm-1-ab-1 call*",
        "pytest-kvm guest pytest-kvm-1-ab-1: os debian-12, accel tcg",
        "console, last lines:",
        "pytest-kvm-1-ab-1 login: the console's last line",
        "timeline:",
        "restore*1.25 s"])
    assert result.stdout.str().count("Captured stdout pytest-kvm guest") == 1  # not for the pass


def test_junit_has_the_guest_properties_of_every_test_and_the_ssh_line_of_a_kept_one(pytester):
    _, cases = run(pytester)
    assert properties(cases["test_fails"]) == [
        ("kvm_guest_name", "pytest-kvm-1-ab-1"), ("kvm_guest_os", "debian-12"),
        ("kvm_guest_accel", "tcg"),
        ("kvm_guest_ssh", "ssh -p 2222 -i /run/key tester@127.0.0.1  # pytest-kvm-1-ab-1")]
    assert properties(cases["test_passes"]) == [
        ("kvm_guest_name", "pytest-kvm-1-ab-1"), ("kvm_guest_os", "debian-12"),
        ("kvm_guest_accel", "tcg")]
    assert cases["test_fails"].find("system-out") is None  # junit_logging defaults to no


@pytest.mark.parametrize("logging", ["system-out", "all"])
@pytest.mark.parametrize("passing", ["True", "False"])
def test_junit_system_out_has_the_console_and_timeline_once(pytester, logging, passing):
    """pytest writes a failed test's output either from its call report or from its
    teardown report (junit_log_passing_tests): the record is in both, written once."""
    _, cases = run(pytester, "-o", f"junit_logging={logging}", "-o",
                   f"junit_log_passing_tests={passing}")
    out = "".join(e.text or "" for e in cases["test_fails"].iter("system-out"))
    assert out.count("pytest-kvm guest pytest-kvm-1-ab-1: os debian-12, accel tcg") == 1
    assert "pytest-kvm-1-ab-1 login: the console's last line" in out and "restore" in out
    passed = "".join(e.text or "" for e in cases["test_passes"].iter("system-out"))
    assert "console, last lines" not in passed


def test_junit_system_err_alone_carries_no_guest_record(pytester):
    _, cases = run(pytester, "-o", "junit_logging=system-err")
    assert "console, last lines" not in ET.tostring(cases["test_fails"], encoding="unicode")


def test_pytest_html_gets_the_record_as_an_extra(pytester):
    pytest.importorskip("pytest_html")
    run(pytester, "--html=report.html", "--self-contained-html")
    html = (pytester.path / "report.html").read_text()
    # the report's data (JSON in an HTML attribute): the failed test's extras
    extra = "{&#34;extras&#34;: [{&#34;name&#34;: &#34;guest pytest-kvm-1-ab-1&#34;"
    assert html.count(extra) == 1
