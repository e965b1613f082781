"""Guests on remote libvirt hosts (--kvm-host): a "remote" host made on this machine that
is reachable only over SSH (tests/e2e/remotehost.py: its own network, mount, PID and UTS
namespaces, a libvirtd of its own, sshd behind socat on 127.0.0.1). The guest's forward
listens on the host's 127.0.0.1, inside its namespace: only the plugin's SSH tunnel reaches
it."""
import os
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from pytest_kvm.hosts.shares import SHARES_PATH
from pytest_kvm.hosts.volumes import POOL_PATH, owner_record, owner_volume
from pytest_kvm.files import default_cache_dir
from pytest_kvm.owner import cache_id, machine_identity, process_start_time
from pytest_kvm.vm.accel import KVM_MODULES, module_problem
from remotehost import FakeHost

pytestmark = pytest.mark.skipif(
    not (shutil.which("socat") and os.path.exists("/usr/sbin/sshd") and shutil.which("unshare")),
    reason="needs socat, openssh-server and unshare (./dev.sh setup installs them)")

CHILD = """
import socket, subprocess
import pytest

@pytest.mark.parametrize("n", [1, 2])
def test_remote(guest, tmp_path, n):
    assert guest.run("echo hi").stdout == "hi\\n"
    (tmp_path / "in.txt").write_text("through the tunnel")
    guest.put(tmp_path / "in.txt", "/tmp/in.txt")
    assert guest.run("cat /tmp/in.txt").stdout == "through the tunnel"
    (tmp_path / "tree").mkdir()
    (tmp_path / "tree" / "a.txt").write_text("tree file")
    guest.put(tmp_path / "tree", "/tmp/tree")
    guest.get("/tmp/tree", tmp_path / "back")
    assert (tmp_path / "back" / "a.txt").read_text() == "tree file"
    # the forward is the host's, not ours: nothing listens on this machine's 127.0.0.1:port
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", guest.port)) != 0
    # OpenSSH from the test machine gets there through the host (ProxyCommand)
    out = subprocess.run(guest.ssh_command() + ["uname -n"], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    if n == 1:  # testinfra runs OpenSSH with the ssh_config the plugin wrote: through the host
        assert guest.testinfra().file("/etc/hostname").exists
    print("GUEST", guest.name, "CONSOLE", "Linux version" in guest.console_log())
"""


# Another controller's snapshot on the host (kept there by design, like this machine's):
# the fake host's pool directory lies over this machine's /var/lib, so what runs that used
# this machine's libvirt as their remote host left there shows up in it too. Tests assert
# on what their own run made or removed, never on the pool holding nothing else.
FOREIGN = ("snap-0123456789abcdef-0badf00d.qcow2", "snap-0123456789abcdef-0badf00d.save",
           "snap-0123456789abcdef-0badf00d.seed.img")


@pytest.fixture(scope="module")
def host():
    """A fake host another controller used before: its snapshot volumes are in the pool's
    directory before the plugin defines the pool."""
    with FakeHost() as fake:
        fake.run(["mkdir", "-p", POOL_PATH])
        for name in FOREIGN:
            fake.run(["truncate", "-s", "1M", f"{POOL_PATH}/{name}"])
        yield fake


def guests_on(fake):
    return fake.run("virsh -c qemu:///system list --name", check=False).stdout.split()


def volumes_on(fake):
    """The files in the plugin's pool directory on the host: its volumes once the plugin
    defined the pool, and what was there before it did."""
    pool = fake.path(POOL_PATH)
    return sorted(os.listdir(pool)) if pool.is_dir() else []


def share_copies_on(fake):
    """What is in the host's directory of share copies."""
    directory = fake.path(SHARES_PATH)
    return sorted(os.listdir(directory)) if directory.is_dir() else []


def run_child(pytester, *args, timeout=900):
    pytester.makepyfile(CHILD)
    return pytester.runpytest_subprocess("--kvm-accel", "tcg", "-s", "-p", "no:cacheprovider",
                                         *args, timeout=timeout)


