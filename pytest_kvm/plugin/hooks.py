"""pytest hooks: options, ini values, the marker (checked at collection), the header line,
parametrization over ``--kvm-os``, the outcome recorder and what reports show (made in
``reports.py``). Fixtures live in ``fixtures.py``.

The hooks run in every pytest run of an environment where pytest-kvm is installed, so
they import only light modules: settings, option choices, image names. The session and
what guests need are loaded when a test asks for them (see :mod:`.state`)."""
from __future__ import annotations

import signal
import sys

import pytest

from ..choices import (ACCEL_CHOICES, ARTIFACTS_WHEN_CHOICES, KEEP_CHOICES, NETWORK_MODES,
                       RESET_CHOICES, SNAPSHOT_CHOICES)
from ..config import DEFAULT_BOOT_TIMEOUT, DEFAULT_CLOUD_INIT_TIMEOUT, DEFAULT_COMMAND_TIMEOUT, \
    DEFAULT_CPUS, DEFAULT_MEMORY_MIB, DEFAULT_OS, DEFAULT_PREPARE_AHEAD, DEFAULT_SSH_TIMEOUT, DEFAULT_TB_CACHE_MIB, TCG_TIMEOUT_FACTOR, Settings, \
    SettingsError
from ..arches import ARCHES
from ..errors import KvmError
from ..hosts.choose import where_worker_ran
from ..spec import KEYWORDS, guest_marker
from .reports import add_properties, add_records, shorten_start_error
from .state import PluginState
from .stash import CLOSE_ERRORS_KEY, GUESTS_KEY, OUTCOME_KEY, SIGTERM_KEY, STATE_KEY, \
    WORKER_ACCEL_NOTES_KEY, WORKER_CLOSE_ERRORS_KEY, WORKER_COUNTS_KEY, WORKER_USAGE_ERRORS_KEY

