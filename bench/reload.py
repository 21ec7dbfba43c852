#!/usr/bin/env python3
"""edgeward reloaded under load, on loopback (`make reload-test`; see docs/benchmarks.md).

Against the release build behind the benchmark's nginx origin, with wrk on 64 keep-alive
connections asking for 1 KiB:

1. 30 s without reloads: requests and p99, the reference;
2. 30 s during which the configuration is reloaded 20 times (`POST /config/reload`,
   alternating two configurations with different filter chains): requests, socket errors,
   non-2xx answers and p99;
3. 100 reloads in a row, then the RSS against the RSS after the first;
4. 30 s during which a new process takes the listeners over (`run --upgrade`) and the old
   one drains and exits: requests, socket errors, non-2xx answers and p99.

Prints one Markdown report. Exits 1 when a figure misses its bound: any error or non-2xx
answer during the reloads or the upgrade, a p99 during the reloads over twice the reference,
or RSS after 100 reloads more than 10 % over the RSS after the first.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run  # noqa: E402  (the benchmark's origin and helpers)

SECONDS = 30
RELOADS_UNDER_LOAD = 20
RELOADS_IN_A_ROW = 100


def proxy_config(port: int, admin: int, origin: int, workers: int, chain: list[str]) -> str:
    filters = "".join(f"""
  {name}:
    module: {run.FILTERS}/add_headers.wasm
    config: {{response: {{set: {{x-{name}: "1"}}}}}}""" for name in chain)
    return f"""# edgeward reloaded under load: chain {chain}
listeners: [{{address: "127.0.0.1:{port}"}}]
admin: {{address: "127.0.0.1:{admin}"}}
workers: {workers}
access_log: off
upstreams: {{origin: {{endpoints: ["127.0.0.1:{origin}"]}}}}
filters:{filters}
routes: [{{upstream: origin, filters: [{", ".join(chain)}]}}]
"""


def reload(admin: int) -> int:
    """Reloads through the admin listener; the new generation's number."""
    request = urllib.request.Request(f"http://127.0.0.1:{admin}/config/reload", method="POST")
    with urllib.request.urlopen(request, timeout=60) as response:
        answer = json.load(response)
    if not answer.get("reloaded"):
        raise RuntimeError(f"reload refused: {answer}")
    return answer["generation"]