def test_a_guest_on_a_remote_host(pytester, host):
    """Warm clones (the default) of a snapshot saved on the host: two clones of one golden
    in the first session, then a new session clones the same snapshot without a boot."""
    domains, before = set(guests_on(host)), set(volumes_on(host))
    result = run_child(pytester, "--kvm-host", host.libssh_uri)
    result.assert_outcomes(passed=2)
    out = result.stdout.str()
    assert f"hosts root@127.0.0.1:{host.ssh_port}" in out  # the header names the host
    # and so does the summary: one golden booted on the host, then restored twice
    assert "1 cold boots, 2 warm clones (1 made ahead); snapshots 0 reused, 1 created on " \
        f"root@127.0.0.1:{host.ssh_port}" in out, out
    assert out.count("CONSOLE True") == 2  # the console came back through libvirt's stream
    # nothing of the run's guests is left on the host: of what it made, the uploaded base
    # images and its snapshot (saved state, frozen disk, seed) stay; the other's stays too
    (run,) = {line.split()[1].rsplit("-", 1)[0] + "-" for line in out.splitlines()
              if line.startswith("GUEST ")}  # pytest-kvm-<run id>-, what its guests are named
    assert set(guests_on(host)) == domains
    volumes = volumes_on(host)
    made = sorted(set(volumes) - before)
    assert not any(name.startswith(run) for name in volumes), volumes
    assert all(name.startswith(("base-", "snap-")) for name in made), made
    assert sorted(name.rsplit(".", 1)[-1] for name in made if name.startswith("snap-")) \
        == ["img", "qcow2", "save"], made
    assert set(FOREIGN) <= set(volumes)
    again = run_child(pytester, "--kvm-host", host.libssh_uri, "-k", "test_remote[1]")
    again.assert_outcomes(passed=1, deselected=1)
    assert "0 cold boots, 1 warm clones; snapshots 1 reused, 0 created" in again.stdout.str()
    assert volumes_on(host) == volumes  # nothing made, nothing removed


USER_GOLDENS = """
import pytest

@pytest.fixture(scope="session")
def made(kvm):  # kvm.golden: the setup runs once, then the snapshot on the host is reused
    return kvm.golden(KEY, lambda g: g.run("echo made | sudo tee /opt/made", check=True)
                      and open(COUNTER, "a").write("ran\\n"))

@pytest.fixture(scope="session")
def frozen(kvm, made):  # guest.freeze() of a clone of a user golden: its disk flattened
    with kvm.boot(golden=made) as g:
        g.run("echo frozen | sudo tee /opt/frozen", check=True)
        return g.freeze(key=KEY + "-frozen")

@pytest.mark.parametrize("n", [1, 2])
def test_clones(guest_factory, made, frozen, n):
    a, b = guest_factory(golden=made), guest_factory(golden=frozen)
    assert a.run("cat /opt/made").stdout == "made\\n"
    assert b.run("cat /opt/made /opt/frozen").stdout == "made\\nfrozen\\n"
    a.run("sudo touch /opt/only-a", check=True)
    assert b.run("test -e /opt/only-a").failed  # two guests, each its own disk
"""


@pytest.mark.parametrize("snapshots", ["on", "off"])
def test_user_goldens_on_a_remote_host(pytester, host, tmp_path, snapshots):
    """kvm.golden() and guest.freeze() on --kvm-host: saved on the host like the plugin's
    goldens, cloned there; with snapshots on a second session reuses them without running
    the setup; with snapshots off nothing of them is left on the host after the run."""
    counter, key = tmp_path / "counter", f"remote-{snapshots}-{time.time_ns()}"
    pytester.makepyfile(USER_GOLDENS.replace("KEY", repr(key)).replace("COUNTER", repr(str(counter))))
    before = set(volumes_on(host))

    def session():
        result = pytester.runpytest_subprocess(
            "--kvm-accel", "tcg", "-p", "no:cacheprovider", "--kvm-host", host.libssh_uri,
            "--kvm-snapshots", snapshots, timeout=1200)
        result.assert_outcomes(passed=2)
        return result.stdout.str()

    session()
    assert counter.read_text() == "ran\n"
    made = sorted(set(volumes_on(host)) - before)
    if snapshots == "off":  # the run's own volumes (its goldens' too) went with it
        assert all(name.startswith("base-") for name in made), made
        return
    # two user goldens (saved state, flattened disk, seed each) kept on the host as snapshots
    assert len([name for name in made if name.startswith("snap-")]) >= 6, made
    second = session()
    assert counter.read_text() == "ran\n"  # the setup did not run again
    assert "0 cold boots" in second and ", 0 created" in second, second
    assert set(volumes_on(host)) - before == set(made)  # nothing made, nothing removed


