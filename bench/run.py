#!/usr/bin/env python3
"""edgeward against nginx, side by side on this machine (`make bench`; see docs/benchmarks.md).

Starts a fast local origin (nginx serving fixed bodies), then, scenario by scenario, starts
each contender (edgeward and nginx configured equivalently, or edgeward configurations
against each other), and drives them with wrk (HTTP/1.1, in cleartext or over TLS 1.3) or
h2load (h2c) on loopback, in alternating rounds. Then measures the memory an idle keep-alive
connection holds, over TLS and in cleartext. Prints Markdown tables of medians, ratios from
the same run, and the targets of issues 7 and 18 with their verdicts.

The proxies under test share the first half of the cores; the load generator and the origin
get the other half. Both proxies get the same number of workers (one per core of their half).
Every configuration used is written to the run folder, printed at the start.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Another build can be measured with EDGEWARD_BIN (e.g. one before a change).
EDGEWARD = Path(os.environ.get("EDGEWARD_BIN", ROOT / "target" / "release" / "edgeward"))
FILTERS = ROOT / "filters" / "target" / "wasm32-wasip1" / "release"
GEO_DATABASE = ROOT / "config" / "geo" / "demo.mmdb"
DEMO_CONFIG = ROOT / "config" / "edgeward.yaml"
# Signed with the demo HMAC key of config/edgeward.yaml (also in the Makefile); expires in 2100.
DEMO_TOKEN = (
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCIsImtpZCI6ImRlbW8ifQ."
    "eyJpc3MiOiJodHRwczovL2RlbW8uZWRnZXdhcmQuZXhhbXBsZSIsImF1ZCI6ImVkZ2UtYXBpIiwic3ViIjoiZGVtby11c2VyIiwiZW1haWwiOiJkZW1vQGV4YW1wbGUuY29tIiwiaWF0IjoxNzY0MDAwMDAwLCJleHAiOjQxMDI0NDQ4MDB9."
    "-uXvDZjqRwtuqjy467BmqXqH8cQKXiA57vZFKPTozmE"
)
# A client the demo geo database places in Germany: geo-router sends it to `origin-eu`.
CLIENT_IN_GERMANY = "198.51.100.7"
CONNECTIONS = 64
H2_STREAMS_PER_CONNECTION = 10
# Idle keep-alive connections opened to measure the memory each holds.
IDLE_CONNECTIONS = 1000
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


# ---------------------------------------------------------------------------------------------
# Processes and what they cost


def process_tree(pid: int) -> list[int]:
    """`pid` and its descendants (nginx's master and workers)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(parent, []).append(int(entry.name))
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(children.get(current, []))
    return tree


def cpu_seconds(pids: list[int]) -> float:
    """User plus system CPU time of the processes (all their threads)."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / CLOCK_TICKS


def status_kib(pids: list[int], key: str) -> int:
    """Sum of a /proc/PID/status field (VmRSS, VmHWM) in KiB."""
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith(key + ":"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total


def port_is_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


class Ports:
    """Loopback ports below the ephemeral range, checked free before use."""

    def __init__(self, start: int) -> None:
        self.next = start

    def take(self) -> int:
        while not port_is_free(self.next):
            self.next += 1
        self.next += 1
        return self.next - 1


def unverified_tls() -> ssl.SSLContext:
    """A client context for the benchmark's own self-signed certificate: TLS 1.3, no checks."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    return context


def wait_until_serving(url: str, process: subprocess.Popen, headers: dict[str, str], what: str) -> None:
    deadline = time.monotonic() + 30
    context = unverified_tls() if url.startswith("https:") else None
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"{what} exited with status {process.returncode} while starting")
        try:
            request = urllib.request.Request(url, headers=headers)
            with urllib.request.urlopen(request, timeout=2, context=context) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise SystemExit(f"{what} did not answer 200 at {url} within 30 s")


@dataclass
class Cores:
    """The proxies' cores and the load side's cores (the same set when there is one core)."""

    proxy: list[int]
    load: list[int]

    @staticmethod
    def split() -> "Cores":
        cores = sorted(os.sched_getaffinity(0))
        if len(cores) < 2:
            return Cores(cores, cores)
        half = len(cores) // 2
        return Cores(cores[:half], cores[half:])

    def pin(self, which: list[int]) -> list[str]:
        return ["taskset", "-c", ",".join(map(str, which))] if shutil.which("taskset") else []


# ---------------------------------------------------------------------------------------------
# The origin and the contenders


def certificate(folder: Path) -> tuple[Path, Path]:
    """The certificate of this run's TLS listeners (both proxies', the demo's): ECDSA P-256,
    self-signed, for localhost and 127.0.0.1 (the load generators do not verify it)."""
    cert, key = folder / "tls-cert.pem", folder / "tls-key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
         "-keyout", str(key), "-out", str(cert), "-days", "30", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1", "-addext", "basicConstraints=critical,CA:FALSE"],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


