"""The ``pytest-kvm`` command: build, fetch and list base images, check the host, reap leftovers,
write an Ansible inventory of kept guests.

Exit status: 0 done, 1 failed or not found (the reason on stderr), 2 a usage error."""
from __future__ import annotations

import argparse
import functools
import importlib.util
import os
import pwd
import shlex
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

from . import __version__
from .arches import Arch, UnknownArch, arch_of, image_name
from .vm.accel import choose_accel
from .files import default_cache_dir
from .errors import HypervisorError, KvmError
from .hosts.uris import HostError, parse_host
from .vm.embed import EMBED_SLOTS, libvirt_state_dir
from .vm.hypervisor import SYSTEM_SOCKET, Hypervisor
from .images.store import ImageStore
from .progress import Progress
from .transport.integrations import IntegrationError, kept_hosts, write_host_inventory
from .hosts.volumes import controller_tag, live_run_prefixes, remove_dead_runs_volumes, \
    remove_snapshot_volumes
from .cleanup.reaper import owner_alive, reap_domains, reap_run_dirs
from .owner import cache_id
from .session.snapshots import SUMMARY_FIELDS, SnapshotStore, age

#: tables fit a terminal this wide
WIDTH = 100


def _progress(message: str) -> None:
    print(f"pytest-kvm: {message}", file=sys.stderr, flush=True)


def _cache_dir(args) -> Path:
    return Path(args.cache_dir) if args.cache_dir else default_cache_dir()


def _error(message: str) -> None:
    print(f"pytest-kvm: error: {message}", file=sys.stderr, flush=True)


def _store(args, mirror: str | None = None) -> ImageStore:
    return ImageStore(_cache_dir(args), progress=Progress(_progress, sys.stderr),
                      mirror=mirror, catalogs=tuple(Path(p) for p in args.catalog or ()))


def _arch(text: str) -> Arch:
    """``--arch``: either spelling (``arm64`` or ``aarch64``)."""
    try:
        return arch_of(text)
    except UnknownArch as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def build_names(names: list[str], arches: list[Arch] | None) -> list[str]:
    """The images ``image build NAME... [--arch A]...`` means: each name on each
    architecture (``debian-12 --arch arm64``: ``debian-12-arm64``), in order, once each;
    without --arch, the names as given."""
    if not arches:
        return list(dict.fromkeys(names))
    return list(dict.fromkeys(image_name(name, arch) for name in names for arch in arches))


def cmd_image_build(args) -> int:
    if args.debian_mirror:
        os.environ["PYTEST_KVM_DEBIAN_MIRROR"] = args.debian_mirror
    store = _store(args, mirror=args.mirror)
    if args.arch and any(name in store.catalog for name in args.names):
        _error("--arch builds a recipe for another architecture; "
               f"{', '.join(n for n in args.names if n in store.catalog)} is downloaded")
        return 2
    names = build_names(args.names, args.arch)
    recipes = [name for name in names if name not in store.catalog]
    if args.mirror and recipes:
        _error(f"--mirror is where catalog images are downloaded from (as for `image fetch` and "
               f"--kvm-mirror), and {', '.join(recipes)} is built from a recipe: for the "
               f"Debian package mirror, use --debian-mirror URL")
        return 2
    for name in names:
        # a catalog name is downloaded rather than built
        image = store.ensure(name, force=args.force)
        print(f"{name}: {image.disk}")
    return 0


def cmd_image_fetch(args) -> int:
    store = _store(args, mirror=args.mirror)
    for name in args.names:
        image = store.ensure_downloaded(name, force=args.force)
        print(f"{name}: {image.disk}")
    return 0