def test_two_workers_on_two_hosts(pytester, host):
    """-n 2 with two hosts: each worker boots its guest on its own host."""
    pytest.importorskip("xdist")
    domains = set(guests_on(host))
    with FakeHost() as second:
        pytester.makepyfile("""
import pytest

@pytest.mark.parametrize("n", [1, 2])
def test_each(guest, n):
    assert guest.run("true").ok
""")
        result = pytester.runpytest_subprocess(
            "--kvm-accel", "tcg", "-p", "no:cacheprovider", "-n", "2",
            "--kvm-host", host.libssh_uri, "--kvm-host", second.libssh_uri, timeout=1200)
        result.assert_outcomes(passed=2)
        # each worker clones on its own host: gw0 the snapshot the first test left on its
        # host, gw1 one it made on the new host
        result.stdout.fnmatch_lines_random([
            f"*gw0: 0 cold boots, 1 warm clones; snapshots 1 reused, 0 created on "
            f"root@127.0.0.1:{host.ssh_port}*",
            f"*gw1: 1 cold boots, * warm clones*; snapshots 0 reused, 1 created on "
            f"root@127.0.0.1:{second.ssh_port}*"])
        assert guests_on(second) == [] and set(guests_on(host)) == domains


def ssh_transport_uri(fake):
    """The qemu+ssh URI: libvirt's ssh transport pins the host key in the URI's ssh wrapper
    (command=); the plugin's own link reads known_hosts=, which that transport ignores."""
    return f"{fake.uri}&known_hosts={fake.known_hosts}"


def path_without_qemu(directory):
    """A PATH like this one where no qemu-system-* is found: a controller that has no QEMU
    (every other program of /usr/bin linked into *directory*)."""
    directory.mkdir()
    for program in os.listdir("/usr/bin"):
        if not program.startswith("qemu-system"):
            os.symlink(f"/usr/bin/{program}", directory / program)
    path = [str(directory)] + [d for d in os.environ["PATH"].split(os.pathsep)
                               if d and not Path(d, "qemu-system-x86_64").exists()]
    assert not shutil.which("qemu-system-x86_64", path=os.pathsep.join(path))
    return os.pathsep.join(path)