MARKER_DOC = (f"guest({KEYWORDS}): configure the guest booted for this test by the `guest` "
              "fixture (pytest-kvm); the keywords of kvm.boot, see its docstring.")


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("kvm", "pytest-kvm: boot real guest OSes under QEMU/KVM")
    group.addoption("--kvm-os", action="append", metavar="NAME", dest="kvm_os",
                    help=f"guest OS for the `guest` fixture (repeatable: with two or more, tests "
                         f"using `guest` run once per OS). Default: ini kvm_os, else {DEFAULT_OS}.")
    group.addoption("--kvm-arch", action="append", metavar="ARCH", dest="kvm_arch",
                    help=f"CPU architecture of the guests: {', '.join(ARCHES)} (or the kernel's "
                         f"names: x86_64, aarch64; repeatable: with two or more, tests using "
                         f"`guest` run once per OS and architecture). Other architectures than "
                         f"the host's run under TCG. Default: ini kvm_arch, else the host's.")
    group.addoption("--kvm-accel", choices=ACCEL_CHOICES, default="auto", dest="kvm_accel",
                    help="acceleration: kvm, tcg (software emulation) or auto (kvm when it really "
                         "works, else tcg, saying why). Default: auto.")
    group.addoption("--kvm-uri", metavar="URI", dest="kvm_uri",
                    help="libvirt URI. Default: qemu:///system if libvirtd is running, else the "
                         "embedded driver (qemu:///embed, no daemon needed).")
    group.addoption("--kvm-host", action="append", metavar="URI", dest="kvm_host",
                    help="a remote libvirt host to run guests on, e.g. qemu+ssh://ci@hv1/system "
                         "(repeatable; ?slots=N weights it; each pytest-xdist worker uses one). "
                         "Default: ini kvm_hosts, else this machine.")
    group.addoption("--kvm-keep", choices=KEEP_CHOICES, default="none", dest="kvm_keep",
                    help="keep guests running after the test: none, failed (guests of failed "
                         "tests) or all; their ssh commands are printed. Remove them with "
                         "`pytest-kvm reap --kept`. Default: none.")
    group.addoption("--kvm-reset", choices=RESET_CHOICES, default=None, dest="kvm_reset",
                    help="how each test gets a fresh guest: clone (restore a warm clone of a golden "
                         "guest booted once per OS and configuration: a few seconds), revert (a "
                         "clone reverted in place after each test and handed to the next one) or "
                         "boot (cold boot every time). Default: ini kvm_reset, else clone.")
    group.addoption("--kvm-snapshots", choices=SNAPSHOT_CHOICES, default=None, dest="kvm_snapshots",
                    help="on: keep golden guests across runs in the cache's snapshots/ directory, "
                         "so a later session clones without booting; off: boot goldens per "
                         "session. Default: ini kvm_snapshots, else on.")
    group.addoption("--kvm-network", choices=NETWORK_MODES, default=None, dest="kvm_network",
                    help="what guests reach through their user-mode NIC: user (the outside world "
                         "and the host's own 127.0.0.1 services, as 10.0.2.2) or isolated (QEMU's "
                         "restrict=on: nothing beyond the guest; the SSH forward still works). "
                         "Default: ini kvm_network, else user.")
    group.addoption("--kvm-artifacts", metavar="DIR", dest="kvm_artifacts",
                    help="for each failed test, copy its guests' console log, timeline, system "
                         "logs and the paths named in @pytest.mark.guest(artifacts=[...]) into "
                         "DIR/<test id>/<guest name>/ before they are destroyed. Default: ini "
                         "kvm_artifacts, else off.")
    group.addoption("--kvm-artifacts-when", choices=ARTIFACTS_WHEN_CHOICES, default=None,
                    dest="kvm_artifacts_when",
                    help="collect artifacts for failed tests only, or always. Default: failed.")
    group.addoption("--kvm-image", action="append", metavar="NAME=PATH", dest="kvm_image",
                    help="use the local bootable disk image PATH (qcow2 or raw) as OS NAME "
                         "(repeatable).")
    group.addoption("--kvm-mirror", metavar="URL", dest="kvm_mirror",
                    help="download catalog images from URL/HOST/PATH instead of their vendor's "
                         "https://HOST/PATH (an air-gapped mirror). Default: ini kvm_mirror.")
    group.addoption("--kvm-cache-dir", metavar="DIR", dest="kvm_cache_dir",
                    help="where base images are built and cached. Default: ini kvm_cache_dir, "
                         "else $PYTEST_KVM_CACHE_DIR, else $XDG_CACHE_HOME/pytest-kvm "
                         "(~/.cache/pytest-kvm).")
    parser.addini("kvm_os", "default guest OS name(s), space separated", default="")
    parser.addini("kvm_arch", "guest CPU architecture(s), space separated (see --kvm-arch)",
                  default="")
    parser.addini("kvm_hosts", "remote libvirt hosts, one URI per line (see --kvm-host)",
                  type="linelist", default=[])
    parser.addini("kvm_cache_dir", "base image cache directory", default="")
    parser.addini("kvm_artifacts", "directory for failed tests' guest artifacts (see "
                  "--kvm-artifacts), relative to the ini file", default="")
    parser.addini("kvm_mirror", "mirror URL prefix for catalog downloads (see --kvm-mirror)",
                  default="")
    parser.addini("kvm_catalog", "your own image catalog files (TOML, like guest-images/"
                  "catalog.toml), relative to the ini file", type="paths", default=[])
    scaled = f"(multiplied by {TCG_TIMEOUT_FACTOR:g} under TCG)"
    parser.addini("kvm_boot_timeout", f"seconds from start to the guest's SSH banner {scaled}; "
                  f"default {DEFAULT_BOOT_TIMEOUT:g}", default="")
    parser.addini("kvm_ssh_timeout", f"seconds from the SSH banner (or a clone's restore) to "
                  f"logged in {scaled}; default {DEFAULT_SSH_TIMEOUT:g}", default="")
    parser.addini("kvm_cloud_init_timeout", f"seconds from logged in to cloud-init done {scaled}; "
                  f"default {DEFAULT_CLOUD_INIT_TIMEOUT:g}", default="")
    parser.addini("kvm_memory_mib", f"default guest memory in MiB; default {DEFAULT_MEMORY_MIB}",
                  default="")
    parser.addini("kvm_cpus", f"default number of guest vCPUs; default {DEFAULT_CPUS}", default="")
    parser.addini("kvm_reset", "clone, revert or boot (see --kvm-reset); default clone", default="")
    parser.addini("kvm_snapshots", "on or off (see --kvm-snapshots); default on", default="")
    parser.addini("kvm_network", "user or isolated (see --kvm-network); default user", default="")
    parser.addini("kvm_snapshot_max_gb", "size limit of the snapshot cache in GiB: the least "
                  "recently used snapshots are removed beyond it; default no limit", default="")
    parser.addini("kvm_prepare_ahead", f"clones of the golden the last test used made ready "
                  f"while tests run (0: off); default {DEFAULT_PREPARE_AHEAD}", default="")
    parser.addini("kvm_tb_cache_mib", f"TCG's translation cache per guest in MiB, under TCG "
                  f"only (0: QEMU's default, 1 GiB); default {DEFAULT_TB_CACHE_MIB}", default="")
    parser.addini("kvm_command_timeout", f"default timeout of guest.run() in seconds; default "
                  f"{DEFAULT_COMMAND_TIMEOUT:g}", default="")


