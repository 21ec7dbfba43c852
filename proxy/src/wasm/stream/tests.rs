//! The filter chain's state machine, driven without a proxy: real filter modules loaded by the
//! real host (`FilterHost::load` from a YAML configuration), and pingora heads built here.
//!
//! Most filters are WebAssembly text written for their scenario ([`Guest`]): a common prelude
//! (allocator, ABI marker, small helpers over the hostcalls) and the code of the callbacks the
//! scenario needs. What a filter did is read back through the host: the heads and bodies the
//! phase drivers hand on, the verdicts, the host's call counts (`edgeward_filter_calls_total`)
//! and the metrics the guests keep with `proxy_define_metric`. Filter names are unique across
//! these tests, since the metrics are process-wide.
//!
//! The harness ([`Guest`], [`Setup`], [`walk`]) needs nothing of the proxy: it is what a
//! filter toolkit's `edgeward filter test` can grow from.

use std::future::Future;
use std::time::{Duration, Instant};

use bytes::Bytes;
use pingora::http::{RequestHeader, ResponseHeader};

use super::*;
use crate::config::{self, ResponsePhase, Route};
use crate::metrics::{self, CustomKind, CustomMetric};
use crate::wasm::FilterHost;

// ---------------------------------------------------------------------------------------------
// Filters in WebAssembly text
// ---------------------------------------------------------------------------------------------

/// Where the guest's string constants start; below it, the helpers' return slots (16: a
/// returned pointer, 20: its length, 24: a metric id).
const DATA_AT: usize = 1024;