@pytest.mark.parametrize("reset", ["boot", "clone"])
def test_killing_the_controller_leaves_nothing_on_the_host(pytester, host, reset):
    """Through the qemu+ssh transport (OpenSSH): SIGKILL of pytest ends its SSH connection;
    a guest booted cold is destroyed by libvirt (autodestroy), a restored clone (a restore
    has no autodestroy) by the run's watchdog, which deletes the volumes of both and the
    copy of the guest's share; the base images uploaded by the earlier tests are used, not
    uploaded again. The controller has no QEMU of its own (none on its PATH): the watchdog
    reaps through the host's."""
    bases = sorted(v for v in volumes_on(host) if v.startswith("base-"))
    env = {**os.environ, "PATH": path_without_qemu(pytester.path / "bin")}
    (pytester.path / "shared").mkdir()
    pytester.makepyfile("""
import time
import pytest

@pytest.mark.guest(share={"/mnt/shared": "shared"})
def test_hang(guest):
    print("READY", guest.name, flush=True)
    time.sleep(600)
""")
    proc = subprocess.Popen([sys.executable, "-m", "pytest", "-s", "-p", "no:cacheprovider",
                             "--kvm-accel", "tcg", "--kvm-reset", reset,
                             "--kvm-host", ssh_transport_uri(host)],
                            cwd=pytester.path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=env)
    lines = []

    def read():
        for line in proc.stdout:
            lines.append(line)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    deadline = time.monotonic() + 600
    while not any("READY" in line for line in lines) and proc.poll() is None \
            and time.monotonic() < deadline:
        time.sleep(0.5)
    ready = [line.split("READY", 1)[1] for line in lines if "READY" in line]
    if not ready:
        proc.kill()
    assert ready, "".join(lines)
    name = ready[0].split()[0]
    if bases:  # run after the module's first test: nothing uploaded again
        assert sorted(v for v in volumes_on(host) if v.startswith("base-")) == bases
    assert name and name in guests_on(host)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    deadline = time.monotonic() + 60
    while (name in guests_on(host) or any(v.startswith(name) for v in volumes_on(host))
           or any(c.startswith(name) for c in share_copies_on(host))) \
            and time.monotonic() < deadline:
        time.sleep(0.5)
    assert name not in guests_on(host)  # autodestroy (our connection closed) or the watchdog
    assert not any(v.startswith(name) for v in volumes_on(host))  # the watchdog's reap
    assert not any(c.startswith(name) for c in share_copies_on(host))