def _progress(config: pytest.Config):
    def progress(message: str) -> None:
        capman = config.pluginmanager.getplugin("capturemanager")
        reporter = config.pluginmanager.getplugin("terminalreporter")
        if capman is None or reporter is None:  # xdist worker, or capture disabled
            print(f"pytest-kvm: {message}", file=sys.stderr, flush=True)
            return
        with capman.global_and_fixture_disabled():
            reporter.write_line(f"pytest-kvm: {message}")
    return progress


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", MARKER_DOC)
    if config.option.help or getattr(config.option, "markers", False):
        return
    try:
        settings = Settings.from_pytest_config(config)
    except SettingsError as exc:
        raise pytest.UsageError(str(exc)) from None
    worker = getattr(config, "workerinput", {}).get("workerid", "")
    state = PluginState(settings, _progress(config), worker_id=worker)
    try:
        state.check()
    except KvmError as exc:
        raise pytest.UsageError(str(exc)) from None
    config.stash[STATE_KEY] = state


def _sigterm_as_ctrl_c(signum, frame) -> None:
    """SIGTERM (what CI services send on a cancel) takes Ctrl-C's path: pytest ends the
    run as interrupted, and the session end destroys the guests and removes their files."""
    raise KeyboardInterrupt("pytest-kvm: SIGTERM received, ending the session as for Ctrl-C")


def pytest_sessionstart(session: pytest.Session) -> None:
    """Turn SIGTERM into Ctrl-C for this session (the previous handler comes back at its end);
    say so when Ctrl-C itself cannot reach it."""
    config = session.config
    if config.stash.get(STATE_KEY, None) is None or SIGTERM_KEY in config.stash:
        return
    try:
        previous = signal.signal(signal.SIGTERM, _sigterm_as_ctrl_c)
    except ValueError:  # not the main thread: leave signals to whoever runs pytest
        return
    config.stash[SIGTERM_KEY] = (signal.SIG_DFL if previous is None else previous,)
    _note_ignored_sigint(config)


def _note_ignored_sigint(config: pytest.Config) -> None:
    """Say so when this run inherited SIGINT ignored (started as a background job: ``cmd &``
    in a script, ``nohup``, some CI runners), which makes Python leave Ctrl-C unhandled."""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN and not hasattr(config, "workerinput"):
        _progress(config)("SIGINT is ignored (started in the background): Ctrl-C cannot "
                          "interrupt this run; SIGTERM still ends the session cleanly")


def _restore_sigterm(config: pytest.Config) -> None:
    previous = config.stash.get(SIGTERM_KEY, None)
    if previous is not None:
        del config.stash[SIGTERM_KEY]
        signal.signal(signal.SIGTERM, previous[0])