# wrk keeps each connection's TLS session when it reconnects (it reuses the connection's SSL
# object), so after the first handshake every new connection resumes. Preloaded into wrk, this
# forgets the session before each reconnection: every connection then makes a full handshake.
NO_RESUMPTION_C = r"""#define _GNU_SOURCE
#include <dlfcn.h>
typedef struct ssl_st SSL;
int SSL_clear(SSL *ssl) {
    static int (*clear)(SSL *);
    static int (*set_session)(SSL *, void *);
    if (!clear) {
        clear = (int (*)(SSL *))dlsym(RTLD_NEXT, "SSL_clear");
        set_session = (int (*)(SSL *, void *))dlsym(RTLD_NEXT, "SSL_set_session");
    }
    set_session(ssl, 0);
    return clear(ssl);
}
"""


def no_resumption(folder: Path) -> Path:
    source, library = folder / "no-resumption.c", folder / "no-resumption.so"
    source.write_text(NO_RESUMPTION_C)
    subprocess.run(["cc", "-shared", "-fPIC", "-O2", "-o", str(library), str(source)], check=True)
    return library


def origin_bodies(folder: Path) -> None:
    """Files the origin serves: /1k and /cache/1k, /cache/100k (cacheable), and /api/1k.json
    (a JSON document of about 1 KiB, for the JSON filters)."""
    www = folder / "www"
    (www / "cache").mkdir(parents=True, exist_ok=True)
    (www / "api").mkdir(parents=True, exist_ok=True)
    for name, size in [("1k", 1024), ("cache/1k", 1024), ("cache/100k", 102400)]:
        (www / name).write_bytes(bytes((i * 7 + 13) % 251 for i in range(size)))
    items = ",".join(
        f'{{"id":{n},"name":"item {n}","price":{n * 3}.50,"secret":"s{n:04}"}}' for n in range(16)
    )
    (www / "api" / "1k.json").write_text(f'{{"count":16,"items":[{items}]}}')


def nginx_origin_config(folder: Path, port: int) -> str:
    return f"""# The benchmark origin: fixed bodies from memory, as fast as nginx serves.
worker_processes 1;
daemon off;
pid {folder}/origin.pid;
error_log {folder}/origin-error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    default_type application/octet-stream;
    open_file_cache max=100;
    keepalive_requests 1000000;
    server {{
        listen 127.0.0.1:{port} reuseport backlog=4096;
        root {folder}/www;
        location = /1k {{
            # Answers any method (POST included) with the file's bytes.
            error_page 405 =200 $uri;
        }}
        location /cache/ {{
            add_header Cache-Control "public, max-age=3600";
        }}
        location /api/ {{
            default_type application/json;
        }}
    }}
}}
"""


def nginx_proxy_config(
    folder: Path, cache_dir: Path, port: int, h2_port: int, tls_port: int, tls: tuple[Path, Path], origin: int, workers: int
) -> str:
    return f"""# nginx as the reference reverse proxy and cache, configured like edgeward: the same
# per-request work (a request id, the forwarding headers, Via both ways, one JSON access-log
# line with the same fields). TLS as edgeward's: 1.3 only here, the same certificate,
# session tickets (nginx's default) and no server-side session cache (TLS 1.3 resumes by
# ticket only in edgeward).
worker_processes {workers};
daemon off;
pid {folder}/nginx.pid;
error_log {folder}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
    log_format edge escape=json '{{"time":"$time_iso8601","request_id":"$request_id",'
        '"client":"$remote_addr:$remote_port","protocol":"$server_protocol",'
        '"method":"$request_method","host":"$host","path":"$request_uri","status":$status,'
        '"bytes_sent":$body_bytes_sent,"bytes_received":$request_length,"upstream":"origin",'
        '"endpoint":"$upstream_addr","duration_s":$request_time}}';
    # Written in batches, as edgeward writes its log.
    access_log {folder}/nginx-access.log edge buffer=64k flush=10ms;
    keepalive_requests 1000000;
    client_body_buffer_size 64k;
    upstream origin {{
        server 127.0.0.1:{origin};
        keepalive 128;
    }}
    proxy_cache_path {cache_dir} levels=1:2 keys_zone=edge:16m max_size=256m inactive=1h use_temp_path=off;
    server {{
        listen 127.0.0.1:{port} reuseport backlog=4096;
        listen 127.0.0.1:{h2_port} http2 reuseport backlog=4096;
        listen 127.0.0.1:{tls_port} ssl reuseport backlog=4096;
        ssl_certificate {tls[0]};
        ssl_certificate_key {tls[1]};
        ssl_protocols TLSv1.3;
        proxy_http_version 1.1;
        proxy_set_header Connection "";
        proxy_set_header Host $host;
        proxy_set_header X-Request-Id $request_id;
        proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
        proxy_set_header X-Forwarded-Proto $scheme;
        proxy_set_header X-Forwarded-Host $host;
        proxy_set_header Via "1.1 edgeward";
        location / {{
            proxy_pass http://origin;
            add_header Via "1.1 edgeward";
        }}
        location /cache/ {{
            proxy_pass http://origin;
            proxy_cache edge;
            proxy_cache_lock on;
            proxy_cache_use_stale updating error timeout;
            add_header Cache-Status $upstream_cache_status;
            add_header Via "1.1 edgeward";
        }}
    }}
}}
"""