def test_a_kept_guest_outlives_the_session_until_reaped(pytester, host):
    """--kvm-keep on a remote host: the cold-booted guest starts without autodestroy, so it
    still runs there after pytest ended; the summary's access line logs in through the host;
    `reap --host` leaves it alone and `reap --kept --host` removes it and its volumes."""
    pytester.makepyfile("def test_keep(guest):\n    assert guest.run('true').ok\n")
    result = pytester.runpytest_subprocess(
        "--kvm-accel", "tcg", "-p", "no:cacheprovider", "--kvm-keep", "all", "--kvm-reset", "boot",
        "--kvm-host", host.libssh_uri, timeout=900)
    result.assert_outcomes(passed=1)
    out = result.stdout.str()
    line = next(l for l in out.splitlines() if l.startswith("kept "))
    name = line.split()[1]
    assert "pytest-kvm reap --kept --host URI" in out
    reap = [sys.executable, "-m", "pytest_kvm.cli", "reap", "--host", host.libssh_uri]
    try:
        assert name in guests_on(host)
        done = subprocess.run(shlex.split(line.split(": ", 1)[1]) + ["uname -n"],
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        subprocess.run(reap, capture_output=True, text=True, timeout=120, check=True)
        assert name in guests_on(host)
        assert any(v.startswith(name) for v in volumes_on(host))
    finally:
        done = subprocess.run(reap[:4] + ["--kept"] + reap[4:], capture_output=True, text=True,
                              timeout=120)
    assert done.returncode == 0, done.stderr
    assert name not in guests_on(host)
    assert not any(v.startswith(name) for v in volumes_on(host))


def test_reap_host_removes_only_volumes_of_runs_that_are_over(host, tmp_path):
    """`pytest-kvm reap --host URI`: what a controller that died with its machine left (no
    owner record) and a dead run's volumes go; a live run's volumes whose domain is gone
    (a guest shut down on purpose, a golden with snapshots off) stay, by its owner record."""
    virsh = "virsh -c qemu:///system"
    host.run(f"{virsh} pool-list --all | grep -q pytest-kvm || "
             f"{virsh} pool-create-as pytest-kvm dir --target /var/lib/libvirt/pytest-kvm")
    pid = os.getpid()
    live = {"owner_pid": str(pid), "owner_start": process_start_time(pid), **machine_identity()}
    ours = cache_id(default_cache_dir(), create=True)
    # a controller on a VM cloned from this machine's image (our machine-id, its own boot
    # and cache) is alive to us; our own cache's run from an earlier boot is over
    twin = {**live, "owner_boot": "another-boot", "cache_id": "another-cache"}
    for run, owner in (("liverun", live), ("deadrun2", {**live, "owner_pid": "1",
                                                        "owner_start": "0"}),
                       ("twinrun", twin), ("rebootrun", {**twin, "cache_id": ours})):
        record = tmp_path / run
        record.write_bytes(owner_record(owner))
        host.run(f"{virsh} vol-create-as pytest-kvm {owner_volume(run)} {record.stat().st_size} "
                 f"--format raw && {virsh} vol-upload --pool pytest-kvm {owner_volume(run)} {record}")
    for volume in ("pytest-kvm-deadrun-1.qcow2", "pytest-kvm-deadrun2-1.qcow2",
                   "pytest-kvm-liverun-1.qcow2", "pytest-kvm-liverun-2.save",
                   "pytest-kvm-twinrun-1.qcow2", "pytest-kvm-rebootrun-1.qcow2"):
        host.run(f"{virsh} vol-create-as pytest-kvm {volume} 1M --format qcow2")
    copies = ("pytest-kvm-deadrun-1-0", "pytest-kvm-deadrun-1-0.virtiofsd",
              "pytest-kvm-liverun-1-0", "pytest-kvm-liverun-2-1.virtiofsd")
    host.run(["mkdir", "-p", f"{SHARES_PATH}/pytest-kvm-deadrun-1-0/sub",
              f"{SHARES_PATH}/pytest-kvm-liverun-1-0"])
    host.run(["touch", f"{SHARES_PATH}/pytest-kvm-deadrun-1-0.virtiofsd",
              f"{SHARES_PATH}/pytest-kvm-liverun-2-1.virtiofsd"])
    bases = [v for v in volumes_on(host) if v.startswith("base-")]
    done = subprocess.run([sys.executable, "-m", "pytest_kvm.cli", "reap", "--host", host.libssh_uri],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    volumes = volumes_on(host)
    for gone in ("pytest-kvm-deadrun-1.qcow2", "pytest-kvm-deadrun2-1.qcow2",
                 owner_volume("deadrun2"), "pytest-kvm-rebootrun-1.qcow2",
                 owner_volume("rebootrun")):
        assert f"removed {gone}" in done.stdout and gone not in volumes
    assert {"pytest-kvm-liverun-1.qcow2", "pytest-kvm-liverun-2.save", owner_volume("liverun"),
            "pytest-kvm-twinrun-1.qcow2", owner_volume("twinrun")} <= set(volumes), done.stdout
    assert [v for v in volumes if v.startswith("base-")] == bases
    assert set(FOREIGN) <= set(volumes)  # another controller's snapshot stays
    # share copies (share=) the same way: the dead run's go, the live run's stay
    left = share_copies_on(host)
    assert not set(copies[:2]) & set(left) and set(copies[2:]) <= set(left), left
    assert "removed pytest-kvm-deadrun-1-0" in done.stdout
    host.run(["rm", "-rf", *[f"{SHARES_PATH}/{c}" for c in copies[2:]]])
    host.run(f"{virsh} pool-refresh pytest-kvm && for v in pytest-kvm-liverun-1.qcow2 "
             f"pytest-kvm-liverun-2.save {owner_volume('liverun')} pytest-kvm-twinrun-1.qcow2 "
             f"{owner_volume('twinrun')}; do "
             f"{virsh} vol-delete --pool pytest-kvm $v; done")


def test_kvm_advertised_but_unusable_falls_back_to_tcg_loudly(pytester):
    """A host whose libvirt advertises KVM but whose QEMU cannot open /dev/kvm: under the
    default --kvm-accel auto a probe finds out before the first guest (and before a golden's
    key, which holds the accel), the guest runs under TCG and the progress line and summary
    say why; --kvm-accel kvm is one error naming the host, the cause and the fix."""
    with FakeHost(kvm_usable=False) as fake:
        pytester.makepyfile("def test_auto(guest, kvm):\n"
                            "    assert guest.run('true').ok and kvm.accel == 'tcg'\n")
        result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--kvm-host",
                                               fake.libssh_uri, timeout=900)
        result.assert_outcomes(passed=1)
        note = (f"on root@127.0.0.1:{fake.ssh_port}: tcg (kvm advertised but unusable: "
                f"Could not access KVM kernel module: No such file or directory)")
        out = result.stdout.str()
        assert out.count(note) == 2, out  # the progress line and the summary (QEMU's words only)
        assert "(accel tcg, reset clone" in out
        assert not [name for name in guests_on(fake)]  # the probe domain went too
        strict = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--kvm-accel", "kvm",
                                               "--kvm-host", fake.libssh_uri, timeout=300)
        strict.assert_outcomes(errors=1)
        strict.stdout.fnmatch_lines([f"*--kvm-accel kvm was requested but on host "
                                     f"root@127.0.0.1:{fake.ssh_port} QEMU cannot start with KVM*"
                                     f"Could not access KVM kernel module*--kvm-accel auto*"])