def _describe(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or "(no message)"
    return f"{type(exc).__name__}: {text}"


def _close(config: pytest.Config) -> list[str]:
    """Close the session (if one was made) once; what it could not clean up, described
    (also stashed)."""
    state = config.stash.get(STATE_KEY, None)
    if state is None or CLOSE_ERRORS_KEY in config.stash:
        return config.stash.get(CLOSE_ERRORS_KEY, [])
    try:
        errors = [_describe(exc) for exc in state.close()]
    except Exception as exc:  # noqa: BLE001 - reported like the errors close() returns
        errors = [_describe(exc)]
    config.stash[CLOSE_ERRORS_KEY] = errors
    return errors


def pytest_unconfigure(config: pytest.Config) -> None:
    """Normally a no-op (the session closed at session finish); closes it if that never ran."""
    _restore_sigterm(config)
    if config.stash.get(STATE_KEY, None) is None or CLOSE_ERRORS_KEY in config.stash:
        return
    for error in _close(config):  # too late for the summary and the exit status
        print(f"pytest-kvm: warning: the session end could not clean up: {error}",
              file=sys.stderr, flush=True)


def pytest_report_header(config: pytest.Config) -> list[str]:
    state = config.stash.get(STATE_KEY, None)
    if state is None:
        return []
    settings = state.settings
    return [f"pytest-kvm: {state.host.describe(settings)}; "
            f"os {', '.join(settings.os_names)}; arch {', '.join(settings.archs)}; "
            f"reset {settings.reset}; "
            f"snapshots {settings.snapshots}; prepare ahead {settings.prepare_ahead}; "
            f"network {settings.network}; cache {settings.cache_dir}"]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Tests using ``guest`` run once per OS (``--kvm-os``) and architecture (``--kvm-arch``)
    the marker leaves open, with ids ``debian-12``, ``arm64`` or ``debian-12-arm64``."""
    if "guest" not in metafunc.fixturenames:
        return
    state = metafunc.config.stash.get(STATE_KEY, None)
    if state is None:
        return
    marker = metafunc.definition.get_closest_marker("guest")
    pinned = marker.kwargs if marker is not None else {}
    if pinned.get("golden"):
        return  # a user golden's OS and architecture are the ones it was made from
    settings = state.settings
    oses = [None] if pinned.get("os") or (marker and marker.args) else list(settings.os_names)
    archs = [None] if pinned.get("arch") else list(settings.archs)
    if len(oses) * len(archs) < 2:
        return
    params = [(os, arch) for os in oses for arch in archs]
    ids = ["-".join(filter(None, (os if len(oses) > 1 else None, arch if len(archs) > 1 else None)))
           for os, arch in params]
    metafunc.parametrize("guest", params, indirect=True, ids=ids)


@pytest.hookimpl(trylast=True)  # after -k, -m and --deselect: only what will run is checked
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Check the selected tests' guest markers: a bad one is a usage error naming the test.
    An xdist worker cannot end the run with one (its controller reports an internal error),
    so it runs nothing and hands the messages to the controller (see pytest_testnodedown)."""
    problems = _marker_problems(config, items)
    if not problems:
        return
    workeroutput = getattr(config, "workeroutput", None)
    if workeroutput is None:
        raise pytest.UsageError(*problems)
    workeroutput["pytest_kvm_usage_errors"] = problems
    items[:] = []


def _marker_problems(config: pytest.Config, items: list[pytest.Item]) -> list[str]:
    """One line for each selected test with a guest marker that cannot be used (a test
    parametrized over --kvm-os is named once, without its parameters)."""
    state = config.stash.get(STATE_KEY, None)
    problems = []
    for item in items:
        for marker in item.iter_markers("guest"):
            try:
                spec = guest_marker(*marker.args, **marker.kwargs)
                if state is not None and (spec.os or spec.arch) and spec.image is None:
                    state.check_name(state.settings.os_for(spec.os, spec.arch))
            except KvmError as exc:
                problems.append(f"{_unparametrized(item)}: @pytest.mark.guest: {exc}")
    return list(dict.fromkeys(problems))


def _unparametrized(item: pytest.Item) -> str:
    original = getattr(item, "originalname", item.name)
    return item.nodeid[:len(item.nodeid) - len(item.name)] + original


@pytest.hookimpl(wrapper=True)
def pytest_runtestloop(session: pytest.Session):
    """On the xdist controller: the workers' usage errors end the run as a usage error."""
    result = yield
    problems = session.config.stash.get(WORKER_USAGE_ERRORS_KEY, [])
    if problems:
        raise pytest.UsageError(*dict.fromkeys(problems))
    return result


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    guests = item.stash.get(GUESTS_KEY, [])
    if call.when == "teardown" and guests:  # kept or not by now; JUnit reads this report's
        add_properties(item, guests)
    report = yield
    if report.when in ("setup", "call"):
        item.stash.setdefault(OUTCOME_KEY, {})[report.when] = report.failed
        _collect_artifacts(item, report)
    if report.failed:
        if report.when in ("setup", "call"):
            add_records(item, report, guests)
        state = item.config.stash.get(STATE_KEY, None)
        if state is not None:
            shorten_start_error(item, call, report, state)
    return report


def _collect_artifacts(item: pytest.Item, report: pytest.TestReport) -> None:
    """--kvm-artifacts: copy the test's guests' artifacts while they still run (the guest
    fixtures destroy them after this report) and name the directory in a report section."""
    state = item.config.stash.get(STATE_KEY, None)
    guests = item.stash.get(GUESTS_KEY, [])
    if state is None or not guests or state.settings.artifacts_dir is None:
        return
    if not (report.failed or (report.when == "call" and state.settings.artifacts_when == "always")):
        return
    from .artifacts import collect, directory_for  # noqa: PLC0415 - only with --kvm-artifacts
    directory = directory_for(state.settings.artifacts_dir, item.nodeid)
    lines = [f"{directory}"]
    for g in guests:
        problems = collect(g, directory / g.name)
        lines += [f"  {g.name}: {p}" for p in problems]
    report.sections.append(("pytest-kvm artifacts", "\n".join(lines)))


@pytest.hookimpl(trylast=True)  # after pytest's own teardown of session-scoped fixtures
def pytest_sessionfinish(session: pytest.Session) -> None:
    """Close the kvm session (guests destroyed, files removed) before the terminal summary,
    which names what could not be cleaned up; that also makes a passing run fail. On a
    pytest-xdist worker, hand the guest counts and those errors to the controller."""
    config = session.config
    state = config.stash.get(STATE_KEY, None)
    if state is None:
        return
    errors = _close(config)
    _restore_sigterm(config)
    workeroutput = getattr(config, "workeroutput", None)
    if workeroutput is not None:
        if state.made is not None:  # a worker that made no session has nothing to count
            workeroutput["pytest_kvm"] = state.made.counts()
            workeroutput["pytest_kvm_accel_note"] = state.made.accel_note
        workeroutput["pytest_kvm_close_errors"] = errors
    if _close_problems(config) and session.exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def _close_problems(config: pytest.Config) -> list[str]:
    """This process's session-end errors and the xdist workers' ones, one line each."""
    lines = list(config.stash.get(CLOSE_ERRORS_KEY, []))
    for worker, errors in sorted(config.stash.get(WORKER_CLOSE_ERRORS_KEY, {}).items()):
        lines += [f"{worker}: {error}" for error in errors]
    return lines


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error) -> None:
    """On the pytest-xdist controller: collect each worker's guest counts for the summary, its
    usage errors and what its session end could not clean up."""
    output = getattr(node, "workeroutput", {})
    counts = output.get("pytest_kvm")
    if counts is not None:
        node.config.stash.setdefault(WORKER_COUNTS_KEY, {})[node.gateway.id] = counts
    problems = output.get("pytest_kvm_usage_errors")
    if problems:
        node.config.stash.setdefault(WORKER_USAGE_ERRORS_KEY, []).extend(problems)
    note = output.get("pytest_kvm_accel_note")
    if note:
        node.config.stash.setdefault(WORKER_ACCEL_NOTES_KEY, {})[node.gateway.id] = note
    errors = output.get("pytest_kvm_close_errors")
    if errors:
        node.config.stash.setdefault(WORKER_CLOSE_ERRORS_KEY, {})[node.gateway.id] = list(errors)