def cmd_image_list(args) -> int:
    store = _store(args)
    cached = {c.name: c for c in store.list_cached()}
    recipes = set(store.known_names()) - set(store.catalog)
    print(f"cache: {store.images_dir}")
    print(f"{'NAME':<24} {'KIND':<7} {'STATE':<11} {'SIZE':>6}  {'MADE (UTC)':<16}  DIGEST")
    old_layout = False
    for name in sorted(set(store.known_names()) | set(cached)):
        c = cached.get(name)
        kind = c.kind if c else "recipe" if name in recipes else "catalog"
        if c is None:
            state = "not built" if kind == "recipe" else "not fetched"
            print(f"{name:<24} {kind:<7} {state:<11} {'-':>6}  {'-':<16}  -")
            continue
        state = "old layout" if c.old_layout else "stale" if c.stale else "ready"
        old_layout |= c.old_layout
        made = c.built_at.replace("T", " ")[:16]
        print(f"{name:<24} {kind:<7} {state:<11} {c.size / 2**20:5.0f}M  {made:<16}  "
              f"{c.digest[:12] or '-'}")
        if args.long:
            print(f"  disk sha256 {c.sha256 or '-'}")
        if c.older:
            print(f"  +{c.older} older digest(s) kept: a running session uses them")
    if old_layout:
        print("old layout: cached by an earlier pytest-kvm; built or downloaded again on next use "
              "(`pytest-kvm image rm NAME` frees the space now)")
    return 0


def cmd_image_rm(args) -> int:
    store = _store(args)
    status = 0
    for name in args.names:
        outcome = store.remove(name)
        if not outcome.removed and not outcome.left:
            print(f"{name}: not cached", file=sys.stderr)
            status = 1
            continue
        if outcome.removed:
            print(f"{name}: removed " + ", ".join(
                d if d == "old layout" else d[:12] + (" (current)" if d == outcome.current else "")
                for d in outcome.removed))
        for digest in outcome.left:
            print(f"{name}: left {digest[:12]}{' (current)' if digest == outcome.current else ''}: "
                  "a running session uses it")
            status = 1
    return status


def _reap_embedded_roots(args) -> list[str]:
    """Sweep each embedded-driver root no live run holds, one child process per root:
    libvirt loads its embedded driver only once per process."""
    removed = []
    state = libvirt_state_dir()
    for index in range(EMBED_SLOTS):
        if not (state / f"embed-{index}").is_dir():
            continue
        argv = [sys.executable, "-m", "pytest_kvm.cli", "reap", "--embed-slot", str(index)]
        if args.kept:
            argv.append("--kept")
        done = subprocess.run(argv, capture_output=True, text=True, timeout=300)
        removed += [line.removeprefix("removed ") for line in done.stdout.splitlines()
                    if line.startswith("removed ")]
    return removed


def cmd_reap(args) -> int:
    if args.embed_slot is not None:  # the child of _reap_embedded_roots
        try:
            hv = Hypervisor.open_embed_slot(args.embed_slot)
        except KvmError:  # in use by a live run: its owner cleans up
            return 0
        try:
            for name in reap_domains(hv, include_kept=args.kept):
                print(f"removed {name}")
        finally:
            hv.close()
        return 0
    cache = _cache_dir(args)
    if args.host:
        return _reap_host(args.host, cache, include_kept=args.kept)
    removed: list[str] = []
    uris = [args.uri] if args.uri else (["qemu:///system"] if os.geteuid() == 0 and SYSTEM_SOCKET.exists() else [])
    for uri in uris:
        hv = Hypervisor.open(uri)
        try:
            removed += reap_domains(hv, include_kept=args.kept)
        finally:
            hv.close()
    if not args.uri:
        removed += _reap_embedded_roots(args)
    removed += [str(p) for p in reap_run_dirs(cache / "runs", include_kept=args.kept)]
    for item in removed:
        print(f"removed {item}")
    print(f"{len(removed)} removed")
    return 0


def _reap_host(text: str, cache: Path, *, include_kept: bool = False) -> int:
    """``reap --host URI``: on a remote host, destroy domains of dead runs of this machine,
    delete the volumes of runs that are over (by the owner record each run keeps on the
    host: a live run's guest that shut down, or its golden with snapshots off, keeps its
    volumes; another machine's run counts as live), and this machine's snapshot volumes
    whose snapshot is no longer in its cache (base images stay)."""
    try:
        host = parse_host(text)
    except HostError as exc:
        _error(str(exc))
        return 2
    hv = Hypervisor.open_remote(host)
    ours = cache_id(cache)  # a run recorded with another cache is another controller's
    try:
        alive = functools.partial(owner_alive, cache=ours)
        removed = reap_domains(hv, include_kept=include_kept, cache=ours)
        running = set(hv.our_domains())
        removed += remove_dead_runs_volumes(hv, alive, running=running,
                                            include_kept=include_kept)
        removed += _reap_host_shares(hv, host, running, alive, include_kept=include_kept)
        snapshots = SnapshotStore(cache).root
        removed += remove_snapshot_volumes(hv, keep={
            p.name for p in snapshots.iterdir() if p.is_dir()} if snapshots.is_dir() else set(),
            tag=controller_tag(cache))
        from .hosts.link import HostLink  # noqa: PLC0415 - paramiko only for a host
        from .hosts.netsite import remove_dead_runs_networks  # noqa: PLC0415
        try:  # the networks (networks=) of runs whose records went
            link = HostLink(host).connect()
            try:
                removed += remove_dead_runs_networks(link, hv)
            finally:
                link.close()
        except KvmError as exc:
            _error(f"the network directories on {host.label} were not swept: {exc}")
    finally:
        hv.close()
    for item in removed:
        print(f"removed {item}")
    print(f"{len(removed)} removed from {host.label}")
    return 0