def test_two_controllers_uploading_one_base_at_once_share_one_whole_copy(host, tmp_path):
    """Two controllers (their own upload locks, as on two machines) upload the same base to
    one host at the same moment: each uploads under a temporary name and links it into
    place, so both end with the one complete copy and no temporary volume is left."""
    from pytest_kvm.files import sha256_file
    from pytest_kvm.hosts.remote import RemoteHost
    from pytest_kvm.hosts.uris import parse_host
    base = tmp_path / "race.qcow2"
    base.write_bytes(os.urandom(32 << 20))
    uri = parse_host(host.libssh_uri)
    controllers = [RemoteHost(uri, (uri,), tmp_path / f"locks-{n}") for n in range(2)]
    paths, errors = [], []
    try:
        for n, controller in enumerate(controllers):
            controller.open()
            controller.claim_run(f"race{n}-1-aa", {"owner_pid": "1", "owner_start": "x"})

        def upload(controller):
            try:
                paths.append(controller._base(base))  # what prepare() does for each base file
            except Exception as exc:  # noqa: BLE001 - asserted below
                errors.append(exc)

        threads = [threading.Thread(target=upload, args=(c,)) for c in controllers]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=300)
        assert not errors and len(paths) == 2 and paths[0] == paths[1], (errors, paths)
        digest = host.run(["sha256sum", str(paths[0])]).stdout.split()[0]
        assert digest == sha256_file(base)
        assert not [v for v in volumes_on(host) if v.endswith(".part")]
    finally:
        for n, controller in enumerate(controllers):
            if controller._hv is not None:
                controller.release_run(f"race{n}-1-aa", kept=False)
        if paths:
            controllers[0].hv.delete_volume("pytest-kvm", paths[0].name)
        for controller in controllers:
            controller.close()
    assert paths[0].name not in volumes_on(host)


SHARES_CHILD = """
import pathlib
import pytest

HERE = pathlib.Path(__file__).parent

@pytest.mark.guest(share={"/mnt/ro": str(HERE / "ro"),
                          "/mnt/rw": {"path": str(HERE / "rw"), "writable": True}})
def test_shares(guest):
    assert guest.run("cat /mnt/ro/hello.txt", check=True).stdout == "read only\\n"
    assert guest.run("cat /mnt/rw/sub/old.txt", check=True).stdout == "old\\n"
    assert not guest.run("touch /mnt/ro/new").ok
    # read-only on the host too (the launcher's bind mount): guest root cannot remount it
    assert not guest.run("mount -o remount,rw /mnt/ro && touch /mnt/ro/new", sudo=True).ok
    guest.run("echo from the guest > /mnt/rw/new.txt && rm /mnt/rw/gone.txt && "
              "mkdir /mnt/rw/made && echo deep > /mnt/rw/made/f", check=True)
    guest.sync_shares()  # now, not only at the end
    assert (HERE / "rw" / "new.txt").read_text() == "from the guest\\n"
    assert (HERE / "rw" / "made" / "f").read_text() == "deep\\n"
    assert not (HERE / "rw" / "gone.txt").exists()
    guest.run("echo at the end > /mnt/rw/last.txt && rm -r /mnt/rw/made", check=True)
    print("GUEST", guest.name)
"""


