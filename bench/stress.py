#!/usr/bin/env python3
"""edgeward under hostile and heavy load on loopback (`make stress`; see docs/benchmarks.md).

Three measurements against the release build behind the benchmark's nginx origin, in this
order (the soak first, on a fresh process, so that it shows the steady state):

1. a soak (3 minutes by default; `--soak`) on 256 keep-alive connections: requests, errors,
   and the proxy's RSS sampled every 10 s, after the first minute against the end;
2. slowloris: 200 connections sending one header line every 5 s and 10 sending nothing; when
   was each closed, against `client.header_timeout` (10 s, the default)?
3. 5,000 concurrent keep-alive connections (wrk) for 20 s: requests, errors, non-2xx answers,
   and the RSS at the end.

Prints one Markdown report. Exits 1 when a figure misses its bound: a slowloris connection open
past header_timeout + 1 s, any error at 5,000 connections, or RSS grown by more than 10 %
between the soak's first minute and its end.
"""

from __future__ import annotations

import argparse
import resource
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run  # noqa: E402  (the benchmark's origin and helpers)

HEADER_TIMEOUT = 10.0


def proxy_config(folder: Path, port: int, origin: int, workers: int) -> str:
    return f"""# edgeward under stress
listeners: [{{address: "127.0.0.1:{port}", client: {{header_timeout: {HEADER_TIMEOUT:g}s, max_connections: 20000}}}}]
workers: {workers}
access_log: off
upstreams: {{origin: {{endpoints: ["127.0.0.1:{origin}"]}}}}
routes: [{{upstream: origin}}]
"""


def rss_mib(pid: int) -> float:
    return run.status_kib([pid], "VmRSS") / 1024


def slowloris(port: int, slow: int = 200, silent: int = 10) -> dict:
    """Opens the connections, trickles header lines, and records when each was closed."""
    started = time.monotonic()
    sockets = []
    for i in range(slow + silent):
        s = socket.create_connection(("127.0.0.1", port))
        s.setblocking(False)
        if i < slow:
            s.sendall(b"GET / HTTP/1.1\r\nHost: stress\r\n")
        sockets.append(s)
    closed_at: dict[int, float] = {}
    answered_408 = 0
    deadline = started + HEADER_TIMEOUT + 30
    next_line = started + 5
    while len(closed_at) < len(sockets) and time.monotonic() < deadline:
        for i, s in enumerate(sockets):
            if i in closed_at:
                continue
            try:
                data = s.recv(4096)
                if data.startswith(b"HTTP/1.1 408"):
                    answered_408 += 1
                if not data:
                    closed_at[i] = time.monotonic() - started
            except BlockingIOError:
                pass
            except OSError:
                closed_at[i] = time.monotonic() - started
        if time.monotonic() >= next_line:
            next_line += 5
            for i, s in enumerate(sockets[:slow]):
                if i not in closed_at:
                    try:
                        s.sendall(b"x-slow: 1\r\n")
                    except OSError:
                        closed_at[i] = time.monotonic() - started
        time.sleep(0.05)
    for s in sockets:
        s.close()
    open_left = len(sockets) - len(closed_at)
    latest = max(closed_at.values(), default=float("nan"))
    return {"connections": len(sockets), "closed": len(closed_at), "open_left": open_left,
            "latest_close_s": latest, "answered_408": answered_408}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--soak", type=int, default=180, help="seconds of the soak")
    parser.add_argument("--connections", type=int, default=5000, help="concurrent connections")
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = min(hard, 4 * args.connections + 1000)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, wanted), hard))
    for tool in ["nginx", "wrk"]:
        if not run.shutil.which(tool):
            raise SystemExit(f"`{tool}` is missing: `make stress` installs it")
    if not run.EDGEWARD.exists():
        raise SystemExit(f"{run.EDGEWARD} is missing: run `make stress` (it builds edgeward)")
    cores = run.Cores.split()
    folder = run.ROOT / "target" / "bench" / ("stress-" + time.strftime("%Y%m%d-%H%M%S"))
    folder.mkdir(parents=True)
    run.origin_bodies(folder)
    ports = run.Ports(24000)
    origin_port, port = ports.take(), ports.take()
    (folder / "origin.conf").write_text(run.nginx_origin_config(folder, origin_port).replace(
        "worker_connections 4096", f"worker_connections {2 * args.connections + 100}"))
    (folder / "edgeward.yaml").write_text(proxy_config(folder, port, origin_port, len(cores.proxy)))
    origin = subprocess.Popen(cores.pin(cores.load) + ["nginx", "-c", str(folder / "origin.conf"),
                              "-e", str(folder / "origin-error.log")], start_new_session=True,
                              stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    proxy = subprocess.Popen(cores.pin(cores.proxy) + [str(run.EDGEWARD), "run", "--config", str(folder / "edgeward.yaml")],
                             stdout=open(folder / "edgeward.out", "wb"), stderr=subprocess.STDOUT, start_new_session=True)
    failures = []
    try:
        run.wait_until_serving(f"http://127.0.0.1:{origin_port}/1k", origin, {}, "the origin")
        run.wait_until_serving(f"http://127.0.0.1:{port}/1k", proxy, {}, "edgeward")
        print(f"# edgeward under stress, {time.strftime('%Y-%m-%d')}, {run.git_commit()}")
        print(f"machine: {run.machine()}; files in {folder}\n")

        samples: list[tuple[float, float]] = []
        stop = threading.Event()

        def sample() -> None:
            started = time.monotonic()
            while not stop.wait(10):
                samples.append((time.monotonic() - started, rss_mib(proxy.pid)))

        sampler = threading.Thread(target=sample)
        sampler.start()
        soak = run.wrk_tally(port, 256, args.soak, max(1, len(cores.load)))
        stop.set()
        sampler.join()
        first = next((mib for at, mib in samples if at >= 60), samples[0][1] if samples else float("nan"))
        last = samples[-1][1] if samples else float("nan")
        print(f"1. soak, 256 connections for {args.soak} s: {soak['requests']} requests, "
              f"{soak['errors']} socket errors, {soak['non_2xx']} non-2xx; RSS every 10 s (MiB): "
              + ", ".join(f"{mib:.0f}" for _, mib in samples))
        if soak["errors"] or soak["non_2xx"]:
            failures.append("errors in the soak")
        if last > first * 1.10:
            failures.append(f"RSS grew from {first:.0f} MiB after a minute to {last:.0f} MiB")
        loris = slowloris(port)
        print(f"2. slowloris: {loris['connections']} connections ({loris['answered_408']} answered 408), "
              f"{loris['closed']} closed, the last after {loris['latest_close_s']:.1f} s "
              f"(header_timeout {HEADER_TIMEOUT:g} s); {loris['open_left']} still open")
        if loris["open_left"] or loris["latest_close_s"] > HEADER_TIMEOUT + 1:
            failures.append("slowloris connections outlived header_timeout + 1 s")

        many = run.wrk_tally(port, args.connections, 20, max(1, len(cores.load)))
        print(f"3. {args.connections} connections for 20 s: {many['requests']} requests, "
              f"{many['errors']} socket errors, {many['non_2xx']} non-2xx answers; "
              f"RSS {rss_mib(proxy.pid):.0f} MiB")
        if many["errors"] or many["non_2xx"] or not many["requests"]:
            failures.append(f"errors at {args.connections} connections:\n{many['raw']}")

    finally:
        run.stop_and_report([proxy, origin], failures)


if __name__ == "__main__":
    main()