FILTER_CONFIGS = {
    "headers": f"""
    module: {FILTERS}/add_headers.wasm
    isolation: $isolation
    config:
      request: {{set: {{x-edge: "1"}}, remove: [x-internal-secret]}}
      response: {{set: {{x-served-by: edgeward, x-edge-country: "${{geo.country_code:-XX}}"}}, remove: [x-powered-by]}}""",
    "jwt": f"""
    module: {FILTERS}/jwt_auth.wasm
    isolation: $isolation
    config:
      providers:
        - issuer: https://demo.edgeward.example
          audiences: [edge-api]
          jwks: {{keys: [{{kty: oct, kid: demo, alg: HS256, k: ZWRnZXdhcmQtZGVtby1zZWNyZXQtZG8tbm90LXVzZS1pbi1wcm9kdWN0aW9u}}]}}
      forward_claims: {{sub: x-user-id, email: x-user-email}}""",
    "geo": f"""
    module: {FILTERS}/geo_router.wasm
    isolation: $isolation
    config:
      countries: {{JP: origin-apac, DE: origin-eu, FR: origin-eu}}""",
    # Every request a new client: placed by weight, with a cookie to set.
    "ab": f"""
    module: {FILTERS}/ab_test.wasm
    isolation: $isolation
    config:
      buckets: {{control: 90, variant: {{weight: 10, upstream: origin-eu, request_headers: {{x-variant: b}}}}}}""",
    # Limits no benchmark reaches: the cost of counting, not of refusing.
    "limit": f"""
    module: {FILTERS}/rate_limit.wasm
    isolation: $isolation
    config:
      limits:
        - {{name: per-client, rate: 1000000, per: 1s, key: [client_address]}}""",
    "json": f"""
    module: {FILTERS}/json_transform.wasm
    isolation: $isolation
    config:
      response:
        remove: [/items/*/secret]
        rename: {{/count: /total}}
        set: {{/request_id: "${{request.id}}"}}""",
    # Two parts from the origin's JSON document, merged.
    "compose": f"""
    module: {FILTERS}/api_compose.wasm
    isolation: $isolation
    callouts: [origin, origin-eu]
    config:
      parts:
        first: {{from: origin, path: /api/1k.json}}
        second: {{from: origin-eu, path: /api/1k.json}}""",
}


def edgeward_config(
    folder: Path, name: str, port: int, origin: int, workers: int, chain: list[str], isolation: str,
    tls: tuple[int, Path, Path] | None = None,
) -> str:
    """The same origin under every upstream name; `chain` runs on every route. `tls` (port,
    certificate, key) adds a TLS 1.3 listener."""
    filters = "".join(
        f"\n  {f}:" + FILTER_CONFIGS[f].replace("$isolation", isolation) for f in chain
    )
    chain_yaml = f"[{', '.join(chain)}]"
    listeners = f'{{address: "127.0.0.1:{port}"}}'
    if tls:
        listeners += (f', {{address: "127.0.0.1:{tls[0]}", '
                      f'tls: {{certificates: [{{cert: {tls[1]}, key: {tls[2]}}}], min_version: "1.3"}}}}')
    return f"""# edgeward under benchmark: {name}
listeners: [{listeners}]
workers: {workers}
access_log: {folder}/edgeward-{name}-access.log
geo: {{database: {GEO_DATABASE}, trusted_proxies: [127.0.0.1/32]}}
cache: {{memory: 256MiB}}
upstreams:
  origin: {{endpoints: ["127.0.0.1:{origin}"]}}
  origin-eu: {{endpoints: ["127.0.0.1:{origin}"]}}
  origin-apac: {{endpoints: ["127.0.0.1:{origin}"]}}
filters:{filters or " {}"}
routes:
  - {{match: {{path_prefix: /cache/}}, upstream: origin, cache: {{enabled: true}}, filters: {chain_yaml}}}
  - {{match: {{path_prefix: /}}, upstream: origin, filters: {chain_yaml}}}
"""