def test_shares_on_a_remote_host(pytester, host):
    """share= on a remote host: each share is copied to the host and exported there by
    virtiofs; a read-only share stays read-only (even for guest root); what the guest wrote
    to a writable one comes back (guest.sync_shares(), and when the test ends), owned by the
    user running pytest, with the files the guest deleted deleted; no copy is left there."""
    (pytester.path / "ro").mkdir()
    (pytester.path / "ro" / "hello.txt").write_text("read only\n")
    rw = pytester.path / "rw"
    (rw / "sub").mkdir(parents=True)
    (rw / "sub" / "old.txt").write_text("old\n")
    (rw / "gone.txt").write_text("the guest deletes this\n")
    pytester.makepyfile(SHARES_CHILD)
    result = pytester.runpytest_subprocess("--kvm-accel", "tcg", "-s", "-p", "no:cacheprovider",
                                           "--kvm-host", host.libssh_uri, timeout=900)
    result.assert_outcomes(passed=1)
    assert (rw / "last.txt").read_text() == "at the end\n"  # came back as the test ended
    assert not (rw / "made").exists() and not (rw / "gone.txt").exists()
    assert sorted(p.name for p in rw.iterdir()) == ["last.txt", "new.txt", "sub"]
    assert all(p.stat().st_uid == os.getuid() for p in rw.rglob("*"))
    assert sorted(os.listdir(pytester.path / "ro")) == ["hello.txt"]
    assert not [p for p in pytester.path.iterdir() if p.name.startswith(".pytest-kvm-share-")]
    left = share_copies_on(host)
    assert left and all(name.startswith(".virtiofsd-") for name in left), left  # launcher code


NETWORKED = r'''
import pathlib, shlex, subprocess
import pytest

HERE = pathlib.Path(__file__).parent

# one TCP round trip: the server upper-cases what it gets (python3: every Debian image has it)
SERVER = ("import socket; s = socket.create_server(('::', 7000), family=socket.AF_INET6, "
          "dualstack_ipv6=True); c, _ = s.accept(); c.sendall(c.recv(100).upper())")
CLIENT = """
import socket, time
for _ in range(100):
    try:
        s = socket.create_connection(("server", 7000))
        break
    except OSError:
        time.sleep(0.2)
s.sendall(b"round trip")
print(s.recv(100).decode())
"""


@pytest.fixture(scope="session")
def prepared(kvm):  # a user golden, saved on the host
    return kvm.golden("networked", lambda g: g.run("echo prepared | sudo tee /opt/prepared",
                                                   check=True))


def test_networked(guest_factory, prepared, kvm):
    server = guest_factory(golden=prepared, networks=("lan",), name="server",
                           share={"/mnt/in": str(HERE / "in")})
    client = guest_factory(golden=prepared, networks=("lan",), name="client",
                           share={"/mnt/out": {"path": str(HERE / "out"), "writable": True}})
    assert server.run("cat /opt/prepared /mnt/in/x.txt").stdout == "prepared\nfrom here\n"
    client.run("cat /opt/prepared > /mnt/out/result.txt", check=True)
    print("ACCEL", kvm.accel)
    assert client.run("ping -c1 -W5 server", check=True).ok
    assert server.run("ping -c1 -W5 client.lan", check=True).ok
    server.run(f"{{ setsid python3 -c {shlex.quote(SERVER)} >/dev/null 2>&1 </dev/null & }}",
               check=True)
    out = client.run(f"python3 -c {shlex.quote(CLIENT)}", check=True, timeout=120).stdout
    assert out.strip() == "ROUND TRIP"
    ps = subprocess.run(["ps", "-ww", "-eo", "args"], capture_output=True, text=True).stdout
    run = server.name.rsplit("-", 1)[0].removeprefix("pytest-kvm-")
    mine = f"--stdin-lifeline /tmp/pytest-kvm-net-{run}/"
    print("SWITCHES", *[l for l in ps.splitlines() if mine in l], sep="\n")
'''


