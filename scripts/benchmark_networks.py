#!/usr/bin/env python3
"""Benchmark: TCP throughput and round-trip time between two guests on one private network
(``networks=``), next to the same between a guest and the host through the user
networking (the guest connects to 10.0.2.2, QEMU's address for the host's 127.0.0.1),
and what joining a network costs a guest; with ``--remote`` the same between two guests
on a network of a remote host (``--kvm-host``: a FakeHost made on this machine, its switch
on the host), in the same run. Prints a table and JSON. Not a test; run it
with nothing else booting.

    .venv/bin/python scripts/benchmark_networks.py              # 3 runs, 50 MB, 200 round trips
    .venv/bin/python scripts/benchmark_networks.py --runs 1 --mb 10
    .venv/bin/python scripts/benchmark_networks.py --remote   # and on a remote host
"""
from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import tempfile
import threading
from pathlib import Path

from pytest_kvm.config import Settings
from pytest_kvm.session.session import KvmSession

PORT = 5001
# one program for both ends, in the guests and on the host: "serve sink|echo PORT" or
# "send HOST PORT MB" (prints seconds) or "ping HOST PORT ROUNDS" (prints the median
# round trip in seconds)
NETPERF = r'''
import socket, statistics, sys, time

def serve(mode, port, once=False):
    srv = socket.create_server(("::", port), family=socket.AF_INET6, dualstack_ipv6=True)
    while True:
        conn, _ = srv.accept()
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        while True:
            data = conn.recv(1 << 16)
            if not data:
                break
            if mode == "echo":
                conn.sendall(data)
        if mode == "sink":
            conn.sendall(b"k")
        conn.close()
        if once:
            return

def send(host, port, mb):
    s = socket.create_connection((host, port))
    block = b"\0" * (1 << 16)
    t0 = time.monotonic()
    for _ in range(mb * 16):
        s.sendall(block)
    s.shutdown(socket.SHUT_WR)
    s.recv(1)
    print(time.monotonic() - t0)

def ping(host, port, rounds):
    s = socket.create_connection((host, port))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    times = []
    for _ in range(rounds):
        t0 = time.monotonic()
        s.sendall(b"x")
        s.recv(1)
        times.append(time.monotonic() - t0)
    print(statistics.median(times))

if __name__ == "__main__":
    what = sys.argv[1]
    if what == "serve":
        serve(sys.argv[2], int(sys.argv[3]))
    elif what == "send":
        send(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
    else:
        ping(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
'''


def summary(values: list[float], unit: str = "s", scale: float = 1.0) -> str:
    v = [x * scale for x in values]
    return f"{statistics.median(v):.2f} {unit} ({min(v):.2f}-{max(v):.2f})"


def host_server(mode: str) -> int:
    """A server on the host's 127.0.0.1 (what a guest reaches as 10.0.2.2); its port."""
    import socket  # noqa: PLC0415

    srv = socket.create_server(("127.0.0.1", 0))
    port = srv.getsockname()[1]

    def loop():
        while True:
            conn, _ = srv.accept()
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            while data := conn.recv(1 << 16):
                if mode == "echo":
                    conn.sendall(data)
            if mode == "sink":
                conn.sendall(b"k")
            conn.close()

    threading.Thread(target=loop, daemon=True).start()
    return port


GUESTS = "guest to guest (private network)"
USER = "guest to host (user networking)"


def measure(session: KvmSession, args, scratch: Path, user_networking: bool) -> dict:
    """Two guests on one network of *session*: throughput and round trips between them
    (and, with *user_networking*, from a guest to a server on this machine) per run."""
    throughput: dict[str, list[float]] = {GUESTS: []}
    rtt: dict[str, list[float]] = {GUESTS: []}
    if user_networking:
        throughput[USER], rtt[USER] = [], []
    icmp: list[float] = []
    join: list[float] = []
    script = scratch / "netperf.py"
    script.write_text(NETPERF)
    server = session.boot(args.os, networks=("bench",), name="server")
    client = session.boot(args.os, networks=("bench",), name="client")
    for g in (server, client):
        join.append(dict(g.timeline.entries)["networks"])
        g.put(script, "/tmp/netperf.py")
    for mode, port in (("sink", PORT), ("echo", PORT + 1)):
        server.run(f"{{ setsid python3 /tmp/netperf.py serve {mode} {port} >/dev/null 2>&1 "
                   f"</dev/null & }}", check=True)
    targets = {GUESTS: ("server", PORT, PORT + 1)}
    if user_networking:
        targets[USER] = ("10.0.2.2", host_server("sink"), host_server("echo"))
    client.run(f"for i in $(seq 50); do python3 -c 'import socket; socket.create_connection"
               f"((\"server\", {PORT}))' 2>/dev/null && break; sleep 0.2; done", check=True)
    for _ in range(args.runs):
        for what, (host, sink, _echo) in targets.items():
            out = client.run(f"python3 /tmp/netperf.py send {host} {sink} {args.mb}",
                             check=True, timeout=900).stdout
            throughput[what].append(args.mb * 8 / float(out))
        for what, (host, _sink, echo) in targets.items():
            out = client.run(f"python3 /tmp/netperf.py ping {host} {echo} {args.rounds}",
                             check=True, timeout=900).stdout
            rtt[what].append(float(out))
        out = client.run("ping -q -c 20 -i 0.2 server", check=True).stdout
        icmp.append(float(out.rsplit("=", 1)[1].split("/")[1]) / 1000)
    server.destroy()
    client.destroy()
    return {"throughput_mbit": throughput, "rtt_s": rtt, "icmp_s": icmp, "join_s": join}


def table(where: str, figures: dict, args) -> None:
    print(f"\n{where}: {args.os}, {args.runs} runs, {args.mb} MB per throughput run, "
          f"{args.rounds} TCP round trips, median (min-max):\n")
    print("| what | TCP throughput | TCP round trip |\n|---|---|---|")
    for what, values in figures["throughput_mbit"].items():
        print(f"| {what} | {summary(values, 'Mbit/s')} | "
              f"{summary(figures['rtt_s'][what], 'ms', 1000)} |")
    print(f"| ICMP ping between the guests (20 each run) | | "
          f"{summary(figures['icmp_s'], 'ms', 1000)} |")
    print(f"| joining a network (hot-plug, addresses, hosts files) | "
          f"{summary(figures['join_s'])} | |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--os", default="debian-12")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--mb", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--remote", action="store_true",
                        help="also on a remote host made on this machine (tests/e2e/remotehost.py)")
    args = parser.parse_args()
    log = lambda m: print(m, file=sys.stderr)  # noqa: E731
    results = {}
    with contextlib.ExitStack() as stack:
        scratch = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        places: dict[str, tuple[str, ...]] = {"this machine": ()}
        if args.remote:
            sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "e2e"))
            from remotehost import FakeHost  # noqa: PLC0415
            places["a remote host (--kvm-host, over SSH)"] = (
                stack.enter_context(FakeHost()).libssh_uri,)
        for where, hosts in places.items():
            session = KvmSession(Settings.build(os_names=(args.os,), accel="tcg", hosts=hosts),
                                 progress=log)
            try:
                results[where] = measure(session, args, scratch, user_networking=not hosts)
            finally:
                session.close()
    for where, figures in results.items():
        table(where, figures, args)
    print(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