def _reap_host_shares(hv, host, running: set[str], alive, *, include_kept: bool) -> list[str]:
    """The share copies (``share=``) on *host* of runs that are over, by the same owner
    records as their volumes (see :mod:`pytest_kvm.hosts.shares`)."""
    from .hosts.link import HostLink  # noqa: PLC0415 - paramiko only here
    from .hosts.shares import doomed_entries, list_entries, remove_entries  # noqa: PLC0415
    live, _over = live_run_prefixes(hv, alive, include_kept=include_kept)
    try:
        link = HostLink(host).connect()
    except HypervisorError as exc:
        _progress(f"share copies on {host.label} not checked: {exc}")
        return []
    try:
        return remove_entries(link, doomed_entries(list_entries(link), live, running))
    finally:
        link.close()


def cmd_inventory(args) -> int:
    cache = _cache_dir(args)
    path = Path(args.path) if args.path else cache / "inventory.yml"
    if args.path and not path.parent.is_dir():
        _error(f"cannot write the inventory {path}: the directory {path.parent} does not "
               "exist (create it, or give a path in an existing directory)")
        return 1
    hosts = kept_hosts(cache / "runs", warn=_progress)
    try:
        write_host_inventory(path, hosts)
    except OSError as exc:
        raise IntegrationError(f"cannot write the inventory {path}: {exc.strerror or exc}") from exc
    for host in hosts:
        print(f"{host.name}: {host.os}, {host.transport} on 127.0.0.1:{host.port}")
    print(f"{len(hosts)} kept guests in {path}")
    if hosts:
        print(f"try: ansible -i {shlex.quote(str(path))} all -m ping")
    return 0


def _snapshots(args) -> SnapshotStore:
    return SnapshotStore(_cache_dir(args))


def _short(name: str, value) -> str:
    return f"{name}={str(value)[:12] if name == 'base' else value}"  # base: a sha256


def cmd_snapshot_list(args) -> int:
    store = _snapshots(args)
    snapshots = store.list()
    print(f"snapshots: {store.root}")
    summaries = [[_short(k, info.fields[k]) for k in SUMMARY_FIELDS
                  if info.fields.get(k) is not None] for info in snapshots]
    # key fields every snapshot has alike (QEMU, libvirt, ...) once, above the table
    described = [fields for fields in summaries if fields]  # an incomplete one may have none
    common = [f for f in described[0] if all(f in other for other in described)] \
        if len(described) > 1 else []
    for line in textwrap.wrap(" ".join(common), WIDTH, initial_indent="all have: ",
                              subsequent_indent="          "):
        print(line)
    print(f"{'NAME':<17} {'SIZE':>6} {'AGE':>5} {'USED':>5}  {'STATE':<10}  KEY FIELDS")
    for info, fields in zip(snapshots, summaries):
        state = "in use" if info.in_use else "ready" if info.complete else "incomplete"
        summary = [f for f in fields if f not in common]
        head = (f"{info.name:<17} {info.size / 2**20:5.0f}M {age(info.created):>5} "
                f"{age(info.last_used):>5}  {state:<10}  ")
        lines = textwrap.wrap(" ".join(summary), WIDTH - len(head)) or [""]
        print(head + lines[0])
        for line in lines[1:]:
            print(" " * len(head) + line)
    total = sum(i.size for i in snapshots)
    print(f"{len(snapshots)} snapshots, {total / 2**30:.2f} GiB")
    return 0