def test_a_module_with_shares_networks_and_a_user_golden_on_a_remote_host(pytester, host):
    """What runs locally runs unchanged with --kvm-host qemu+ssh://... and --kvm-accel left
    at auto: two clones of a user golden (saved on the host) with a share each (read-only in, writable
    out) on one private network whose sockets and switch are on the host (the switch piped
    to the host's python3 over the plugin's SSH connection); they reach each other by name,
    ping and TCP. On this machine the host's libvirt advertises KVM whose only module is
    kvm_pvm: the guests run under TCG and the summary says why. After the session no switch
    process and no network directory is left on the host."""
    pytester.makepyfile(NETWORKED)
    (pytester.path / "in").mkdir()
    (pytester.path / "in" / "x.txt").write_text("from here\n")
    (pytester.path / "out").mkdir()
    result = pytester.runpytest_subprocess("-s", "-p", "no:cacheprovider",
                                           "--kvm-host", ssh_transport_uri(host), timeout=1200)
    result.assert_outcomes(passed=1)
    out = result.stdout.str()
    assert (pytester.path / "out" / "result.txt").read_text() == "prepared\n"
    if module_problem(m for m in KVM_MODULES if Path("/sys/module", m).exists()):
        assert "ACCEL tcg" in out
        assert f"on root@127.0.0.1:{host.ssh_port}: tcg (kvm advertised but unusable: " \
            "kvm unusable (PVM))" in out, out
    switches = [line for line in out.splitlines() if "--stdin-lifeline" in line]
    assert len(switches) == 1, out  # one network, its switch on the host (in its namespace)
    directory = switches[0].split()[-1]  # /tmp/pytest-kvm-net-<run id>/1
    assert directory.startswith("/tmp/pytest-kvm-net-"), switches
    assert not [s for s in lifeline_switches(host) if s[-1] == directory]
    assert not host.path(directory).parent.exists()


def lifeline_switches(fake):
    """The command lines of switch processes running in *fake*'s namespaces."""
    found = []
    for pid in fake.processes():
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"--stdin-lifeline" in argv:
            found.append([a.decode() for a in argv if a])
    return found


def test_a_killed_controllers_network_ends_on_the_host(pytester, host):
    """SIGKILL of pytest while its guest is on a network of the host: the switch, which runs
    in the host's namespaces, sees its SSH channel close and exits, its directory goes."""
    pytester.makepyfile("""
import time
def test_hang(guest_factory):
    guest = guest_factory("debian-12", networks=("lan",))
    print("READY", guest.name, flush=True)
    time.sleep(600)
""")
    proc = subprocess.Popen([sys.executable, "-m", "pytest", "-s", "-p", "no:cacheprovider",
                             "--kvm-accel", "tcg", "--kvm-host", host.libssh_uri],
                            cwd=pytester.path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    lines = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 900
        while not any("READY" in l for l in lines) and proc.poll() is None \
                and time.monotonic() < deadline:
            time.sleep(0.5)
        assert any("READY" in l for l in lines), "".join(lines)
        run = next(l for l in lines if "READY" in l).split("READY", 1)[1].split()[0] \
            .rsplit("-", 1)[0]
        directory = f"/tmp/pytest-kvm-net-{run.removeprefix('pytest-kvm-')}"
        switches = lifeline_switches(host)
        assert [s[-1] for s in switches if s[-1].startswith(directory + "/")] \
            == [f"{directory}/1"], switches
        assert host.path(directory + "/1/hub.sock").exists()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    deadline = time.monotonic() + 60
    while (any(s[-1].startswith(directory + "/") for s in lifeline_switches(host))
           or host.path(directory).exists()) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not [s for s in lifeline_switches(host) if s[-1].startswith(directory + "/")]
    assert not host.path(directory).exists()
