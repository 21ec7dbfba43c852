#!/usr/bin/env python3
"""Instructions per request, counted by callgrind: repeatable where throughput rounds are not.

Runs edgeward under `valgrind --tool=callgrind` behind the benchmark's nginx origin, warms it
up, counts the instructions of every thread over a fixed number of keep-alive requests, and
divides. Each scenario of bench/run.py that edgeward serves alone: a plain 1 KiB GET, a 1 KiB
cache hit, the three demo filters, and each other shipped filter alone. Give several binaries to compare builds in one run:

    python3 bench/instructions.py                      # target/release/edgeward
    python3 bench/instructions.py --binary old/edgeward --binary target/release/edgeward

Two runs of one binary differ by well under 1 %; see docs/benchmarks.md (Profiling).
"""

from __future__ import annotations

import argparse
import http.client
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run  # noqa: E402  (the benchmark's origin, configurations and helpers)

SCENARIOS = [
    # (title, path, filter chain, headers)
    ("plain 1 KiB GET", "/1k", [], {}),
    ("cache hit, 1 KiB", "/cache/1k", [], {}),
    (
        "three demo filters, 1 KiB GET",
        "/1k",
        ["jwt", "geo", "headers"],
        {"Authorization": f"Bearer {run.DEMO_TOKEN}", "X-Forwarded-For": run.CLIENT_IN_GERMANY},
    ),
    # Each of the other shipped filters alone (image-resize has its own benchmark).
    ("ab-test, new clients, 1 KiB GET", "/1k", ["ab"], {}),
    ("rate-limit, one limit, 1 KiB GET", "/1k", ["limit"], {}),
    ("json-transform, 1 KiB JSON", "/api/1k.json", ["json"], {}),
    ("api-compose, two 1 KiB parts", "/account", ["compose"], {}),
]


def send(port: int, path: str, headers: dict[str, str], count: int) -> None:
    """`count` requests on one keep-alive connection, each answered 200."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    for _ in range(count):
        connection.request("GET", path, headers=headers)
        response = connection.getresponse()
        response.read()
        if response.status != 200:
            raise SystemExit(f"{path}: status {response.status}")
    connection.close()


def callgrind_total(out_file: Path) -> int:
    """The instructions a callgrind dump counted (its `totals:` line)."""
    for line in out_file.read_text(errors="replace").splitlines():
        if line.startswith("totals:"):
            return int(line.split()[1])
    raise SystemExit(f"{out_file}: no totals line")


def count(binary: Path, scenario, folder: Path, ports: run.Ports, origin: int, args) -> float:
    title, path, chain, headers = scenario
    port = ports.take()
    name = f"{binary.name}-{'-'.join(chain) or 'plain'}"
    config = folder / f"{name}.yaml"
    # A small instance pool: the default one reserves more address space than valgrind allows.
    # Guests run tens of times slower under valgrind: their CPU limit is lifted, or a first JWT
    # verification may exceed it.
    yaml = run.edgeward_config(folder, name, port, origin, 1, chain, "shared")
    yaml = yaml.replace("    isolation: shared\n", "    isolation: shared\n    limits: {cpu: 60s}\n")
    config.write_text(yaml + f"wasm: {{max_instances: 8, module_cache: {folder / 'modules'}}}\n")
    # Filters compiled once, outside valgrind, into the module cache the counted run loads.
    if chain:
        warm = subprocess.Popen([str(binary), "run", "--config", str(config)], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True)
        run.wait_until_serving(f"http://127.0.0.1:{port}/1k", warm, headers, "edgeward (warming the module cache)")
        os.killpg(warm.pid, signal.SIGTERM)
        warm.wait()
    for old in folder.glob("callgrind.out*"):
        old.unlink()
    out_file = folder / "callgrind.out"
    process = subprocess.Popen(
        ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out_file}",
         str(binary), "run", "--config", str(config)],
        stdout=open(folder / f"{name}.valgrind.log", "wb"), stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 300
        while True:
            try:
                send(port, path, headers, 1)
                break
            except (OSError, http.client.HTTPException):
                if process.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"edgeward under valgrind did not start: see {folder / (name + '.valgrind.log')}")
                time.sleep(0.5)
        send(port, path, headers, args.warmup)
        control = lambda *words: subprocess.run(["callgrind_control", *words, str(process.pid)], check=True,
                                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        control("-i", "on")
        send(port, path, headers, args.requests)
        control("-i", "off")
        control("-d")
        dumps = sorted(folder.glob("callgrind.out.*"))
        if not dumps:
            raise SystemExit("callgrind wrote no dump")
        # Kept for `callgrind_annotate`, named by binary and scenario.
        kept = folder / f"{binary.name}-{title.split(',')[0].replace(' ', '-')}.callgrind"
        dumps[-1].rename(kept)
        return callgrind_total(kept) / args.requests
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--binary", type=Path, action="append", help="edgeward binaries to count (default: target/release/edgeward)")
    parser.add_argument("--requests", type=int, default=2000, help="requests counted per scenario")
    parser.add_argument("--warmup", type=int, default=300, help="requests before counting")
    parser.add_argument("--only", action="append", help="scenarios whose title contains this (repeatable)")
    args = parser.parse_args()
    binaries = [b.resolve() for b in (args.binary or [run.EDGEWARD])]
    for tool in ["nginx", "valgrind", "callgrind_control"]:
        if not shutil.which(tool):
            raise SystemExit(f"`{tool}` is missing (apt-get install nginx valgrind)")
    folder = run.ROOT / "target" / "bench" / ("instructions-" + time.strftime("%Y%m%d-%H%M%S"))
    folder.mkdir(parents=True)
    run.origin_bodies(folder)
    ports = run.Ports(23000)
    origin_port = ports.take()
    (folder / "origin.conf").write_text(run.nginx_origin_config(folder, origin_port))
    origin = subprocess.Popen(["nginx", "-c", str(folder / "origin.conf"), "-e", str(folder / "origin-error.log")],
                              stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True)
    print(f"# instructions per request (callgrind, {args.requests} requests after {args.warmup}); files in {folder}")
    print("| scenario | " + " | ".join(str(b) for b in binaries) + " |")
    print("|---|" + "---:|" * len(binaries))
    try:
        run.wait_until_serving(f"http://127.0.0.1:{origin_port}/1k", origin, {}, "the origin")
        for scenario in SCENARIOS:
            if args.only and not any(only in scenario[0] for only in args.only):
                continue
            counts = [count(binary, scenario, folder, ports, origin_port, args) for binary in binaries]
            print(f"| {scenario[0]} | " + " | ".join(f"{c / 1000:.1f}k" for c in counts) + " |", flush=True)
    finally:
        os.killpg(origin.pid, signal.SIGTERM)
        origin.wait()


if __name__ == "__main__":
    main()