def cmd_snapshot_rm(args) -> int:
    store = _snapshots(args)
    status = 0
    for name in args.names:
        outcome = store.remove(name)
        print(f"{name}: {outcome}", file=sys.stdout if outcome == "removed" else sys.stderr)
        status |= outcome != "removed"
    return status


def cmd_snapshot_prune(args) -> int:
    store = _snapshots(args)
    max_bytes = None if args.max_gb is None else int(args.max_gb * 2**30)
    removed = store.prune(max_bytes)
    for name in removed:
        print(f"removed {name}")
    left = sum(i.size for i in store.list())
    print(f"{len(removed)} removed; {left / 2**30:.2f} GiB left")
    return 0


def _check(ok: bool, what: str, fix: str = "", *, required: bool = True) -> bool:
    """Print one check: ``[ok]``, or ``[FAIL]`` (required) / ``[WARN]`` (optional) and the fix."""
    mark = "ok" if ok else "FAIL" if required else "WARN"
    print(f"[{mark}] {what}" + ("" if ok or not fix else f"\n       fix: {fix}"))
    return ok


def cmd_doctor(args) -> int:
    good = True
    for tool, pkg in (("qemu-system-x86_64", "qemu-system-x86"), ("qemu-img", "qemu-utils")):
        path = shutil.which(tool)
        version = ""
        if path:
            version = subprocess.run([path, "--version"], capture_output=True, text=True).stdout.splitlines()[0]
        good &= _check(bool(path), f"{tool}: {version or 'not found'}", f"apt install {pkg}")
    has_libvirt = importlib.util.find_spec("libvirt") is not None
    good &= _check(has_libvirt, "libvirt-python importable",
                   "pip install libvirt-python (needs apt install libvirt-dev pkg-config gcc)")
    warnings = 0
    warnings += not _check(bool(shutil.which("debootstrap")), "debootstrap (to build the Debian "
                           "images)", "apt install debootstrap", required=False)
    try:
        pwd.getpwnam("libvirt-qemu")
        has_user = True
    except KeyError:
        has_user = False
    good &= _check(has_user, "user libvirt-qemu exists (libvirt's QEMU driver wants it)",
                   "useradd --system --no-create-home libvirt-qemu")
    accel = choose_accel("auto")
    warnings += not _check(accel.name == "kvm", f"acceleration: {accel.describe()}",
                           "guests will run under TCG (software emulation, several times "
                           "slower); for KVM enable VT-x/AMD-V and load kvm_intel or kvm_amd",
                           required=False)
    cache = _cache_dir(args)
    try:
        cache.mkdir(parents=True, exist_ok=True)
        writable = os.access(cache, os.W_OK)
    except OSError:
        writable = False
    good &= _check(writable, f"cache directory writable: {cache}", "pass --cache-dir DIR (pytest: --kvm-cache-dir)")
    if has_libvirt:
        try:
            hv = Hypervisor.open(args.uri)
            _check(True, f"libvirt connection: {hv.uri}")
            hv.close()
        except KvmError as exc:
            good &= _check(False, f"libvirt connection: {exc}", "see the message above")
    verdict = "all required checks passed" if good else "some required checks failed"
    print(verdict + (f"; {warnings} warning(s): see [WARN]" if warnings else ""))
    return 0 if good else 1