@dataclass
class Contender:
    """One proxy configuration: how to start it, where to send load."""

    name: str
    kind: str  # "edgeward" or "nginx"
    command: list[str]
    port: int
    h2_port: int | None = None
    tls_port: int | None = None
    process: subprocess.Popen | None = None
    pids: list[int] = field(default_factory=list)

    def start(self, cores: Cores, folder: Path, headers: dict[str, str]) -> None:
        log = open(folder / f"{self.name}.out", "wb")
        self.process = subprocess.Popen(
            cores.pin(cores.proxy) + self.command,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        wait_until_serving(f"http://127.0.0.1:{self.port}/1k", self.process, headers, self.name)
        if self.tls_port:
            wait_until_serving(f"https://127.0.0.1:{self.tls_port}/1k", self.process, headers, self.name)
        # taskset execs the proxy: the pid is the proxy's own.
        self.pids = process_tree(self.process.pid)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()

    def peak_rss_mib(self) -> float:
        return status_kib(self.pids, "VmHWM") / 1024


# ---------------------------------------------------------------------------------------------
# Load and its results


@dataclass
class Run:
    requests: int
    seconds: float
    rps: float
    p50_ms: float
    p99_ms: float
    cpu_s: float

    @property
    def cpu_per_10k(self) -> float:
        return self.cpu_s / self.requests * 10_000 if self.requests else float("nan")


@dataclass
class Load:
    """What a scenario sends: path, method/body (a wrk Lua script), headers, protocol (h2c, or
    HTTP/1.1 in cleartext or over TLS), and a library preloaded into the load generator."""

    path: str
    headers: dict[str, str] = field(default_factory=dict)
    script: Path | None = None
    h2: bool = False
    tls: bool = False
    preload: Path | None = None

    def command(self, port: int, seconds: float, threads: int, log: Path) -> list[str]:
        url = f"{'https' if self.tls else 'http'}://127.0.0.1:{port}{self.path}"
        header_args = [a for name, value in self.headers.items() for a in ("-H", f"{name}: {value}")]
        if self.h2:
            return [
                "h2load", "-c", str(CONNECTIONS), "-m", str(H2_STREAMS_PER_CONNECTION),
                "-t", str(threads), "-D", str(max(1, round(seconds))), "--log-file", str(log),
                *header_args, url,
            ]  # fmt: skip
        script = ["-s", str(self.script)] if self.script else []
        return [
            "wrk", "-t", str(threads), "-c", str(CONNECTIONS), "-d", f"{max(1, round(seconds))}s",
            "--latency", *script, *header_args, url,
        ]  # fmt: skip


def parse_duration_ms(text: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text).groups()
    return float(number) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[unit]


def wrk_tally(port: int, connections: int, seconds: int, threads: int) -> dict:
    """wrk on `/1k` that keeps going through errors, as the stress and reload runs want: its
    requests, socket errors, non-2xx answers, p99 (ms) and whole output."""
    command = ["wrk", "-t", str(threads), "-c", str(connections), "-d", f"{seconds}s", "--timeout", "10s",
               "--latency", f"http://127.0.0.1:{port}/1k"]
    out = subprocess.run(command, capture_output=True, text=True, check=False).stdout
    done = re.search(r"(\d+) requests in", out)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    p99 = re.search(r"^\s+99%\s+(\S+)", out, re.M)
    return {
        "requests": int(done.group(1)) if done else 0,
        "errors": sum(int(n) for n in errors.groups()) if errors else 0,
        "non_2xx": int(non2xx.group(1)) if non2xx else 0,
        "p99_ms": parse_duration_ms(p99.group(1)) if p99 else float("nan"),
        "raw": out,
    }


def stop_and_report(processes: list[subprocess.Popen], failures: list[str]) -> None:
    """Stops the processes of a run (each its process group), prints the failures and exits:
    1 when there are any."""
    for process in processes:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait()
    for failure in failures:
        print(f"\nFAILED: {failure}")
    sys.exit(1 if failures else 0)


def parse_wrk(output: str) -> tuple[int, float, float, float]:
    """(requests, seconds, p50 ms, p99 ms); refuses runs with errors or non-2xx answers."""
    if "Non-2xx or 3xx responses" in output:
        raise RuntimeError("some responses were not 2xx/3xx:\n" + output)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    if errors and any(int(n) for n in errors.groups()):
        raise RuntimeError("socket errors:\n" + output)
    done = re.search(r"(\d+) requests in ([\d.]+)(ms|s|m)", output)
    p50 = re.search(r"^\s+50%\s+(\S+)", output, re.M)
    p99 = re.search(r"^\s+99%\s+(\S+)", output, re.M)
    if not (done and p50 and p99):
        raise RuntimeError("unexpected wrk output:\n" + output)
    seconds = parse_duration_ms(done.group(2) + done.group(3)) / 1000
    return int(done.group(1)), seconds, parse_duration_ms(p50.group(1)), parse_duration_ms(p99.group(1))


def parse_h2load(output: str, log: Path) -> tuple[int, float, float, float]:
    done = re.search(r"finished in ([\d.]+)(ms|s|m)", output)
    status = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", output)
    requests = re.search(r"requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored", output)
    if not (done and status and requests):
        raise RuntimeError("unexpected h2load output:\n" + output)
    if int(status.group(3)) or int(status.group(4)) or int(requests.group(3)) or int(requests.group(4)):
        raise RuntimeError("failed requests:\n" + output)
    latencies = sorted(int(line.split("\t")[2]) for line in log.read_text().splitlines() if line.count("\t") >= 2)
    if not latencies:
        raise RuntimeError("h2load logged no requests:\n" + output)
    def percentile(p: float) -> float:
        return latencies[min(len(latencies) - 1, int(p * len(latencies)))] / 1000

    seconds = parse_duration_ms(done.group(1) + done.group(2)) / 1000
    return int(requests.group(2)), seconds, percentile(0.50), percentile(0.99)


def drive(contender: Contender, load: Load, seconds: float, cores: Cores, folder: Path) -> Run:
    log = folder / "h2load.log"
    port = contender.h2_port if load.h2 else contender.tls_port if load.tls else contender.port
    command = cores.pin(cores.load) + load.command(port, seconds, len(cores.load), log)
    env = {**os.environ, "LD_PRELOAD": str(load.preload)} if load.preload else None
    before = cpu_seconds(contender.pids)
    output = subprocess.run(command, capture_output=True, text=True, check=False, env=env)
    used = cpu_seconds(contender.pids) - before
    if output.returncode != 0:
        raise RuntimeError(f"{command[0]} failed: {output.stderr}{output.stdout}")
    if load.h2:
        requests, elapsed, p50, p99 = parse_h2load(output.stdout, log)
        log.unlink()
    else:
        requests, elapsed, p50, p99 = parse_wrk(output.stdout)
    return Run(requests, elapsed, requests / elapsed, p50, p99, used)


# ---------------------------------------------------------------------------------------------
# Scenarios


@dataclass
class Scenario:
    title: str
    load: Load
    contenders: list[str]
    # How the table compares: against `nginx`, or against the first contender.
    versus: str


def scenarios(post_script: Path, no_resumption_library: Path) -> list[Scenario]:
    auth = {"Authorization": f"Bearer {DEMO_TOKEN}", "X-Forwarded-For": CLIENT_IN_GERMANY}
    return [
        Scenario("1. proxy, 1 KiB GET", Load("/1k"), ["edgeward", "nginx"], "nginx"),
        Scenario("1b. proxy, 1 KiB GET, h2c", Load("/1k", h2=True), ["edgeward", "nginx"], "nginx"),
        Scenario("2. proxy, 10 KiB POST", Load("/1k", script=post_script), ["edgeward", "nginx"], "nginx"),
        Scenario("3a. cache hit, 1 KiB", Load("/cache/1k"), ["edgeward", "nginx"], "nginx"),
        Scenario("3b. cache hit, 100 KiB", Load("/cache/100k"), ["edgeward", "nginx"], "nginx"),
        Scenario(
            "4. filters, 1 KiB GET",
            Load("/1k", headers=auth),
            ["edgeward", "edgeward+headers", "edgeward+3 filters"],
            "first",
        ),
        Scenario(
            "5. isolation, header filter",
            Load("/1k", headers=auth),
            ["edgeward+headers", "edgeward+headers (request)"],
            "first",
        ),
        Scenario("6a. TLS, 1 KiB GET, keep-alive", Load("/1k", tls=True), ["edgeward", "nginx"], "nginx"),
        # wrk opens a new connection after each `Connection: close` answer: req/s are
        # handshakes/s. New clients make full handshakes (the session forgotten each time);
        # returning ones resume with the session ticket the server sent (wrk's own behaviour).
        Scenario(
            "6b. TLS full handshakes, 1 KiB GET, connection per request",
            Load("/1k", headers={"Connection": "close"}, tls=True, preload=no_resumption_library),
            ["edgeward", "nginx"],
            "nginx",
        ),
        Scenario(
            "6c. TLS resumed handshakes, 1 KiB GET, connection per request",
            Load("/1k", headers={"Connection": "close"}, tls=True),
            ["edgeward", "nginx"],
            "nginx",
        ),
    ]


def contenders(
    folder: Path, cache_dir: Path, ports: Ports, origin: int, workers: int, tls: tuple[Path, Path]
) -> dict[str, Contender]:
    """The proxies; `edgeward` and `nginx` also listen with TLS, on a port of their own."""
    made: dict[str, Contender] = {}
    for name, chain, isolation in [
        ("edgeward", [], "shared"),
        ("edgeward+headers", ["headers"], "shared"),
        ("edgeward+headers (request)", ["headers"], "request"),
        ("edgeward+3 filters", ["jwt", "geo", "headers"], "shared"),
    ]:
        port = ports.take()
        tls_port = ports.take() if name == "edgeward" else None
        file_name = re.sub(r"[^a-z0-9]+", "-", name).strip("-")
        path = folder / f"{file_name}.yaml"
        tls_listener = (tls_port, *tls) if tls_port else None
        path.write_text(edgeward_config(folder, file_name, port, origin, workers, chain, isolation, tls_listener))
        made[name] = Contender(name, "edgeward", [str(EDGEWARD), "run", "--config", str(path)], port, port, tls_port)
    port, h2_port, tls_port = ports.take(), ports.take(), ports.take()
    path = folder / "nginx.conf"
    path.write_text(nginx_proxy_config(folder, cache_dir, port, h2_port, tls_port, tls, origin, workers))
    made["nginx"] = Contender(
        "nginx", "nginx", ["nginx", "-c", str(path), "-e", str(folder / "nginx-error.log")], port, h2_port, tls_port
    )
    return made


# ---------------------------------------------------------------------------------------------
# Idle memory: per connection, and of the demo


def open_with_one_request(port: int, context: ssl.SSLContext | None) -> socket.socket:
    """A keep-alive connection (with its TLS handshake when `context`) that has been answered
    one GET /1k, read to its end."""
    connection = socket.create_connection(("127.0.0.1", port), timeout=10)
    if context:
        connection = context.wrap_socket(connection, server_hostname="localhost")
    connection.sendall(b"GET /1k HTTP/1.1\r\nHost: localhost\r\n\r\n")
    answer = b""
    while b"\r\n\r\n" not in answer:
        answer += connection.recv(65536) or b"<closed>"
        if answer.endswith(b"<closed>"):
            raise RuntimeError(f"connection closed before an answer: {answer!r}")
    head, body = answer.split(b"\r\n\r\n", 1)
    length = re.search(rb"(?im)^content-length:\s*(\d+)", head)
    if not head.startswith(b"HTTP/1.1 200") or not length:
        raise RuntimeError(f"unexpected answer: {head!r}")
    while len(body) < int(length.group(1)):
        body += connection.recv(65536)
    return connection


@dataclass
class IdleMemory:
    contender: str
    tls: bool
    connections: int
    before_kib: int
    after_kib: int

    @property
    def per_connection_kib(self) -> float:
        return (self.after_kib - self.before_kib) / self.connections


def idle_memory(contender: Contender, cores: Cores, folder: Path, tls: bool, count: int) -> IdleMemory:
    """What `count` idle keep-alive connections hold in a fresh process: its RSS (nginx: master
    and worker) before and after they were opened, each with its handshake and one 1 KiB GET,
    then left idle for two seconds. The process is restarted first, so that memory freed by
    earlier load is not reused for these connections (which would hide their cost)."""
    contender.stop()
    contender.start(cores, folder, {})
    port = contender.tls_port if tls else contender.port
    context = unverified_tls() if tls else None
    held: list[socket.socket] = []
    try:
        # One connection first, closed, for what only the first one allocates.
        open_with_one_request(port, context).close()
        time.sleep(1)
        before = status_kib(contender.pids, "VmRSS")
        for _ in range(count):
            held.append(open_with_one_request(port, context))
        time.sleep(2)
        after = status_kib(contender.pids, "VmRSS")
    finally:
        for connection in held:
            connection.close()
    return IdleMemory(contender.name, tls, count, before, after)


def demo_idle_rss(folder: Path, ports: Ports, cores: Cores, tls: tuple[Path, Path]) -> tuple[float, float]:
    """RSS of `config/edgeward.yaml` (moved to free ports, serving this run's certificate)
    right after start and after 2000 requests over its routes followed by two idle seconds, in
    MiB."""
    port, tls_port, admin = ports.take(), ports.take(), ports.take()
    text = DEMO_CONFIG.read_text()
    for old, new in [
        ("127.0.0.1:8080", f"127.0.0.1:{port}"),
        ("127.0.0.1:8443", f"127.0.0.1:{tls_port}"),
        ("127.0.0.1:9901", f"127.0.0.1:{admin}"),
        ("certs/localhost.pem", str(tls[0])),
        ("certs/localhost.key", str(tls[1])),
        ("../filters/", f"{ROOT}/filters/"),
        ("geo/demo.mmdb", str(GEO_DATABASE)),
    ]:
        if old not in text:
            raise SystemExit(f"config/edgeward.yaml no longer contains `{old}`: update bench/run.py")
        text = text.replace(old, new)
    path = folder / "demo.yaml"
    path.write_text(text)
    demo = Contender("demo", "edgeward", [str(EDGEWARD), "run", "--config", str(path)], port)
    try:
        demo.start(cores, folder, {})
        time.sleep(1)
        started = status_kib(demo.pids, "VmRSS") / 1024
        headers = {"Authorization": f"Bearer {DEMO_TOKEN}"}
        for i in range(500):
            for route in ["/hello", "/api/orders", f"/static/{i % 50}.js", "/"]:
                request = urllib.request.Request(f"http://127.0.0.1:{port}{route}", headers=headers)
                with urllib.request.urlopen(request, timeout=5) as response:
                    response.read()
        time.sleep(2)
        return started, status_kib(demo.pids, "VmRSS") / 1024
    finally:
        demo.stop()


# ---------------------------------------------------------------------------------------------
# The run


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=float(os.environ.get("BENCH_SECONDS", 10)), help="length of each measured run")
    parser.add_argument("--warmup", type=float, default=2, help="unmeasured load before each run")
    parser.add_argument("--rounds", type=int, default=int(os.environ.get("BENCH_ROUNDS", 3)), help="alternating runs per contender")
    parser.add_argument("--only", default=os.environ.get("BENCH_ONLY", ""),
                        help="run only the scenarios whose title contains this, or one of several texts separated by `|` "
                        "(`1. proxy|TLS`: scenario 1 and the TLS scenarios)")
    parser.add_argument("--idle-connections", type=int, default=IDLE_CONNECTIONS, help="idle connections opened to measure their memory")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()

    for tool in ["nginx", "wrk", "h2load", "openssl", "cc"]:
        if not shutil.which(tool):
            raise SystemExit(f"`{tool}` is missing: `make bench` installs it (apt-get install nginx wrk nghttp2-client openssl build-essential)")
    for needed in [EDGEWARD, FILTERS / "add_headers.wasm", GEO_DATABASE]:
        if not needed.exists():
            raise SystemExit(f"{needed} is missing: run `make bench` (it builds edgeward and the filters)")

    cores = Cores.split()
    workers = len(cores.proxy)
    folder = ROOT / "target" / "bench" / time.strftime("%Y%m%d-%H%M%S")
    folder.mkdir(parents=True)
    ports = Ports(21000)
    # The idle-memory measurement holds a thousand connections open in this process.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 4 * args.idle_connections + 1024)), hard))
    tls = certificate(folder)
    post_script = folder / "post-10k.lua"
    post_script.write_text('wrk.method = "POST"\nwrk.body = string.rep("x", 10240)\n'
                           'wrk.headers["Content-Type"] = "application/octet-stream"\n')
    origin_bodies(folder)
    origin_port = ports.take()
    (folder / "origin.conf").write_text(nginx_origin_config(folder, origin_port))
    print(f"# edgeward vs nginx, {time.strftime('%Y-%m-%d')}", flush=True)
    print(f"machine: {machine()}; proxies on cores {cores.proxy} with {workers} worker(s) each, "
          f"load generator and origin on cores {cores.load}; {CONNECTIONS} connections; "
          f"{args.rounds} rounds of {args.seconds:g} s (after {args.warmup:g} s warm-up), medians; "
          f"TLS 1.3 with an ECDSA P-256 certificate")
    print(f"configurations and logs: {folder}\n", flush=True)

    origin = subprocess.Popen(
        cores.pin(cores.load) + ["nginx", "-c", str(folder / "origin.conf"), "-e", str(folder / "origin-error.log")],
        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True,
    )
    # nginx caches in files: in memory (tmpfs) where the machine has one, as edgeward does.
    nginx_cache = Path(tempfile.mkdtemp(prefix="edgeward-bench-nginx-cache-", dir="/dev/shm" if Path("/dev/shm").is_dir() else folder))
    all_contenders = contenders(folder, nginx_cache, ports, origin_port, workers, tls)
    results: dict[str, dict[str, list[Run]]] = {}
    peak: dict[str, float] = {}
    wanted = [part for part in args.only.split("|") if part]
    selected = [s for s in scenarios(post_script, no_resumption(folder)) if not wanted or any(part in s.title for part in wanted)]
    per_connection: list[IdleMemory] = []
    try:
        wait_until_serving(f"http://127.0.0.1:{origin_port}/1k", origin, {}, "the origin")
        for scenario in selected:
            print(f"{scenario.title} ...", file=sys.stderr, flush=True)
            results[scenario.title] = run_scenario(scenario, all_contenders, cores, folder, args, peak)
            empty_access_logs(folder)
        if any(scenario.load.tls for scenario in selected):
            print(f"idle memory, {args.idle_connections} connections ...", file=sys.stderr, flush=True)
            for name in ["edgeward", "nginx"]:
                for over_tls in [True, False]:
                    measured = idle_memory(all_contenders[name], cores, folder, over_tls, args.idle_connections)
                    per_connection.append(measured)
                    print(f"  {name}{' (TLS)' if over_tls else ''}: {measured.per_connection_kib:.1f} KiB per connection", file=sys.stderr, flush=True)
        idle = demo_idle_rss(folder, ports, cores, tls) if not args.only else None
    finally:
        for contender in all_contenders.values():
            contender.stop()
        os.killpg(origin.pid, signal.SIGTERM)
        origin.wait()
        shutil.rmtree(nginx_cache, ignore_errors=True)
        for log in folder.glob("*access.log"):
            log.unlink(missing_ok=True)

    print(table(results, peak))
    if per_connection:
        print(idle_table(per_connection))
    print(targets(results, idle))
    if args.json:
        args.json.write_text(json.dumps({s: {c: [run.__dict__ for run in runs] for c, runs in r.items()} for s, r in results.items()}, indent=1))