/// What every test filter has: the imports, memory and a bump allocator, the root context
/// (which remembers the filter's name, `plugin_name`), helpers, and the final callbacks, which
/// count themselves (`on_log`, `on_done`, `on_delete`) and record `response.code` (`log_status`,
/// -1 without a response). Texts in single quotes become `(i32.const at) (i32.const len)`.
const PRELUDE: &str = r#"
  (import "env" "proxy_get_property" (func $proxy_get_property (param i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_get_header_map_value"
    (func $proxy_get_header_map_value (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_add_header_map_value"
    (func $proxy_add_header_map_value (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_get_buffer_bytes"
    (func $proxy_get_buffer_bytes (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_set_buffer_bytes"
    (func $proxy_set_buffer_bytes (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_send_local_response"
    (func $proxy_send_local_response (param i32 i32 i32 i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_set_effective_context" (func $proxy_set_effective_context (param i32) (result i32)))
  (import "env" "proxy_continue_stream" (func $proxy_continue_stream (param i32) (result i32)))
  (import "env" "proxy_define_metric" (func $proxy_define_metric (param i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_increment_metric" (func $proxy_increment_metric (param i32 i64) (result i32)))
  (import "env" "proxy_record_metric" (func $proxy_record_metric (param i32 i64) (result i32)))

  (memory (export "memory") 2)
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_memory_allocate") (param $size i32) (result i32)
    (local $at i32)
    (local.set $at (global.get $heap))
    (global.set $heap
      (i32.and (i32.add (i32.add (local.get $at) (local.get $size)) (i32.const 15)) (i32.const -16)))
    (if (i32.gt_u (global.get $heap) (i32.mul (memory.size) (i32.const 65536)))
      (then
        (if (i32.eq (i32.const -1)
              (memory.grow
                (i32.sub (i32.add (i32.shr_u (global.get $heap) (i32.const 16)) (i32.const 1))
                         (memory.size))))
          (then unreachable))))
    (local.get $at))

  (global $name_at (mut i32) (i32.const 0))
  (global $name_len (mut i32) (i32.const 0))
  ;; The context this filter paused last, for another request to resume.
  (global $paused (mut i32) (i32.const 0))

  (func $continue (result i32) (i32.const 0))
  (func $pause (result i32) (i32.const 1))
  ;; Every hostcall a helper makes must succeed: anything else traps, loudly.
  (func $check (param $status i32)
    (if (local.get $status) (then unreachable)))
  (func $name (result i32 i32) (global.get $name_at) (global.get $name_len))
  (func $has_request_header (param $key i32) (param $len i32) (result i32)
    (i32.eqz (call $proxy_get_header_map_value (i32.const 0) (local.get $key) (local.get $len)
                (i32.const 16) (i32.const 20))))
  (func $add_request_header (param $key i32) (param $key_len i32) (param $value i32) (param $value_len i32)
    (call $check (call $proxy_add_header_map_value (i32.const 0)
      (local.get $key) (local.get $key_len) (local.get $value) (local.get $value_len))))
  (func $add_response_header (param $key i32) (param $key_len i32) (param $value i32) (param $value_len i32)
    (call $check (call $proxy_add_header_map_value (i32.const 2)
      (local.get $key) (local.get $key_len) (local.get $value) (local.get $value_len))))
  (func $append_request_body (param $data i32) (param $len i32)
    (call $check (call $proxy_set_buffer_bytes (i32.const 0) (i32.const -1) (i32.const 0)
      (local.get $data) (local.get $len))))
  (func $append_response_body (param $data i32) (param $len i32)
    (call $check (call $proxy_set_buffer_bytes (i32.const 1) (i32.const -1) (i32.const 0)
      (local.get $data) (local.get $len))))
  ;; The length of what proxy_get_buffer_bytes returns for the whole body buffer.
  (func $buffer_length (param $buffer i32) (result i32)
    (call $check (call $proxy_get_buffer_bytes (local.get $buffer) (i32.const 0) (i32.const -1)
      (i32.const 16) (i32.const 20)))
    (i32.load (i32.const 20)))
  (func $count (param $metric i32) (param $len i32)
    (call $check (call $proxy_define_metric (i32.const 0) (local.get $metric) (local.get $len) (i32.const 24)))
    (call $check (call $proxy_increment_metric (i32.load (i32.const 24)) (i64.const 1))))
  (func $gauge (param $metric i32) (param $len i32) (param $value i32)
    (call $check (call $proxy_define_metric (i32.const 1) (local.get $metric) (local.get $len) (i32.const 24)))
    (call $check (call $proxy_record_metric (i32.load (i32.const 24)) (i64.extend_i32_s (local.get $value)))))
  ;; An integer property, or -1 when there is none.
  (func $int_property (param $path i32) (param $len i32) (result i32)
    (if (call $proxy_get_property (local.get $path) (local.get $len) (i32.const 16) (i32.const 20))
      (then (return (i32.const -1))))
    (i32.wrap_i64 (i64.load (i32.load (i32.const 16)))))
  ;; proxy_continue_stream for another (paused) context of this instance.
  (func $resume (param $context i32) (param $stream i32)
    (call $check (call $proxy_set_effective_context (local.get $context)))
    (call $check (call $proxy_continue_stream (local.get $stream))))
  (func $respond (param $status i32) (param $body i32) (param $len i32)
    (call $check (call $proxy_send_local_response (local.get $status) (i32.const 0) (i32.const 0)
      (local.get $body) (local.get $len) (i32.const 0) (i32.const 0) (i32.const -1))))
  ;; What a body callback saw: its size argument, the buffer's length, end_of_stream.
  (func $saw_request_body (param $size i32) (param $end i32)
    (call $gauge 'request_body_size' (local.get $size))
    (call $gauge 'request_body_buffer' (call $buffer_length (i32.const 0)))
    (call $gauge 'request_body_end' (local.get $end)))
  (func $saw_response_body (param $size i32) (param $end i32)
    (call $gauge 'response_body_size' (local.get $size))
    (call $gauge 'response_body_buffer' (call $buffer_length (i32.const 1)))
    (call $gauge 'response_body_end' (local.get $end)))

  (func (export "proxy_on_vm_start") (param $root i32) (param $size i32) (result i32) (i32.const 1))
  (func (export "proxy_on_configure") (param $root i32) (param $size i32) (result i32)
    (call $check (call $proxy_get_property 'plugin_name' (i32.const 16) (i32.const 20)))
    (global.set $name_at (i32.load (i32.const 16)))
    (global.set $name_len (i32.load (i32.const 20)))
    (i32.const 1))
  (func (export "proxy_on_context_create") (param $context i32) (param $parent i32)
    (if (local.get $parent) (then (call $count 'context_create'))))
  (func (export "proxy_on_log") (param $context i32)
    (call $count 'on_log')
    (call $gauge 'log_status' (call $int_property 'response\0code')))
  (func (export "proxy_on_done") (param $context i32) (result i32)
    (call $count 'on_done')
    (i32.const 1))
  (func (export "proxy_on_delete") (param $context i32)
    (call $count 'on_delete'))
"#;

/// A test filter: the prelude plus the code of its four HTTP callbacks, each of which must
/// leave its action on the stack (`(call $continue)`, `(call $pause)`). The code sees the
/// callback's parameters as `$context`, `$headers` or `$size`, and `$end_of_stream`.
#[derive(Clone)]
struct Guest {
    request_headers: String,
    request_body: String,
    response_headers: String,
    response_body: String,
}

impl Guest {
    /// Continues in every phase.
    fn new() -> Self {
        let go_on = "(call $continue)".to_string();
        Guest {
            request_headers: go_on.clone(),
            request_body: go_on.clone(),
            response_headers: go_on.clone(),
            response_body: go_on,
        }
    }

    /// Runs `code` as the callback of `phase`.
    fn on(mut self, phase: Phase, code: &str) -> Self {
        let slot = match phase {
            Phase::RequestHeaders => &mut self.request_headers,
            Phase::RequestBody => &mut self.request_body,
            Phase::ResponseHeaders => &mut self.response_headers,
            Phase::ResponseBody => &mut self.response_body,
            other => panic!("no code for {}", other.name()),
        };
        *slot = code.to_string();
        self
    }

    fn wasm(&self) -> Vec<u8> {
        let mut data = Vec::new();
        let prelude = lower(PRELUDE, &mut data);
        let callbacks = lower(
            &format!(
                r#"
  (func (export "proxy_on_request_headers")
    (param $context i32) (param $headers i32) (param $end_of_stream i32) (result i32)
    {}
  )
  (func (export "proxy_on_request_body")
    (param $context i32) (param $size i32) (param $end_of_stream i32) (result i32)
    {}
  )
  (func (export "proxy_on_response_headers")
    (param $context i32) (param $headers i32) (param $end_of_stream i32) (result i32)
    {}
  )
  (func (export "proxy_on_response_body")
    (param $context i32) (param $size i32) (param $end_of_stream i32) (result i32)
    {}
  )"#,
                self.request_headers, self.request_body, self.response_headers, self.response_body
            ),
            &mut data,
        );
        let heap = (DATA_AT + data.len() + 15) & !15;
        let bytes: String = data.iter().map(|b| format!("\\{b:02x}")).collect();
        let text = format!(
            "(module\n{prelude}\n{callbacks}\n  (global $heap (mut i32) (i32.const {heap}))\n  \
             (data (i32.const {DATA_AT}) \"{bytes}\"))\n"
        );
        wat::parse_str(&text).unwrap_or_else(|e| panic!("{e}\n{text}"))
    }
}

/// Replaces each `'text'` of `code` (outside `;;` comments) with `(i32.const at) (i32.const
/// len)`, the text placed in `data`, which starts at [`DATA_AT`]; `\0` is a NUL byte.
fn lower(code: &str, data: &mut Vec<u8>) -> String {
    let mut out = String::with_capacity(code.len());
    for line in code.lines() {
        let (code, comment) = line.split_at(line.find(";;").unwrap_or(line.len()));
        let mut parts = code.split('\'');
        out.push_str(parts.next().unwrap_or_default());
        while let Some(text) = parts.next() {
            let bytes = text.replace("\\0", "\0").into_bytes();
            out.push_str(&format!(
                "(i32.const {}) (i32.const {})",
                DATA_AT + data.len(),
                bytes.len()
            ));
            data.extend_from_slice(&bytes);
            out.push_str(
                parts
                    .next()
                    .unwrap_or_else(|| panic!("unclosed ' in {line}")),
            );
        }
        out.push_str(comment);
        out.push('\n');
    }
    out
}

/// Appends its name in every phase: to `x-order` in the request and the response head, and
/// after a space to every body chunk, which it lets through.
fn tagger() -> Guest {
    Guest::new()
        .on(
            Phase::RequestHeaders,
            "(call $add_request_header 'x-order' (call $name)) (call $continue)",
        )
        .on(
            Phase::RequestBody,
            "(call $append_request_body ' ') (call $append_request_body (call $name))
             (call $continue)",
        )
        .on(
            Phase::ResponseHeaders,
            "(call $add_response_header 'x-order' (call $name)) (call $continue)",
        )
        .on(
            Phase::ResponseBody,
            "(call $append_response_body ' ') (call $append_response_body (call $name))
             (call $continue)",
        )
}

/// Records what each body callback saw (see [`seen`]) and lets every chunk through.
fn observer() -> Guest {
    Guest::new()
        .on(
            Phase::RequestBody,
            "(call $saw_request_body (local.get $size) (local.get $end_of_stream)) (call $continue)",
        )
        .on(
            Phase::ResponseBody,
            "(call $saw_response_body (local.get $size) (local.get $end_of_stream)) (call $continue)",
        )
}

/// Records like [`observer`], and buffers both bodies until their end: Pause
/// (StopIterationAndBuffer) until `end_of_stream`, then Continue.
fn buffering() -> Guest {
    Guest::new()
        .on(
            Phase::RequestBody,
            "(call $saw_request_body (local.get $size) (local.get $end_of_stream))
             (if (result i32) (local.get $end_of_stream)
               (then (call $continue)) (else (call $pause)))",
        )
        .on(
            Phase::ResponseBody,
            "(call $saw_response_body (local.get $size) (local.get $end_of_stream))
             (if (result i32) (local.get $end_of_stream)
               (then (call $continue)) (else (call $pause)))",
        )
}

/// Pauses every request at its request headers (after adding `x-paused: <name>`), except:
/// a request carrying `x-resume-paused` resumes the request paused last
/// (`proxy_set_effective_context` + `proxy_continue_stream`) and continues itself; one
/// carrying `x-crash` traps.
fn pauser() -> Guest {
    Guest::new().on(
        Phase::RequestHeaders,
        "(if (call $has_request_header 'x-crash') (then unreachable))
         (if (call $has_request_header 'x-resume-paused')
           (then
             (call $resume (global.get $paused) (i32.const 0))
             (return (call $continue))))
         (call $add_request_header 'x-paused' (call $name))
         (global.set $paused (local.get $context))
         (call $pause)",
    )
}

/// Pauses every response at its headers (after adding `x-paused: <name>`); a request carrying
/// `x-resume-paused` resumes the response paused last, at its request headers.
fn response_pauser() -> Guest {
    Guest::new()
        .on(
            Phase::RequestHeaders,
            "(if (call $has_request_header 'x-resume-paused')
               (then (call $resume (global.get $paused) (i32.const 1))))
             (call $continue)",
        )
        .on(
            Phase::ResponseHeaders,
            "(call $add_response_header 'x-paused' (call $name))
             (global.set $paused (local.get $context))
             (call $pause)",
        )
}

/// Buffers the request body and pauses at its end too (recording what it saw, as
/// [`observer`]); a request carrying `x-resume-paused` resumes the request paused last.
fn body_pauser() -> Guest {
    Guest::new()
        .on(
            Phase::RequestHeaders,
            "(if (call $has_request_header 'x-resume-paused')
               (then (call $resume (global.get $paused) (i32.const 0))))
             (call $continue)",
        )
        .on(
            Phase::RequestBody,
            "(call $saw_request_body (local.get $size) (local.get $end_of_stream))
             (global.set $paused (local.get $context))
             (call $pause)",
        )
}

/// Traps (`unreachable`) in `phase`, continues in the others.
fn trapping_in(phase: Phase) -> Guest {
    Guest::new().on(phase, "unreachable")
}

/// Spins forever in `phase`, continues in the others.
fn spinning_in(phase: Phase) -> Guest {
    Guest::new().on(phase, "(loop $spin (br $spin)) (call $continue)")
}

// ---------------------------------------------------------------------------------------------
// A chain of filters on one route
// ---------------------------------------------------------------------------------------------

/// Builds the configuration of one route with a chain of filters, in chain order.
struct Setup {
    dir: tempfile::TempDir,
    /// `name: {module: ..., <settings>}` lines.
    filters: Vec<String>,
    names: Vec<String>,
    timeout: &'static str,
}

/// A filter's module: WebAssembly text of a scenario, or a built test filter (a path from
/// `edgeward_testkit::filters`).
enum Module {
    Text(Guest),
    Built(&'static str),
}

impl From<Guest> for Module {
    fn from(guest: Guest) -> Self {
        Module::Text(guest)
    }
}

impl From<&'static str> for Module {
    fn from(path: &'static str) -> Self {
        Module::Built(path)
    }
}

impl Setup {
    fn new() -> Self {
        Setup {
            dir: tempfile::tempdir().expect("a temporary directory"),
            filters: Vec::new(),
            names: Vec::new(),
            timeout: "30s",
        }
    }

    /// Appends filter `name` to the chain, with the default settings.
    fn filter(self, name: &str, module: impl Into<Module>) -> Self {
        self.filter_with(name, module, "")
    }

    /// Appends filter `name` to the chain; `settings` are more keys of its YAML mapping
    /// (`on_error: fail_open, limits: {cpu: 20ms}`).
    fn filter_with(mut self, name: &str, module: impl Into<Module>, settings: &str) -> Self {
        let path = match module.into() {
            Module::Built(path) => path.to_string(),
            Module::Text(guest) => {
                let path = self.dir.path().join(format!("{name}.wasm"));
                std::fs::write(&path, guest.wasm()).expect("the module written");
                path.display().to_string()
            }
        };
        let settings = match settings {
            "" => String::new(),
            more => format!(", {more}"),
        };
        self.filters
            .push(format!("  {name}: {{module: \"{path}\"{settings}}}"));
        self.names.push(name.to_string());
        self
    }

    /// The route's `timeout`: how long a filter may hold the request.
    fn timeout(mut self, timeout: &'static str) -> Self {
        self.timeout = timeout;
        self
    }

    fn load(self) -> Host {
        let yaml = format!(
            "listeners: [{{address: \"127.0.0.1:1\"}}]\n\
             workers: 1\n\
             wasm: {{module_cache: off, max_instances: 16}}\n\
             upstreams: {{origin: {{builtin: echo}}}}\n\
             filters:\n{}\n\
             routes: [{{upstream: origin, filters: [{}], timeout: {}}}]\n",
            self.filters.join("\n"),
            self.names.join(", "),
            self.timeout
        );
        let config = config::from_str(&yaml, &self.dir.path().join("edgeward.yaml"))
            .unwrap_or_else(|e| panic!("{e}\n{yaml}"));
        let host = FilterHost::load(&config).unwrap_or_else(|e| panic!("{e:?}"));
        let route = config.routes.into_iter().next().expect("one route");
        Host {
            host,
            route,
            _dir: self.dir,
        }
    }
}

/// The loaded filters and their route.
struct Host {
    host: FilterHost,
    route: Route,
    _dir: tempfile::TempDir,
}

impl Host {
    /// The chain of a new request, started now.
    fn chain(&self) -> FilterChain {
        self.host
            .chain(&self.route, StreamInfo::default, Instant::now())
            .expect("the route has filters")
    }
}

// ---------------------------------------------------------------------------------------------
// Requests, responses and what the filters did
// ---------------------------------------------------------------------------------------------

fn request_for(path: &str) -> RequestHeader {
    let mut req = RequestHeader::build("POST", path.as_bytes(), None).expect("a request head");
    req.insert_header("host", "chain.test").expect("host");
    req.insert_header("content-type", "text/plain")
        .expect("content-type");
    req
}

fn request() -> RequestHeader {
    request_for("/upload")
}

fn response() -> ResponseHeader {
    let mut resp = ResponseHeader::build(200, None).expect("a response head");
    resp.insert_header("content-type", "text/plain")
        .expect("content-type");
    resp
}

fn chunk(text: &'static str) -> Option<Bytes> {
    Some(Bytes::from_static(text.as_bytes()))
}

/// Every value of header `name`, in order.
fn values<'a>(headers: &'a http::HeaderMap, name: &str) -> Vec<&'a str> {
    headers
        .get_all(name)
        .iter()
        .map(|v| v.to_str().expect("a text value"))
        .collect()
}

#[track_caller]
fn assert_continues(verdict: Verdict) {
    assert!(matches!(verdict, Verdict::Continue), "{verdict:?}");
}

#[track_caller]
fn failure(verdict: Verdict) -> FilterFailure {
    match verdict {
        Verdict::Fail(failure) => failure,
        other => panic!("expected a failure, got {other:?}"),
    }
}

#[track_caller]
fn local_response(verdict: Verdict) -> LocalResponse {
    match verdict {
        Verdict::Respond(response) => response,
        other => panic!("expected a local response, got {other:?}"),
    }
}

/// How many times the host called `filter`'s callback of `phase` (its own count).
fn calls(filter: &str, phase: Phase) -> u64 {
    metrics::global()
        .filter_calls
        .with_label_values(&[filter, phase.name()])
        .get()
}

/// A counter `filter` keeps with `proxy_increment_metric` (0 before it first counts).
fn guest_count(filter: &str, metric: &str) -> u64 {
    let id = metrics::global()
        .define_custom(filter, CustomKind::Counter, metric)
        .expect("a counter");
    match metrics::global().custom(id) {
        Some(CustomMetric::Counter(counter)) => counter.get(),
        _ => panic!("{metric} is not a counter"),
    }
}

/// A gauge `filter` sets with `proxy_record_metric` (0 before it first sets it).
fn guest_gauge(filter: &str, metric: &str) -> i64 {
    let id = metrics::global()
        .define_custom(filter, CustomKind::Gauge, metric)
        .expect("a gauge");
    match metrics::global().custom(id) {
        Some(CustomMetric::Gauge(gauge)) => gauge.get(),
        _ => panic!("{metric} is not a gauge"),
    }
}

/// What an [`observer`] or [`buffering`] filter saw in its body callbacks so far.
#[derive(Debug, PartialEq, Eq)]
struct Seen {
    /// Callbacks the host made.
    calls: u64,
    /// The last callback's size argument, what `get_buffer_bytes` returned then, and its
    /// `end_of_stream`.
    size: i64,
    buffer: i64,
    end_of_stream: bool,
}

fn seen(filter: &str, phase: Phase) -> Seen {
    let prefix = match phase {
        Phase::RequestBody => "request_body",
        Phase::ResponseBody => "response_body",
        other => panic!("no body in {}", other.name()),
    };
    Seen {
        calls: calls(filter, phase),
        size: guest_gauge(filter, &format!("{prefix}_size")),
        buffer: guest_gauge(filter, &format!("{prefix}_buffer")),
        end_of_stream: guest_gauge(filter, &format!("{prefix}_end")) == 1,
    }
}

/// What a filter saw after `calls` callbacks, the last of `size` bytes (all of them in its
/// buffer) with `end_of_stream`.
fn saw(calls: u64, size: i64, end_of_stream: bool) -> Seen {
    Seen {
        calls,
        size,
        buffer: size,
        end_of_stream,
    }
}

/// The final callbacks `filter` got: `on_log`, `on_done`, `on_delete`.
fn final_calls(filter: &str) -> [u64; 3] {
    ["on_log", "on_done", "on_delete"].map(|callback| guest_count(filter, callback))
}

/// One request driven through a chain phase by phase, as the proxy does: request headers,
/// the request body `ping` (one chunk), the response headers, the response body `pong`; then
/// `finish`. The walk stops at the first verdict that is not Continue.
struct Walk {
    request: RequestHeader,
    response: ResponseHeader,
    /// The request body as it went upstream, the response body as the client got it.
    upstream_body: Vec<u8>,
    downstream_body: Vec<u8>,
    /// The phase that ended the walk, with its verdict.
    ended: Option<(Phase, Verdict)>,
}

async fn walk(chain: &mut FilterChain) -> Walk {
    fn stop(phase: Phase, verdict: Verdict) -> Option<(Phase, Verdict)> {
        (!matches!(verdict, Verdict::Continue)).then_some((phase, verdict))
    }
    let mut request = request();
    let mut response = response();
    let (mut upstream_body, mut downstream_body) = (Vec::new(), Vec::new());
    let ended = 'walk: {
        let verdict = chain.on_request_headers(&mut request, false).await;
        if let Some(end) = stop(Phase::RequestHeaders, verdict) {
            break 'walk Some(end);
        }
        let (data, verdict) = chain
            .on_request_body(&mut request, chunk("ping"), true)
            .await;
        upstream_body.extend_from_slice(&data);
        if let Some(end) = stop(Phase::RequestBody, verdict) {
            break 'walk Some(end);
        }
        let verdict = chain
            .on_response_headers(
                ResponsePhase::AfterCache,
                &mut request,
                &mut response,
                false,
            )
            .await;
        if let Some(end) = stop(Phase::ResponseHeaders, verdict) {
            break 'walk Some(end);
        }
        let (data, verdict) =
            chain.on_response_body(ResponsePhase::AfterCache, &mut request, chunk("pong"), true);
        downstream_body.extend_from_slice(&data);
        stop(Phase::ResponseBody, verdict)
    };
    let sent = chain.needs_sent_response().then(|| response.clone());
    chain.finish(&mut request, sent);
    Walk {
        request,
        response,
        upstream_body,
        downstream_body,
        ended,
    }
}

/// The phases in the order a request meets them.
const PHASES: [Phase; 4] = [
    Phase::RequestHeaders,
    Phase::RequestBody,
    Phase::ResponseHeaders,
    Phase::ResponseBody,
];

/// A short name for a phase, for filter names.
fn short(phase: Phase) -> &'static str {
    match phase {
        Phase::RequestHeaders => "rqh",
        Phase::RequestBody => "rqb",
        Phase::ResponseHeaders => "rsh",
        Phase::ResponseBody => "rsb",
        other => panic!("not a request phase: {}", other.name()),
    }
}

/// Whether `future` is still pending after `wait`.
async fn still_pending<F: Future + Unpin>(future: &mut F, wait: Duration) -> bool {
    tokio::time::timeout(wait, future).await.is_err()
}

// ---------------------------------------------------------------------------------------------
// Continue
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn request_phases_run_the_chain_in_order_and_response_phases_in_reverse() {
    let host = Setup::new()
        .filter("order-a", tagger())
        .filter("order-b", tagger())
        .load();
    let mut chain = host.chain();
    let mut req = request();

    assert_continues(chain.on_request_headers(&mut req, false).await);
    assert_eq!(values(&req.headers, "x-order"), ["order-a", "order-b"]);

    // Filters that do not pause pass every chunk on at once, end of stream or not.
    let (data, verdict) = chain.on_request_body(&mut req, chunk("pi"), false).await;
    assert_continues(verdict);
    assert_eq!(data, "pi order-a order-b");
    let (data, verdict) = chain.on_request_body(&mut req, chunk("ng"), true).await;
    assert_continues(verdict);
    assert_eq!(data, "ng order-a order-b");

    let mut resp = response();
    let verdict = chain
        .on_response_headers(ResponsePhase::AfterCache, &mut req, &mut resp, false)
        .await;
    assert_continues(verdict);
    assert_eq!(values(&resp.headers, "x-order"), ["order-b", "order-a"]);

    let (data, verdict) =
        chain.on_response_body(ResponsePhase::AfterCache, &mut req, chunk("po"), false);
    assert_continues(verdict);
    assert_eq!(data, "po order-b order-a");
    let (data, verdict) =
        chain.on_response_body(ResponsePhase::AfterCache, &mut req, chunk("ng"), true);
    assert_continues(verdict);
    assert_eq!(data, "ng order-b order-a");

    // The after-cache filters let the head go: the chain kept it for on_log.
    assert!(!chain.needs_sent_response());
    chain.finish(&mut req, None);
    for filter in ["order-a", "order-b"] {
        assert_eq!(calls(filter, Phase::RequestHeaders), 1, "{filter}");
        assert_eq!(calls(filter, Phase::RequestBody), 2, "{filter}");
        assert_eq!(calls(filter, Phase::ResponseHeaders), 1, "{filter}");
        assert_eq!(calls(filter, Phase::ResponseBody), 2, "{filter}");
        assert_eq!(final_calls(filter), [1, 1, 1], "{filter}");
        assert_eq!(guest_gauge(filter, "log_status"), 200, "{filter}");
    }
}

// ---------------------------------------------------------------------------------------------
// Pause and resume
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_request_paused_at_its_headers_waits_until_another_request_resumes_it() {
    let host = Setup::new()
        .filter("resume-pauser", pauser())
        .filter("resume-next", tagger())
        .load();
    let mut first = host.chain();
    let mut first_req = request();
    let mut paused = Box::pin(first.on_request_headers(&mut first_req, true));

    // The pauser ran and paused; the driver waits and the next filter has not run.
    assert!(still_pending(&mut paused, Duration::from_millis(100)).await);
    assert_eq!(calls("resume-pauser", Phase::RequestHeaders), 1);
    assert_eq!(calls("resume-next", Phase::RequestHeaders), 0);

    // A second request on the same shared instance resumes the first from its own callback,
    // and goes on itself.
    let mut second = host.chain();
    let mut second_req = request();
    second_req
        .insert_header("x-resume-paused", "1")
        .expect("header");
    assert_continues(second.on_request_headers(&mut second_req, true).await);
    assert_eq!(values(&second_req.headers, "x-order"), ["resume-next"]);
    assert_eq!(values(&second_req.headers, "x-paused"), Vec::<&str>::new());

    // The first request goes on from where it waited: the next filter runs now.
    assert_continues(paused.await);
    assert_eq!(values(&first_req.headers, "x-paused"), ["resume-pauser"]);
    assert_eq!(values(&first_req.headers, "x-order"), ["resume-next"]);
    assert_eq!(calls("resume-next", Phase::RequestHeaders), 2);

    second.finish(&mut second_req, None);
    first.finish(&mut first_req, None);
    assert_eq!(final_calls("resume-pauser"), [2, 2, 2]);
}

#[tokio::test]
async fn a_pause_never_resumed_ends_at_the_route_timeout_with_504() {
    let host = Setup::new()
        .filter("timeout-pauser", pauser())
        .filter("timeout-next", tagger())
        .timeout("150ms")
        .load();
    let started = Instant::now();
    let mut chain = host.chain();
    let mut req = request();

    let verdict = chain.on_request_headers(&mut req, true).await;

    let waited = started.elapsed();
    assert_eq!(
        failure(verdict),
        FilterFailure {
            filter: "timeout-pauser".into(),
            status: 504,
            code: "filter_timeout",
            message: "filter `timeout-pauser` paused the request and did not resume it within \
                      the route's timeout"
                .into(),
        }
    );
    assert!(waited >= Duration::from_millis(150), "{waited:?}");
    assert!(waited < Duration::from_secs(5), "{waited:?}");
    assert_eq!(calls("timeout-next", Phase::RequestHeaders), 0);
    // The filter that held the request still ends it.
    chain.finish(&mut req, None);
    assert_eq!(final_calls("timeout-pauser"), [1, 1, 1]);
    assert_eq!(final_calls("timeout-next"), [0, 0, 0]);
}

#[tokio::test]
async fn a_response_paused_at_its_headers_waits_until_it_is_resumed() {
    // Responses run the chain backwards: the pauser (last) first, then the tagger.
    let host = Setup::new()
        .filter("rpause-tagger", tagger())
        .filter("rpause-pauser", response_pauser())
        .load();
    let mut first = host.chain();
    let mut req = request();
    assert_continues(first.on_request_headers(&mut req, true).await);
    let mut resp = response();
    let mut paused =
        Box::pin(first.on_response_headers(ResponsePhase::AfterCache, &mut req, &mut resp, false));

    assert!(still_pending(&mut paused, Duration::from_millis(100)).await);
    assert_eq!(calls("rpause-pauser", Phase::ResponseHeaders), 1);
    assert_eq!(calls("rpause-tagger", Phase::ResponseHeaders), 0);

    let mut second = host.chain();
    let mut resumer = request();
    resumer
        .insert_header("x-resume-paused", "1")
        .expect("header");
    assert_continues(second.on_request_headers(&mut resumer, true).await);

    assert_continues(paused.await);
    assert_eq!(values(&resp.headers, "x-paused"), ["rpause-pauser"]);
    assert_eq!(values(&resp.headers, "x-order"), ["rpause-tagger"]);
    assert_eq!(calls("rpause-tagger", Phase::ResponseHeaders), 1);
    second.finish(&mut resumer, None);
    first.finish(&mut req, None);
}

#[tokio::test]
async fn a_trap_on_a_shared_instance_fails_the_request_paused_on_it() {
    let host = Setup::new().filter("poison-pauser", pauser()).load();
    let mut first = host.chain();
    let mut first_req = request();
    let mut paused = Box::pin(first.on_request_headers(&mut first_req, true));
    assert!(still_pending(&mut paused, Duration::from_millis(50)).await);

    let mut second = host.chain();
    let mut crashing = request();
    crashing.insert_header("x-crash", "1").expect("header");
    let crash = failure(second.on_request_headers(&mut crashing, true).await);

    let expected = FilterFailure {
        filter: "poison-pauser".into(),
        status: 500,
        code: "trap",
        message: "filter `poison-pauser` crashed in on_http_request_headers".into(),
    };
    assert_eq!(crash, expected);
    // The request waiting on the instance gets the same policy at once, not at its timeout.
    let waited = tokio::time::timeout(Duration::from_secs(5), paused)
        .await
        .expect("the paused request ends with the instance");
    assert_eq!(failure(waited), expected);
}

#[tokio::test]
async fn one_crash_of_a_shared_instance_counts_once_however_many_requests_wait_on_it() {
    // docs/filters.md: every request in flight on a failed shared instance gets the policy;
    // the crash is one event, and the first 5 crashes in a row restart the filter at once.
    let host = Setup::new().filter("crash-once", pauser()).load();
    let mut chains: Vec<FilterChain> = (0..5).map(|_| host.chain()).collect();
    let mut requests: Vec<RequestHeader> = (0..5).map(|_| request()).collect();
    let mut paused: Vec<_> = chains
        .iter_mut()
        .zip(&mut requests)
        .map(|(chain, req)| Box::pin(chain.on_request_headers(req, true)))
        .collect();
    for waiting in &mut paused {
        assert!(still_pending(waiting, Duration::from_millis(20)).await);
    }

    let mut crashing_chain = host.chain();
    let mut crashing = request();
    crashing.insert_header("x-crash", "1").expect("header");
    assert_eq!(
        failure(crashing_chain.on_request_headers(&mut crashing, true).await).code,
        "trap"
    );
    for waiting in paused {
        assert_eq!(failure(waiting.await).code, "trap");
    }

    let traps = metrics::global()
        .filter_traps
        .with_label_values(&["crash-once"])
        .get();
    let backing_off = host.host.unavailable();
    // The next request gets a fresh instance at once, which pauses it as usual.
    let mut next_chain = host.chain();
    let mut next = request();
    let mut served = Box::pin(next_chain.on_request_headers(&mut next, true));
    let next_waits = still_pending(&mut served, Duration::from_millis(50)).await;
    assert_eq!(
        (traps, backing_off, next_waits),
        (1, Vec::<String>::new(), true),
        "(crashes counted, filters backing off, next request served)"
    );
}

// ---------------------------------------------------------------------------------------------
// Body buffering
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_filter_buffering_the_request_body_sees_it_grow_and_lets_it_go_whole_at_the_end() {
    let host = Setup::new()
        .filter("rqbuf-first", observer())
        .filter("rqbuf-buffer", buffering())
        .filter("rqbuf-last", observer())
        .load();
    let mut chain = host.chain();
    let mut req = request();
    assert_continues(chain.on_request_headers(&mut req, false).await);

    let (data, verdict) = chain.on_request_body(&mut req, chunk("hello"), false).await;
    assert_continues(verdict);
    assert_eq!(data, "");
    assert_eq!(seen("rqbuf-first", Phase::RequestBody), saw(1, 5, false));
    assert_eq!(seen("rqbuf-buffer", Phase::RequestBody), saw(1, 5, false));
    assert_eq!(seen("rqbuf-last", Phase::RequestBody), saw(0, 0, false));
    assert_eq!(chain.entries[1].request_body.len(), 5);

    let (data, verdict) = chain.on_request_body(&mut req, chunk(" big"), false).await;
    assert_continues(verdict);
    assert_eq!(data, "");
    assert_eq!(seen("rqbuf-first", Phase::RequestBody), saw(2, 4, false));
    assert_eq!(seen("rqbuf-buffer", Phase::RequestBody), saw(2, 9, false));
    assert_eq!(seen("rqbuf-last", Phase::RequestBody), saw(0, 0, false));
    assert_eq!(chain.entries[1].request_body.len(), 9);

    // The end of the body comes as an empty last call, as Pingora sends it.
    let (data, verdict) = chain.on_request_body(&mut req, None, true).await;
    assert_continues(verdict);
    assert_eq!(data, "hello big");
    assert_eq!(seen("rqbuf-first", Phase::RequestBody), saw(3, 0, true));
    assert_eq!(seen("rqbuf-buffer", Phase::RequestBody), saw(3, 9, true));
    assert_eq!(seen("rqbuf-last", Phase::RequestBody), saw(1, 9, true));
    assert_eq!(chain.entries[1].request_body.len(), 0);
    chain.finish(&mut req, None);
}

#[tokio::test]
async fn a_filter_buffering_the_response_body_sees_it_grow_and_lets_it_go_whole_at_the_end() {
    // Responses run the chain backwards: `rsbuf-first` sees the body first.
    let host = Setup::new()
        .filter("rsbuf-last", observer())
        .filter("rsbuf-buffer", buffering())
        .filter("rsbuf-first", observer())
        .load();
    let mut chain = host.chain();
    let mut req = request();
    let mut resp = response();
    assert_continues(chain.on_request_headers(&mut req, true).await);
    let verdict = chain
        .on_response_headers(ResponsePhase::AfterCache, &mut req, &mut resp, false)
        .await;
    assert_continues(verdict);

    let (data, verdict) =
        chain.on_response_body(ResponsePhase::AfterCache, &mut req, chunk("hello"), false);
    assert_continues(verdict);
    assert_eq!(data, "");
    assert_eq!(seen("rsbuf-first", Phase::ResponseBody), saw(1, 5, false));
    assert_eq!(seen("rsbuf-buffer", Phase::ResponseBody), saw(1, 5, false));
    assert_eq!(seen("rsbuf-last", Phase::ResponseBody), saw(0, 0, false));
    assert_eq!(chain.entries[1].response_body.len(), 5);

    let (data, verdict) =
        chain.on_response_body(ResponsePhase::AfterCache, &mut req, chunk(" big"), false);
    assert_continues(verdict);
    assert_eq!(data, "");
    assert_eq!(seen("rsbuf-first", Phase::ResponseBody), saw(2, 4, false));
    assert_eq!(seen("rsbuf-buffer", Phase::ResponseBody), saw(2, 9, false));
    assert_eq!(chain.entries[1].response_body.len(), 9);

    let (data, verdict) =
        chain.on_response_body(ResponsePhase::AfterCache, &mut req, chunk("!"), true);
    assert_continues(verdict);
    assert_eq!(data, "hello big!");
    assert_eq!(seen("rsbuf-first", Phase::ResponseBody), saw(3, 1, true));
    assert_eq!(seen("rsbuf-buffer", Phase::ResponseBody), saw(3, 10, true));
    assert_eq!(seen("rsbuf-last", Phase::ResponseBody), saw(1, 10, true));
    assert_eq!(chain.entries[1].response_body.len(), 0);
    chain.finish(&mut req, None);
}

#[tokio::test]
async fn a_request_body_paused_at_its_end_waits_until_it_is_resumed() {
    let host = Setup::new()
        .filter("eos-pauser", body_pauser())
        .filter("eos-next", observer())
        .load();
    let mut first = host.chain();
    let mut req = request();
    assert_continues(first.on_request_headers(&mut req, false).await);
    let (data, verdict) = first.on_request_body(&mut req, chunk("hel"), false).await;
    assert_continues(verdict);
    assert_eq!(data, "");

    // At the end of the body a pause cannot buffer more: the driver waits for a resumption.
    let mut paused = Box::pin(first.on_request_body(&mut req, chunk("lo"), true));
    assert!(still_pending(&mut paused, Duration::from_millis(100)).await);
    assert_eq!(seen("eos-pauser", Phase::RequestBody), saw(2, 5, true));
    assert_eq!(seen("eos-next", Phase::RequestBody), saw(0, 0, false));

    let mut second = host.chain();
    let mut resumer = request();
    resumer
        .insert_header("x-resume-paused", "1")
        .expect("header");
    assert_continues(second.on_request_headers(&mut resumer, true).await);

    let (data, verdict) = paused.await;
    assert_continues(verdict);
    assert_eq!(data, "hello");
    assert_eq!(seen("eos-next", Phase::RequestBody), saw(1, 5, true));
    second.finish(&mut resumer, None);
    first.finish(&mut req, None);
}

#[tokio::test]
async fn buffering_more_request_body_than_the_filter_may_hold_fails_with_413() {
    let host = Setup::new()
        .filter_with("limit-buffer", buffering(), "limits: {body: 8B}")
        .load();
    let mut chain = host.chain();
    let mut req = request();
    assert_continues(chain.on_request_headers(&mut req, false).await);
    let (data, verdict) = chain.on_request_body(&mut req, chunk("hello"), false).await;
    assert_continues(verdict);
    assert_eq!(data, "");

    let (data, verdict) = chain.on_request_body(&mut req, chunk(" big"), false).await;

    assert_eq!(data, "");
    assert_eq!(
        failure(verdict),
        FilterFailure {
            filter: "limit-buffer".into(),
            status: 413,
            code: "body_too_large",
            message: "the request body is larger than filter `limit-buffer` may buffer (8 bytes)"
                .into(),
        }
    );
    // The filter never saw the chunk that broke the limit.
    assert_eq!(seen("limit-buffer", Phase::RequestBody), saw(1, 5, false));
    chain.finish(&mut req, None);
}

/// A chunk one byte over the default `limits.body` (1 MiB).
fn over_the_default_body_limit() -> Bytes {
    Bytes::from(vec![b'x'; (1 << 20) + 1])
}

#[tokio::test]
async fn a_filter_that_does_not_buffer_lets_a_request_chunk_larger_than_its_body_limit_through() {
    // docs/filters.md: `limits.body` is the most a filter may hold while it buffers (returns
    // Pause); bodies stream through filters that do not pause them.
    let host = Setup::new().filter("stream-request", observer()).load();
    let mut chain = host.chain();
    let mut req = request();
    assert_continues(chain.on_request_headers(&mut req, false).await);

    let (data, verdict) = chain
        .on_request_body(&mut req, Some(over_the_default_body_limit()), true)
        .await;

    assert_continues(verdict);
    assert_eq!(data, over_the_default_body_limit());
    assert_eq!(
        seen("stream-request", Phase::RequestBody),
        saw(1, (1 << 20) + 1, true)
    );
}

#[tokio::test]
async fn a_filter_that_does_not_buffer_lets_a_response_chunk_larger_than_its_body_limit_through() {
    // As for requests. A cache hit hands its whole stored body (up to `max_object`) to the
    // response body phase as one chunk.
    let host = Setup::new().filter("stream-response", observer()).load();
    let mut chain = host.chain();
    let mut req = request();
    let mut resp = response();
    assert_continues(chain.on_request_headers(&mut req, true).await);
    let verdict = chain
        .on_response_headers(ResponsePhase::AfterCache, &mut req, &mut resp, false)
        .await;
    assert_continues(verdict);

    let (data, verdict) = chain.on_response_body(
        ResponsePhase::AfterCache,
        &mut req,
        Some(over_the_default_body_limit()),
        true,
    );

    assert_continues(verdict);
    assert_eq!(data, over_the_default_body_limit());
    assert_eq!(
        seen("stream-response", Phase::ResponseBody),
        saw(1, (1 << 20) + 1, true)
    );
}

// ---------------------------------------------------------------------------------------------
// Local responses
// ---------------------------------------------------------------------------------------------

/// The settings of a `local_responder` answering 418 in `phase`.
fn teapot_in(phase: &str) -> String {
    format!(
        "config: {{phase: {phase}, status: 418, body: short and stout, headers: {{x-local: \"1\"}}}}"
    )
}

fn teapot() -> LocalResponse {
    LocalResponse {
        status: 418,
        headers: vec![(b"x-local".to_vec(), b"1".to_vec())],
        body: b"short and stout".to_vec(),
        details: String::new(),
    }
}

#[tokio::test]
async fn a_local_response_in_request_headers_answers_and_later_filters_do_not_run() {
    let host = Setup::new()
        .filter_with(
            "lrqh-responder",
            edgeward_testkit::filters::LOCAL_RESPONDER,
            &teapot_in("request_headers"),
        )
        .filter("lrqh-next", tagger())
        .load();
    let mut chain = host.chain();
    let mut req = request();

    let verdict = chain.on_request_headers(&mut req, false).await;

    assert_eq!(local_response(verdict), teapot());
    assert_eq!(calls("lrqh-next", Phase::RequestHeaders), 0);
    assert_eq!(values(&req.headers, "x-order"), Vec::<&str>::new());
    chain.finish(
        &mut req,
        Some(ResponseHeader::build(418, None).expect("head")),
    );
    assert_eq!(guest_count("lrqh-next", "context_create"), 0);
}

#[tokio::test]
async fn a_local_response_in_the_request_body_answers_at_its_end_and_later_filters_do_not_run() {
    let host = Setup::new()
        .filter_with(
            "lrqb-responder",
            edgeward_testkit::filters::LOCAL_RESPONDER,
            &teapot_in("request_body"),
        )
        .filter("lrqb-next", observer())
        .load();
    let mut chain = host.chain();
    let mut req = request();
    assert_continues(chain.on_request_headers(&mut req, false).await);
    assert_eq!(calls("lrqb-next", Phase::RequestHeaders), 1);

    // The responder buffers until the end of the body, then answers.
    let (data, verdict) = chain.on_request_body(&mut req, chunk("tea"), false).await;
    assert_continues(verdict);
    assert_eq!(data, "");
    let (data, verdict) = chain.on_request_body(&mut req, chunk("pot"), true).await;

    assert_eq!(data, "");
    assert_eq!(local_response(verdict), teapot());
    assert_eq!(calls("lrqb-responder", Phase::RequestBody), 2);
    assert_eq!(seen("lrqb-next", Phase::RequestBody), saw(0, 0, false));
    chain.finish(
        &mut req,
        Some(ResponseHeader::build(418, None).expect("head")),
    );
}

#[tokio::test]
async fn a_local_response_in_response_headers_replaces_the_response_and_later_filters_do_not_run() {
    // Responses run the chain backwards: the responder (last) answers before the tagger.
    let host = Setup::new()
        .filter("lrsh-next", tagger())
        .filter_with(
            "lrsh-responder",
            edgeward_testkit::filters::LOCAL_RESPONDER,
            &teapot_in("response_headers"),
        )
        .load();
    let mut chain = host.chain();
    let mut req = request();
    let mut resp = response();
    assert_continues(chain.on_request_headers(&mut req, true).await);
    assert_eq!(values(&req.headers, "x-order"), ["lrsh-next"]);

    let verdict = chain
        .on_response_headers(ResponsePhase::AfterCache, &mut req, &mut resp, false)
        .await;

    assert_eq!(local_response(verdict), teapot());
    assert_eq!(calls("lrsh-next", Phase::ResponseHeaders), 0);
    assert_eq!(values(&resp.headers, "x-order"), Vec::<&str>::new());
    chain.finish(
        &mut req,
        Some(ResponseHeader::build(418, None).expect("head")),
    );
}

// ---------------------------------------------------------------------------------------------
// Failures
// ---------------------------------------------------------------------------------------------

/// The filter next after the failing one in `phase`'s order: the request phases run
/// `before, failing, after`, the response phases backwards.
fn next_after_failing(phase: Phase, before: &str, after: &str) -> String {
    match phase {
        Phase::RequestHeaders | Phase::RequestBody => after.to_string(),
        _ => before.to_string(),
    }
}

#[tokio::test]
async fn a_trap_in_any_phase_fails_closed_with_500() {
    for phase in PHASES {
        let name = format!("closed-{}", short(phase));
        let (before, after) = (format!("{name}-before"), format!("{name}-after"));
        let host = Setup::new()
            .filter(&before, tagger())
            .filter(&name, trapping_in(phase))
            .filter(&after, tagger())
            .load();

        let walk = walk(&mut host.chain()).await;

        let Some((ended, verdict)) = walk.ended else {
            panic!("{name}: the walk went through");
        };
        assert_eq!(ended, phase, "{name}");
        assert_eq!(
            failure(verdict),
            FilterFailure {
                filter: name.clone(),
                status: 500,
                code: "trap",
                message: format!("filter `{name}` crashed in {}", phase.name()),
            }
        );
        let next = next_after_failing(phase, &before, &after);
        assert_eq!(calls(&next, phase), 0, "{name}: {next} ran after the trap");
        assert_eq!(
            metrics::global()
                .filter_traps
                .with_label_values(&[name.as_str()])
                .get(),
            1,
            "{name}"
        );
        // The crashed instance cannot end the request; the others do.
        assert_eq!(final_calls(&name), [0, 0, 0], "{name}");
        assert_eq!(final_calls(&before), [1, 1, 1], "{name}");
    }
}

#[tokio::test]
async fn a_rust_panic_fails_closed_with_500() {
    let host = Setup::new()
        .filter("panic-hostile", edgeward_testkit::filters::HOSTILE)
        .filter("panic-next", tagger())
        .load();
    let mut chain = host.chain();
    let mut req = request_for("/trap");

    let verdict = chain.on_request_headers(&mut req, true).await;

    assert_eq!(
        failure(verdict),
        FilterFailure {
            filter: "panic-hostile".into(),
            status: 500,
            code: "trap",
            message: "filter `panic-hostile` crashed in on_http_request_headers".into(),
        }
    );
    assert_eq!(calls("panic-next", Phase::RequestHeaders), 0);
    chain.finish(&mut req, None);
}

#[tokio::test]
async fn a_trap_in_any_phase_fails_open_skipping_the_filter_for_the_rest_of_the_request() {
    for phase in PHASES {
        let name = format!("open-{}", short(phase));
        let (before, after) = (format!("{name}-before"), format!("{name}-after"));
        let host = Setup::new()
            .filter(&before, tagger())
            .filter_with(&name, trapping_in(phase), "on_error: fail_open")
            .filter(&after, tagger())
            .load();

        let walk = walk(&mut host.chain()).await;

        assert!(walk.ended.is_none(), "{name}: {:?}", walk.ended);
        // Both other filters ran in every phase, in order, and the bodies went through.
        assert_eq!(
            values(&walk.request.headers, "x-order"),
            [before.as_str(), after.as_str()]
        );
        assert_eq!(
            values(&walk.response.headers, "x-order"),
            [after.as_str(), before.as_str()]
        );
        assert_eq!(
            walk.upstream_body,
            format!("ping {before} {after}").as_bytes()
        );
        assert_eq!(
            walk.downstream_body,
            format!("pong {after} {before}").as_bytes()
        );
        // The failing filter was called up to its trap, never after it.
        let position = PHASES.iter().position(|p| *p == phase).unwrap_or_default();
        for (i, later) in PHASES.iter().enumerate() {
            let expected = u64::from(i <= position);
            assert_eq!(calls(&name, *later), expected, "{name} in {}", later.name());
        }
        assert_eq!(final_calls(&name), [0, 0, 0], "{name}");
        assert_eq!(final_calls(&after), [1, 1, 1], "{name}");
    }
}

#[tokio::test]
async fn running_out_of_cpu_in_any_phase_fails_with_503() {
    for phase in PHASES {
        let name = format!("cpu-{}", short(phase));
        let host = Setup::new()
            .filter_with(&name, spinning_in(phase), "limits: {cpu: 20ms}")
            .load();

        let walk = walk(&mut host.chain()).await;

        let Some((ended, verdict)) = walk.ended else {
            panic!("{name}: the walk went through");
        };
        assert_eq!(ended, phase, "{name}");
        assert_eq!(
            failure(verdict),
            FilterFailure {
                filter: name.clone(),
                status: 503,
                code: "cpu_limit",
                message: format!("filter `{name}` exceeded its CPU time limit"),
            }
        );
        assert_eq!(
            metrics::global()
                .filter_limit_hits
                .with_label_values(&[name.as_str(), "cpu"])
                .get(),
            1,
            "{name}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// The end of a request
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn finish_ends_the_request_once_in_every_filter_that_saw_it() {
    // `end-b` answers at the request headers: `end-c` never sees the request.
    let host = Setup::new()
        .filter("end-a", tagger())
        .filter(
            "end-b",
            Guest::new().on(
                Phase::RequestHeaders,
                "(call $respond (i32.const 403) 'denied') (call $pause)",
            ),
        )
        .filter("end-c", tagger())
        .load();
    let mut chain = host.chain();
    let mut req = request();
    let answer = local_response(chain.on_request_headers(&mut req, true).await);
    assert_eq!((answer.status, answer.body), (403, b"denied".to_vec()));

    assert!(chain.needs_sent_response());
    let sent = ResponseHeader::build(403, None).expect("head");
    chain.finish(&mut req, Some(sent));

    for filter in ["end-a", "end-b"] {
        assert_eq!(guest_count(filter, "context_create"), 1, "{filter}");
        assert_eq!(final_calls(filter), [1, 1, 1], "{filter}");
        // `response.code` in on_log is the status the client got.
        assert_eq!(guest_gauge(filter, "log_status"), 403, "{filter}");
    }
    assert_eq!(guest_count("end-c", "context_create"), 0);
    assert_eq!(final_calls("end-c"), [0, 0, 0]);

    // Nothing runs twice, neither by a second finish nor when the chain is dropped.
    chain.finish(&mut req, None);
    drop(chain);
    for filter in ["end-a", "end-b"] {
        assert_eq!(final_calls(filter), [1, 1, 1], "{filter}");
    }
}

#[tokio::test]
async fn a_chain_dropped_without_finish_still_ends_its_contexts() {
    let host = Setup::new().filter("dropped", tagger()).load();
    let mut chain = host.chain();
    let mut req = request();
    assert_continues(chain.on_request_headers(&mut req, true).await);

    drop(chain);

    assert_eq!(final_calls("dropped"), [1, 1, 1]);
    // Without the request's data there is no `response.code`.
    assert_eq!(guest_gauge("dropped", "log_status"), -1);
}

/// The helper behind the test filters' text: quoted texts become data, and the prelude compiles.
#[test]
fn quoted_texts_in_guest_code_become_data() {
    let mut data = Vec::new();
    let code = lower("(call $f 'ab' 'c\\0d') ;; don't", &mut data);
    assert_eq!(
        code,
        format!(
            "(call $f (i32.const {}) (i32.const 2) (i32.const {}) (i32.const 3)) ;; don't\n",
            DATA_AT,
            DATA_AT + 2
        )
    );
    assert_eq!(data, b"abc\0d");
    assert!(Guest::new().wasm().starts_with(b"\0asm"));
}
