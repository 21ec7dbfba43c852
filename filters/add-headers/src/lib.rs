//! `add-headers`: header injection. Sets, appends and removes request and response headers,
//! with values that can expand request properties (`${request.id}`, `${geo.country_code}`).
//!
//! Config (every part optional; no config at all is valid and changes nothing):
//!
//! ```yaml
//! config:
//!   request:  { set: { x-edge: "1" }, add: { x-trace: "${request.id}" }, remove: [x-internal-secret] }
//!   response: { set: { x-served-by: edgeward, x-edge-country: "${geo.country_code:-XX}" },
//!               remove: [server, x-powered-by] }
//! ```
//!
//! In each phase (`on_http_request_headers` for `request`, `on_http_response_headers` for
//! `response`) the edits apply in this order:
//! 1. `remove`: every value of each listed header is removed;
//! 2. `set`: each header is replaced (created if missing) with one value;
//! 3. `add`: a value is appended to each header, keeping the values already there.
//!
//! Within `set` and `add`, headers are edited in name order. Names are case-insensitive
//! (sent lower case); a name given twice in one map, an invalid name or a pseudo-header
//! (`:path`, ...) fails the configuration. Unknown keys fail it too. Every callback returns
//! `Continue`.
//!
//! Values are templates, parsed once at configure time (errors fail the configuration and
//! name the key, e.g. ``request.add.x-trace: at byte 2: empty property path in `${}` ``):
//! - `${a.b.c}` expands the property at path `["a", "b", "c"]` (split on `.`): e.g.
//!   `request.id`, `geo.country_code`, `source.effective_address`, `response.code`,
//!   `request.headers.user-agent` (a header name containing `.` cannot be named);
//! - `${a.b:-text}` gives `text` when the property is missing or empty;
//! - `$$` is a literal `$`; any other `$` is an error.
//!
//! A missing property expands to the empty string (or the default). Property values are
//! bytes: the host's 8-byte little-endian integer properties (`request.size`,
//! `request.total_size`, `request.headers_bytes`, `request.time`, `request.duration`,
//! `response.code`, `response.size`, `response.total_size`, `response.headers_bytes`,
//! `source.port`, `destination.port`, `upstream.port`, and unsigned `connection.id`) render as
//! decimal numbers, `connection.mtls` as `true`/`false`, everything else as UTF-8 text (invalid
//! sequences replaced by U+FFFD). Control characters other than tab are dropped from expanded
//! values, so the result is always a valid header value.
//!
//! **A header whose value expands to the empty string is still set (or added), with an empty
//! value**: `x-edge-country: ${geo.country_code}` without geo data sends `x-edge-country:`.
//! Give a default (`${geo.country_code:-XX}`) to send something else.
//!
//! The logic ([`config`], and the templates of [`filter_support::template`]) is free of the
//! SDK and unit-tested natively (`cargo test` in `filters/`); only the glue below talks to the
//! host.

pub mod config;

use std::rc::Rc;

use filter_support::root::{Configured, ConfiguredRoot};
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::{Action, LogLevel};

use crate::config::{Edits, Headers, Plan};

const NAME: &str = "add-headers";

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| ConfiguredRoot::<Plan>::boxed());
}}

impl Configured for Plan {
    const NAME: &'static str = NAME;

    fn configure(config: Option<&[u8]>) -> Result<Plan, String> {
        let plan = Plan::parse(config)?;
        if plan.is_empty() {
            log::warn!("{NAME}: the configuration edits no header");
        }
        Ok(plan)
    }

    fn http_context(plan: &Rc<Plan>) -> Box<dyn HttpContext> {
        Box::new(AddHeaders {
            plan: Rc::clone(plan),
        })
    }
}

struct AddHeaders {
    plan: Rc<Plan>,
}

impl Context for AddHeaders {}

impl HttpContext for AddHeaders {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        apply(&self.plan.request, &mut RequestHeaders(self));
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        apply(&self.plan.response, &mut ResponseHeaders(self));
        Action::Continue
    }
}

fn apply(edits: &Edits, headers: &mut dyn Headers) {
    if !edits.is_empty() {
        edits.apply(headers, |path| filter_support::property(NAME, path));
    }
}

struct RequestHeaders<'a>(&'a AddHeaders);

impl Headers for RequestHeaders<'_> {
    fn remove(&mut self, name: &str) {
        self.0.remove_http_request_header(name);
    }
    fn set(&mut self, name: &str, value: &str) {
        self.0.set_http_request_header(name, Some(value));
    }
    fn add(&mut self, name: &str, value: &str) {
        self.0.add_http_request_header(name, value);
    }
}

struct ResponseHeaders<'a>(&'a AddHeaders);

impl Headers for ResponseHeaders<'_> {
    fn remove(&mut self, name: &str) {
        self.0.remove_http_response_header(name);
    }
    fn set(&mut self, name: &str, value: &str) {
        self.0.set_http_response_header(name, Some(value));
    }
    fn add(&mut self, name: &str, value: &str) {
        self.0.add_http_response_header(name, value);
    }
}