def empty_access_logs(folder: Path) -> None:
    """The access logs are written only because writing them is per-request work both proxies
    do; kept, they would fill gigabytes per run. Truncated in place: both proxies append."""
    for log in folder.glob("*access.log"):
        os.truncate(log, 0)


def run_scenario(scenario: Scenario, all_contenders: dict[str, Contender], cores: Cores, folder: Path, args, peak: dict[str, float]) -> dict[str, list[Run]]:
    taking_part = [all_contenders[name] for name in scenario.contenders]
    runs: dict[str, list[Run]] = {c.name: [] for c in taking_part}
    for contender in taking_part:
        if contender.process is None:
            contender.start(cores, folder, scenario.load.headers)
    for round_number in range(args.rounds):
        # Alternate who goes first, so that neither side always runs on a warmer machine.
        order = taking_part[round_number % len(taking_part):] + taking_part[: round_number % len(taking_part)]
        for contender in order:
            drive(contender, scenario.load, args.warmup, cores, folder)
            run = drive(contender, scenario.load, args.seconds, cores, folder)
            runs[contender.name].append(run)
            print(f"  {contender.name}: {run.rps:,.0f} req/s, p99 {run.p99_ms:.2f} ms", file=sys.stderr, flush=True)
    for contender in taking_part:
        peak[contender.name] = max(peak.get(contender.name, 0), contender.peak_rss_mib())
    return runs