def _size_gb(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of GiB") from None
    if not value >= 0:  # also NaN
        raise argparse.ArgumentTypeError(f"{text} is not a size: give 0 or more GiB")
    return value


def _common(default) -> argparse.ArgumentParser:
    """The options every command takes, before or after its name (*default*: None on the
    top parser; SUPPRESS on a command's, so a value given before its name stays)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--cache-dir", default=default,
                        help="cache directory (default: ~/.cache/pytest-kvm; pytest's "
                             "--kvm-cache-dir)")
    common.add_argument("--catalog", action="append", metavar="FILE", default=default,
                        help="an image catalog file of yours, read after the built-in one "
                             "(repeatable)")
    return common


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pytest-kvm", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     parents=[_common(None)])
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    common = [_common(argparse.SUPPRESS)]
    sub = parser.add_subparsers(dest="command", required=True)
    image = sub.add_parser("image", help="base images").add_subparsers(dest="image_command", required=True)
    mirror_help = ("fetch catalog images from URL/HOST/PATH instead of the vendor's address "
                   "(pytest's --kvm-mirror)")
    build = image.add_parser("build", parents=common,
                             help="build base images into the cache (needs root); "
                                  "catalog images are downloaded")
    build.add_argument("names", nargs="+", metavar="NAME")
    build.add_argument("--force", action="store_true", help="rebuild even if cached")
    build.add_argument("--arch", action="append", type=_arch, metavar="ARCH",
                       help="build for this CPU architecture (arm64 or aarch64, riscv64, "
                            "s390x, ppc64el; repeatable): image NAME-ARCH, e.g. "
                            "debian-12-arm64 (default: NAME as given, amd64's)")
    build.add_argument("--mirror", metavar="URL", help=mirror_help)
    build.add_argument("--debian-mirror", metavar="URL",
                       help="the Debian package mirror debootstrap uses (default: the recipe's)")
    build.set_defaults(func=cmd_image_build)
    fetch = image.add_parser("fetch", parents=common,
                             help="download catalog images into the cache, verified")
    fetch.add_argument("names", nargs="+", metavar="NAME")
    fetch.add_argument("--force", action="store_true", help="download again even if cached")
    fetch.add_argument("--mirror", metavar="URL", help=mirror_help)
    fetch.set_defaults(func=cmd_image_fetch)
    listing = image.add_parser("list", parents=common,
                               help="known and cached images: state, size, digest")
    listing.add_argument("-l", "--long", action="store_true",
                         help="also the sha256 of each cached disk")
    listing.set_defaults(func=cmd_image_list)
    rm = image.add_parser("rm", parents=common,
                          help="remove cached images (every digest no running session uses)")
    rm.add_argument("names", nargs="+", metavar="NAME")
    rm.set_defaults(func=cmd_image_rm)
    doctor = sub.add_parser("doctor", parents=common,
                            help="check QEMU, libvirt and /dev/kvm; say what to fix")
    doctor.add_argument("--uri", help="libvirt URI to try")
    doctor.set_defaults(func=cmd_doctor)
    snapshot = sub.add_parser("snapshot", help="the snapshot cache (goldens kept across runs)") \
        .add_subparsers(dest="snapshot_command", required=True)
    snapshot.add_parser("list", parents=common, help="snapshots: size, age, last use, key fields") \
        .set_defaults(func=cmd_snapshot_list)
    snap_rm = snapshot.add_parser("rm", parents=common,
                                  help="remove snapshots (not those a running session uses)")
    snap_rm.add_argument("names", nargs="+", metavar="NAME")
    snap_rm.set_defaults(func=cmd_snapshot_rm)
    prune = snapshot.add_parser("prune", parents=common,
                                help="remove incomplete snapshots, then the least recently used "
                                     "ones beyond --max-gb")
    prune.add_argument("--max-gb", type=_size_gb, metavar="GB",
                       help="size limit in GiB, 0 or more (default: only incomplete ones are "
                            "removed)")
    prune.set_defaults(func=cmd_snapshot_prune)
    reap = sub.add_parser("reap", parents=common,
                          help="remove guests and files left by dead runs")
    reap.add_argument("--kept", action="store_true", help="also remove guests kept with --kvm-keep")
    reap.add_argument("--uri", help="libvirt URI to sweep")
    reap.add_argument("--host", metavar="URI", help="a remote host (as for --kvm-host) to sweep: "
                      "domains of dead runs of this machine, guest volumes of runs that are over "
                      "(by their owner records on the host), "
                      "this machine's snapshot volumes no longer in its cache")
    reap.add_argument("--embed-slot", type=int, help=argparse.SUPPRESS)
    reap.set_defaults(func=cmd_reap)
    inventory = sub.add_parser("inventory", parents=common,
                               help="write an Ansible inventory of the guests kept with "
                                    "--kvm-keep (WinRM passwords: host_vars/ beside it, mode 0600)")
    inventory.add_argument("path", nargs="?", metavar="PATH",
                           help="the inventory file to write, in an existing directory "
                                "(default: CACHE/inventory.yml)")
    inventory.set_defaults(func=cmd_inventory)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except KvmError as exc:
        _error(str(exc))
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