def main() -> None:
    for tool in ["nginx", "wrk"]:
        if not run.shutil.which(tool):
            raise SystemExit(f"`{tool}` is missing: `make reload-test` installs it")
    for needed in [run.EDGEWARD, run.FILTERS / "add_headers.wasm"]:
        if not needed.exists():
            raise SystemExit(f"{needed} is missing: run `make reload-test` (it builds it)")
    cores = run.Cores.split()
    folder = run.ROOT / "target" / "bench" / ("reload-" + time.strftime("%Y%m%d-%H%M%S"))
    folder.mkdir(parents=True)
    run.origin_bodies(folder)
    ports = run.Ports(25000)
    origin_port, port, admin = ports.take(), ports.take(), ports.take()
    (folder / "origin.conf").write_text(run.nginx_origin_config(folder, origin_port))
    workers = len(cores.proxy)
    configs = [proxy_config(port, admin, origin_port, workers, chain)
               for chain in (["one"], ["one", "two", "three"])]
    config_file = folder / "edgeward.yaml"
    config_file.write_text(configs[0])
    origin = subprocess.Popen(cores.pin(cores.load) + ["nginx", "-c", str(folder / "origin.conf"),
                              "-e", str(folder / "origin-error.log")], start_new_session=True,
                              stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    proxy = subprocess.Popen(cores.pin(cores.proxy) + [str(run.EDGEWARD), "run", "--config", str(config_file)],
                             stdout=open(folder / "edgeward.out", "wb"), stderr=subprocess.STDOUT,
                             start_new_session=True)
    failures = []
    successors: list[subprocess.Popen] = []
    threads = max(1, len(cores.load))

    def switch(to: int) -> int:
        staged = folder / "edgeward.yaml.new"
        staged.write_text(configs[to % 2])
        staged.rename(config_file)
        return reload(admin)

    try:
        run.wait_until_serving(f"http://127.0.0.1:{origin_port}/1k", origin, {}, "the origin")
        run.wait_until_serving(f"http://127.0.0.1:{port}/1k", proxy, {}, "edgeward")
        print(f"# edgeward reloaded under load, {time.strftime('%Y-%m-%d')}, {run.git_commit()}")
        print(f"machine: {run.machine()}; files in {folder}\n")

        calm = run.wrk_tally(port, 64, SECONDS, threads)
        print(f"1. {SECONDS} s on 64 connections without reloads: {calm['requests']} requests, "
              f"{calm['errors']} socket errors, {calm['non_2xx']} non-2xx, p99 {calm['p99_ms']:.2f} ms")

        done = threading.Event()
        reloads: list[float] = []

        def reloader() -> None:
            time.sleep(1)
            gap = (SECONDS - 4) / RELOADS_UNDER_LOAD
            for n in range(RELOADS_UNDER_LOAD):
                if done.is_set():
                    return
                started = time.monotonic()
                switch(n + 1)
                reloads.append(time.monotonic() - started)
                time.sleep(max(0.0, gap - reloads[-1]))

        thread = threading.Thread(target=reloader)
        thread.start()
        busy = run.wrk_tally(port, 64, SECONDS, threads)
        done.set()
        thread.join()
        slowest = max(reloads) if reloads else float("nan")
        print(f"2. {SECONDS} s on 64 connections with {len(reloads)} reloads (each {min(reloads):.2f}–"
              f"{slowest:.2f} s, filter chains of 1 and 3 alternating): {busy['requests']} requests, "
              f"{busy['errors']} socket errors, {busy['non_2xx']} non-2xx, p99 {busy['p99_ms']:.2f} ms "
              f"({busy['p99_ms'] / calm['p99_ms']:.2f}× without reloads)")
        if len(reloads) < RELOADS_UNDER_LOAD:
            failures.append(f"only {len(reloads)} reloads happened during the load")
        if busy["errors"] or busy["non_2xx"] or not busy["requests"]:
            failures.append(f"errors during the reloads:\n{busy['raw']}")
        if busy["p99_ms"] > 2 * calm["p99_ms"]:
            failures.append("p99 during reloads over twice the p99 without")

        switch(0)
        time.sleep(1)
        first = run.status_kib([proxy.pid], "VmRSS") / 1024
        for n in range(RELOADS_IN_A_ROW - 1):
            switch(n + 1)
        time.sleep(2)
        last = run.status_kib([proxy.pid], "VmRSS") / 1024
        print(f"3. RSS after one more reload {first:.1f} MiB, after {RELOADS_IN_A_ROW} more "
              f"{last:.1f} MiB ({(last / first - 1) * 100:+.1f} %)")
        if last > first * 1.10:
            failures.append(f"RSS grew from {first:.1f} MiB to {last:.1f} MiB over {RELOADS_IN_A_ROW} reloads")

        def upgrade() -> None:
            time.sleep(3)
            successors.append(subprocess.Popen(
                cores.pin(cores.proxy) + [str(run.EDGEWARD), "run", "--upgrade", "--config", str(config_file)],
                stdout=open(folder / "edgeward-upgraded.out", "wb"), stderr=subprocess.STDOUT,
                start_new_session=True))

        thread = threading.Thread(target=upgrade)
        thread.start()
        handed = run.wrk_tally(port, 64, SECONDS, threads)
        thread.join()
        old_exit = proxy.wait(timeout=60)
        print(f"4. {SECONDS} s on 64 connections with an upgrade (`run --upgrade`) 3 s in; the old "
              f"process exited with {old_exit}: {handed['requests']} requests, {handed['errors']} "
              f"socket errors, {handed['non_2xx']} non-2xx, p99 {handed['p99_ms']:.2f} ms")
        if handed["errors"] or handed["non_2xx"] or old_exit != 0:
            failures.append(f"errors during the upgrade:\n{handed['raw']}")
    finally:
        run.stop_and_report([proxy, origin, *successors], failures)


if __name__ == "__main__":
    main()