def table(results: dict[str, dict[str, list[Run]]], peak: dict[str, float]) -> str:
    lines = [
        "| Scenario | Proxy | req/s | p50 ms | p99 ms | CPU s / 10k req | peak RSS MiB | req/s ratio | p99 ratio |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for title, runs in results.items():
        names = list(runs)
        reference = "nginx" if "nginx" in runs else names[0]
        for name in names:
            mine = runs[name]
            if name == reference:
                ratio, p99_ratio = "", ""
            else:
                # Ratios per round (the two ran back to back), then their median.
                ratio = f"{median([a.rps / b.rps for a, b in zip(mine, runs[reference])]):.2f}"
                p99_ratio = f"{median([a.p99_ms / b.p99_ms for a, b in zip(mine, runs[reference])]):.2f}"
            lines.append(
                f"| {title} | {name} | {median([r.rps for r in mine]):,.0f} | {median([r.p50_ms for r in mine]):.2f} "
                f"| {median([r.p99_ms for r in mine]):.2f} | {median([r.cpu_per_10k for r in mine]):.2f} "
                f"| {peak.get(name, float('nan')):.0f} | {ratio} | {p99_ratio} |"
            )
    return "\n".join(lines) + "\n\nRatios are edgeward / nginx, or against the scenario's first row when nginx is not in it.\n"


def idle_table(measured: list[IdleMemory]) -> str:
    lines = [
        "| Idle keep-alive connections | Proxy | connections | RSS before MiB | RSS after MiB | KiB per connection |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for m in measured:
        lines.append(
            f"| {'TLS 1.3' if m.tls else 'cleartext'} | {m.contender} | {m.connections:,} | {m.before_kib / 1024:.1f} "
            f"| {m.after_kib / 1024:.1f} | {m.per_connection_kib:.1f} |"
        )
    return "\n".join(lines) + "\n\nEach opened with its handshake and one 1 KiB GET, then idle for 2 s, on a fresh process.\n"


def targets(results: dict[str, dict[str, list[Run]]], idle: tuple[float, float] | None) -> str:
    checks: list[tuple[str, str, bool]] = []

    def paired(title: str, a: str, b: str, metric) -> float | None:
        runs = results.get(title)
        if not runs or a not in runs or b not in runs:
            return None
        return median([metric(x) / metric(y) for x, y in zip(runs[a], runs[b])])

    for title in ["1. proxy, 1 KiB GET", "1b. proxy, 1 KiB GET, h2c", "2. proxy, 10 KiB POST", "3a. cache hit, 1 KiB", "3b. cache hit, 100 KiB"]:
        rps = paired(title, "edgeward", "nginx", lambda r: r.rps)
        p99 = paired(title, "edgeward", "nginx", lambda r: r.p99_ms)
        if rps is not None:
            checks.append((f"{title}: req/s ≥ nginx, p99 ≤ nginx", f"req/s ×{rps:.2f}, p99 ×{p99:.2f}", rps >= 1 and p99 <= 1))
    handshakes = paired("6b. TLS full handshakes, 1 KiB GET, connection per request", "edgeward", "nginx", lambda r: r.rps)
    if handshakes is not None:
        checks.append(("TLS handshakes/s (full, new clients) ≥ nginx", f"×{handshakes:.2f}", handshakes >= 1))
    tls = paired("6a. TLS, 1 KiB GET, keep-alive", "edgeward", "nginx", lambda r: r.rps)
    cleartext = paired("1. proxy, 1 KiB GET", "edgeward", "nginx", lambda r: r.rps)
    if tls is not None and cleartext is not None:
        checks.append(("TLS keep-alive req/s: the same ratio to nginx as cleartext (or better)",
                       f"×{tls:.2f} over TLS, ×{cleartext:.2f} in cleartext", tls >= cleartext))
    filters = paired("4. filters, 1 KiB GET", "edgeward+3 filters", "edgeward", lambda r: r.rps)
    if filters is not None:
        checks.append(("three chained filters cost ≤ 15% of the no-filter throughput", f"cost {1 - filters:.0%}", 1 - filters <= 0.15))
    isolation = paired("5. isolation, header filter", "edgeward+headers (request)", "edgeward+headers", lambda r: r.cpu_per_10k)
    if isolation is not None:
        checks.append(("`isolation: request` ≤ 25% more CPU per request than `shared`", f"+{isolation - 1:.0%}", isolation - 1 <= 0.25))
    if idle is not None:
        checks.append(("idle RSS of the demo configuration ≤ 64 MiB", f"{idle[1]:.0f} MiB after 2000 requests ({idle[0]:.0f} MiB at start)", idle[1] <= 64))
    lines = ["| Target | Measured | Met |", "|---|---|---|"]
    lines += [f"| {what} | {measured} | {'yes' if met else '**no**'} |" for what, measured, met in checks]
    return "\n".join(lines)


def machine() -> str:
    model = "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    kernel = os.uname().release
    nginx = subprocess.run(["nginx", "-v"], capture_output=True, text=True).stderr.strip().replace("nginx version: ", "")
    return f"{os.cpu_count()} × {model}, Linux {kernel}, {nginx}, edgeward {git_commit()}"


def git_commit() -> str:
    result = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return result.stdout.strip() or "unknown"


if __name__ == "__main__":
    main()