def _counts_line(counts: dict[str, int]) -> str:
    line = f"{counts['boots']} cold boots, {counts['clones']} warm clones"
    how = [f"{counts[key]} {what}" for key, what in (("ahead", "made ahead"),
                                                      ("reverted", "reverted in place"))
           if counts.get(key)]
    if how:
        line += f" ({', '.join(how)})"
    return line + f"; snapshots {counts['reused']} reused, {counts['created']} created"


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    state = config.stash.get(STATE_KEY, None)
    workers = config.stash.get(WORKER_COUNTS_KEY, {})
    if state is None:
        return
    _report_close_problems(terminalreporter, config)
    session = state.made
    if not (workers or (session is not None and (session.boots or session.clones))):
        return
    settings = state.settings
    terminalreporter.write_sep("-", "pytest-kvm")
    how = f"(accel {state.accel}, reset {settings.reset}, snapshots {settings.snapshots})"
    if workers:
        keys = dict.fromkeys(k for counts in workers.values() for k in counts)
        totals = {k: sum(c.get(k, 0) for c in workers.values()) for k in keys}
        terminalreporter.write_line(f"guests: {_counts_line(totals)} in {len(workers)} workers {how}")
        for worker, counts in sorted(workers.items()):
            terminalreporter.write_line(f"  {worker}: {_counts_line(counts)}"
                                        f"{where_worker_ran(settings, worker)}")
    else:  # this process made the session (see above)
        terminalreporter.write_line(f"guests: {_counts_line(session.counts())}"
                                    f"{session.host.where} {how}")
    notes = config.stash.get(WORKER_ACCEL_NOTES_KEY, {}).values() if workers else \
        [session.accel_note] if session is not None and session.accel_note else []
    for note in dict.fromkeys(notes):  # each host once, however many workers it had
        terminalreporter.write_line(note, yellow=True, bold=True)
    kept = session.kept if session is not None else []  # an xdist controller makes none
    for g in kept:
        terminalreporter.write_line(f"kept {g.name} ({g.os}): {g.access()}")
    if kept:
        terminalreporter.write_line(f"remove kept guests with: {session.host.reap_hint()}")


def _report_close_problems(terminalreporter, config: pytest.Config) -> None:
    problems = _close_problems(config)
    if not problems:
        return
    terminalreporter.write_sep("=", "pytest-kvm warnings: the session end could not clean up",
                               yellow=True, bold=True)
    for line in problems:
        terminalreporter.write_line(line)
    terminalreporter.write_line("guests or files may be left over: `pytest-kvm reap` removes those "
                                "of finished runs")
