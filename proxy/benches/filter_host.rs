//! Costs of the proxy-wasm host, measured in-process with a small header filter
//! (`tests/filters/header_rewriter`: sets one request and one response header):
//!
//! 1. `isolation: request`: a fresh instance created (pooling allocator, copy-on-write memory,
//!    the SDK's start-up, `on_vm_start`, `on_configure`) and its first callback
//!    (`on_http_request_headers`) run, as a request sees it.
//! 2. `isolation: request`: the whole lifecycle of one request's instance (the above, plus
//!    `on_http_response_headers`, `on_log`, `on_done`, `on_delete` and dropping the instance on
//!    the reaper thread), as CPU time of the whole process per request.
//! 3. `isolation: shared`: what one filter adds to a request (request and response headers,
//!    `on_log`/`on_done`/`on_delete`), wall time.
//!
//! Run with `cargo bench --bench filter_host` (or `make bench`). Prints medians and p99s.

// A benchmark fails loudly: panicking with the reason is the point.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::time::{Duration, Instant};

use edgeward::config::{self, ResponsePhase};
use edgeward::wasm::{FilterHost, StreamInfo, Verdict};
use pingora::http::{RequestHeader, ResponseHeader};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const WARMUP: usize = 2_000;
const ITERATIONS: usize = 20_000;

fn filter_host(isolation: &str) -> (FilterHost, config::Route) {
    let yaml = format!(
        r#"
listeners: [{{address: "127.0.0.1:1"}}]
workers: 1
wasm: {{module_cache: off}}
upstreams: {{u: {{builtin: echo}}}}
filters:
  headers:
    module: {module}
    isolation: {isolation}
    config: {{name: bench, request: {{set: {{x-edge: "1"}}}}, response: {{set: {{x-served-by: edgeward}}}}}}
routes: [{{upstream: u, filters: [headers]}}]
"#,
        module = edgeward_testkit::filters::HEADER_REWRITER
    );
    let config = config::from_str(&yaml, Path::new("bench.yaml")).unwrap_or_else(|e| panic!("{e}"));
    let host = FilterHost::load(&config).unwrap_or_else(|e| panic!("{e}"));
    let route = config.routes.into_iter().next().expect("one route");
    (host, route)
}

fn request() -> RequestHeader {
    let mut req = RequestHeader::build("GET", b"/bench?x=1", None).expect("request head");
    for (name, value) in [
        ("host", "bench.example"),
        ("user-agent", "bench"),
        ("accept", "*/*"),
    ] {
        req.insert_header(name, value).expect("header");
    }
    req
}

fn response() -> ResponseHeader {
    let mut resp = ResponseHeader::build(200, None).expect("response head");
    resp.insert_header("content-type", "text/plain")
        .expect("header");
    resp
}

/// Process CPU time (all threads, including the reaper) from /proc/self/stat.
fn process_cpu() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("/proc/self/stat");
    // Fields after the command name (which may contain spaces) start at ") ".
    let fields: Vec<&str> = stat
        .rsplit_once(") ")
        .expect("stat format")
        .1
        .split(' ')
        .collect();
    let ticks: u64 =
        fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime");
    // USER_HZ is 100 on Linux.
    Duration::from_millis(ticks * 10)
}

fn report(name: &str, mut samples: Vec<Duration>) {
    samples.sort();
    let at = |q: f64| samples[((samples.len() as f64 - 1.0) * q) as usize];
    println!(
        "{name:<62} median {:>8.2} µs   p99 {:>8.2} µs",
        at(0.5).as_secs_f64() * 1e6,
        at(0.99).as_secs_f64() * 1e6
    );
}

fn main() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let (host, route) = filter_host("request");
        let mut first_callback = Vec::with_capacity(ITERATIONS);
        for i in 0..WARMUP + ITERATIONS {
            let mut req = request();
            let started = Instant::now();
            let mut chain = host
                .chain(&route, StreamInfo::default, started)
                .expect("chain");
            let verdict = chain.on_request_headers(&mut req, true).await;
            let elapsed = started.elapsed();
            assert!(matches!(verdict, Verdict::Continue), "{verdict:?}");
            chain.finish(&mut req, None);
            if i >= WARMUP {
                first_callback.push(elapsed);
            }
        }
        report(
            "request isolation: new instance + first callback (wall)",
            first_callback,
        );

        let cpu_before = process_cpu();
        let wall = Instant::now();
        for _ in 0..ITERATIONS {
            let mut req = request();
            let mut resp = response();
            let mut chain = host
                .chain(&route, StreamInfo::default, Instant::now())
                .expect("chain");
            chain.on_request_headers(&mut req, true).await;
            chain
                .on_response_headers(ResponsePhase::AfterCache, &mut req, &mut resp, true)
                .await;
            chain.finish(&mut req, Some(resp.clone()));
        }
        // Let the reaper finish dropping the instances it was given.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let cpu = process_cpu() - cpu_before;
        println!(
            "{:<62} mean   {:>8.2} µs   (wall {:.2} µs/request)",
            "request isolation: whole instance lifecycle (CPU, all threads)",
            cpu.as_secs_f64() * 1e6 / ITERATIONS as f64,
            (wall.elapsed().as_secs_f64() - 0.2) * 1e6 / ITERATIONS as f64
        );

        let (host, route) = filter_host("shared");
        let mut added = Vec::with_capacity(ITERATIONS);
        for i in 0..WARMUP + ITERATIONS {
            let mut req = request();
            let mut resp = response();
            let started = Instant::now();
            let mut chain = host
                .chain(&route, StreamInfo::default, started)
                .expect("chain");
            chain.on_request_headers(&mut req, true).await;
            chain
                .on_response_headers(ResponsePhase::AfterCache, &mut req, &mut resp, true)
                .await;
            chain.finish(&mut req, Some(resp.clone()));
            let elapsed = started.elapsed();
            assert_eq!(
                resp.headers.get("x-served-by").map(|v| v.as_bytes()),
                Some(&b"edgeward"[..])
            );
            if i >= WARMUP {
                added.push(elapsed);
            }
        }
        report(
            "shared isolation: one header filter, whole request (wall)",
            added,
        );
    });
}
