#!/usr/bin/env python3
"""Benchmark: guests on a remote libvirt host (``--kvm-host``) next to local ones: a cold
boot to ready, a golden's boot and save, warm clones to their first command, a 50 MB
``put`` and ``get``, and 100 small commands, each through the
plugin's SSH tunnel to the host versus straight to 127.0.0.1. The "remote" host is made on
this machine (tests/e2e/remotehost.py: namespaces, its own libvirtd, sshd over socat), so
the network between is loopback: the figures are the tunnel's and the remote protocol's
own cost, not a real network's. Also the first upload of a base image to the host. Prints
a table and JSON. Not a test; run it with nothing else booting.

    .venv/bin/python scripts/benchmark_remote.py            # 1 run, 50 MB, 100 commands
    .venv/bin/python scripts/benchmark_remote.py --runs 3
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "e2e"))

from remotehost import FakeHost  # noqa: E402

from pytest_kvm.config import Settings  # noqa: E402
from pytest_kvm.session.session import KvmSession  # noqa: E402
from pytest_kvm.spec import guest_request  # noqa: E402


def measure(session: KvmSession, os_name: str, mb: int, commands: int, clones: int,
            scratch: Path) -> dict:
    figures = {}
    t0 = time.monotonic()
    with session.boot(os_name, reset="boot") as guest:
        figures["cold boot to ready (s)"] = time.monotonic() - t0
        blob = scratch / "blob"
        blob.write_bytes(os.urandom(mb * 2**20))
        t0 = time.monotonic()
        guest.put(blob, "/tmp/blob")
        figures[f"put {mb} MB (s)"] = time.monotonic() - t0
        t0 = time.monotonic()
        guest.get("/tmp/blob", scratch / "back")
        figures[f"get {mb} MB (s)"] = time.monotonic() - t0
        assert (scratch / "back").read_bytes() == blob.read_bytes()
        t0 = time.monotonic()
        for _ in range(commands):
            guest.run("true", check=True)
        figures[f"{commands} commands (s)"] = time.monotonic() - t0
    # warm clones (snapshots off, nothing made ahead: each clone's own restore is timed)
    t0 = time.monotonic()
    session._golden(session._config(os_name, guest_request(os_name)))
    figures["golden boot + save (s)"] = time.monotonic() - t0
    times = []
    for _ in range(clones):
        t0 = time.monotonic()
        with session.boot(os_name, reset="clone") as guest:
            guest.run("true", check=True)
            times.append(time.monotonic() - t0)
    figures[f"clone to first command, mean of {clones} (s)"] = statistics.mean(times)
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--mb", type=int, default=50)
    parser.add_argument("--commands", type=int, default=100)
    parser.add_argument("--clones", type=int, default=3)
    parser.add_argument("--os", default="debian-12")
    args = parser.parse_args()
    log = lambda m: print(m, file=sys.stderr)  # noqa: E731
    results: dict[str, list[dict]] = {"local": [], "remote": []}
    upload = None
    with FakeHost() as host, tempfile.TemporaryDirectory() as scratch:
        for run in range(args.runs):
            for where in ("local", "remote"):
                hosts = (host.libssh_uri,) if where == "remote" else ()
                session = KvmSession(Settings.build(os_names=(args.os,), accel="tcg", hosts=hosts,
                                                    snapshots="off", prepare_ahead=0),
                                     progress=log)
                try:
                    if where == "remote" and upload is None:  # the first upload of the bases
                        t0 = time.monotonic()
                        session.start()
                        image = session.images.resolve(args.os)
                        for part in (image.disk, image.kernel, image.initrd):
                            session.host._base(part)
                        upload = time.monotonic() - t0
                    results[where].append(measure(session, args.os, args.mb, args.commands,
                                                  args.clones, Path(scratch)))
                finally:
                    session.close()
    keys = list(results["local"][0])
    print(f"{'':44} {'local':>10} {'remote':>10} {'ratio':>7}")
    table = {}
    for key in keys:
        local = statistics.median(r[key] for r in results["local"])
        remote = statistics.median(r[key] for r in results["remote"])
        table[key] = {"local": round(local, 3), "remote": round(remote, 3)}
        print(f"{key:44} {local:10.2f} {remote:10.2f} {remote / local:7.2f}")
    print(f"{'first upload of the bases (s)':44} {'':10} {upload:10.2f}")
    print(json.dumps({"runs": args.runs, "figures": table, "first_upload_s": round(upload, 2)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
