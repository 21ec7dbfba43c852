//! `api-compose`: answers a route itself with one JSON document composed from several
//! upstreams, called in parallel with HTTP callouts.
//!
//! Config (the proxy hands over its YAML `config:` as JSON; unknown keys fail it):
//!
//! ```yaml
//! callouts: [users, orders]                   # the filter's: every `from` must be listed
//! config:
//!   parts:                                    # required, 1 to 32; the document's keys
//!     user:
//!       from: users                           # required: an upstream in `callouts`
//!       path: "/users/{path.2}"               # required: the callout's path and query
//!       headers: {x-request-id: "{header.x-request-id}"}   # optional, templates too
//!       authority: users.internal             # default: the upstream's name
//!       timeout: 2s                           # default: the top-level `timeout`
//!       required: false                       # default false
//!     orders: {from: orders, path: "/orders?user={path.2}&limit={query.limit:-10}"}
//!   timeout: 5s                               # default 5s: each part's callout timeout
//!   max_part_bytes: 262144                    # default 256 KiB: one answer's body
//!   max_document_bytes: 1048576               # default 1 MiB: all answers together
//!   cache_control: "public, max-age=30"       # optional: on complete documents
//! ```
//!
//! Placeholders in `path` and `headers` ([`template`]): `{path.N}` (the Nth segment of the
//! request path, 1-based, percent-decoded), `{query.NAME}` (decoded), `{header.NAME}` (its
//! first value), `{property.a.b}`, each with an optional default `{query.limit:-10}`. Values are
//! percent-encoded into paths (only `A-Z a-z 0-9 - . _ ~` pass), so a client cannot add a
//! segment, a query parameter or a fragment; a path that would have a `.` or `..` segment
//! fails the part. Header values lose their control characters. A missing or empty value
//! without a default fails the part.
//!
//! `on_http_request_headers`: every part's `GET` callout is dispatched at once and the request
//! paused. `on_http_call_response` settles the part: a 2xx answer whose body is JSON within
//! the bounds is its value, anything else (a failed or timed-out callout, another status, a
//! body that is not JSON or too large) fails it. The answer, sent with `send_http_response`:
//! - as soon as a `required` part fails: `502 {"error":"part_failed",...}`, or `504
//!   {"error":"part_timeout",...}` when it timed out, or `400 {"error":"bad_request",...}`
//!   when the request lacked a value its path needs; with `status`, `part`, `reason` and
//!   `request_id`, and `cache-control: no-store`;
//! - otherwise once every part is settled: `200`, `content-type: application/json`, the
//!   object `{"<part>": <answer>, ...}` in part-name order (a failed part is `null`), plus
//!   `"errors": [{"part": ..., "reason": ...}]` when a part failed. A complete document gets
//!   `cache_control` (if set), one with errors `cache-control: no-store`.
//!
//! The request's body is not read nor sent anywhere; the route's upstream is never asked. The
//! route's `timeout` (default 30 s) must be longer than the longest part `timeout`, or the
//! request ends with edgeward's `504 filter_timeout` before the parts have.
//!
//! Bounds per request: at most 32 callouts; the answers kept take at most
//! `max_document_bytes`, and one answer being read at most `max_part_bytes` (larger ones are
//! refused from their announced size, unread); the document is one more copy. So a request
//! holds about 2 × `max_document_bytes` + `max_part_bytes` of the instance's memory at its
//! peak; in `shared` isolation the requests in flight on a worker share `limits.memory`.
//! Checking an answer is JSON is linear in its size and needs no recursion.
//!
//! On edgeward, `on_configure` checks every `from` against the filter's `callouts` (the
//! host's `plugin_callouts` property) and refuses the configuration otherwise; on a host
//! without that property the part fails at request time (`the callout was refused`).
//!
//! The logic ([`template`], [`config`], [`compose`]) is free of the SDK and unit-tested
//! natively (`cargo test` in `filters/`); only the glue below talks to the host.

pub mod compose;
pub mod config;
pub mod template;

use std::rc::Rc;

use filter_support::root::{Configured, ConfiguredRoot};
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::{Action, LogLevel, MapType};

use crate::compose::{callout_failure, check_status, Composer, Failure, LocalResponse};
use crate::config::{CalloutRequest, Composition, Part};
use crate::template::{path_segment, query_param, Source};

const NAME: &str = "api-compose";

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| ConfiguredRoot::<Composition>::boxed());
}}

impl Configured for Composition {
    const NAME: &'static str = NAME;

    fn configure(config: Option<&[u8]>) -> Result<Composition, String> {
        let composition = Composition::parse(config)?;
        if let Some(callouts) = filter_support::property(NAME, &["plugin_callouts"]) {
            let callouts = String::from_utf8_lossy(&callouts);
            if let Some((part, upstream)) = composition.uncallable(&callouts) {
                return Err(format!(
                    "parts.{part}.from: upstream `{upstream}` is not in the filter's `callouts` \
                     ({callouts})"
                ));
            }
        }
        Ok(composition)
    }

    fn http_context(composition: &Rc<Composition>) -> Box<dyn HttpContext> {
        Box::new(ApiCompose {
            composition: Rc::clone(composition),
            composer: Composer::new(composition.parts.len()),
            request_id: String::new(),
        })
    }
}

struct ApiCompose {
    composition: Rc<Composition>,
    composer: Composer,
    /// For error answers.
    request_id: String,
}

impl ApiCompose {
    /// Sends `request`, `part`'s callout: its token, or why the host refused it.
    fn dispatch(&self, part: &Part, request: &CalloutRequest) -> Result<u32, Failure> {
        let mut headers = vec![
            (":method", "GET"),
            (":path", request.path.as_str()),
            (":authority", part.authority.as_str()),
        ];
        headers.extend(
            request
                .headers
                .iter()
                .map(|(name, value)| (name.as_str(), value.as_str())),
        );
        self.dispatch_http_call(&part.upstream, headers, None, vec![], part.timeout)
            .map_err(|status| {
                log::warn!(
                    "{NAME}: part `{}`: the callout to `{}` was refused: {status:?}",
                    part.name,
                    part.upstream
                );
                Failure::Refused
            })
    }

    /// Sends the answer if it is decided. Returns whether it was sent.
    fn respond_if_decided(&mut self) -> bool {
        let Some(response) = self.composer.response(&self.composition, &self.request_id) else {
            return false;
        };
        send(&response);
        true
    }

    /// The answer to a callout: its body, or why the part fails.
    fn callout_answer(&self, num_headers: usize, body_size: usize) -> Result<Vec<u8>, Failure> {
        if num_headers == 0 {
            // A failed callout; the host logged why, with the endpoint.
            let message = hostcalls::get_grpc_status()
                .ok()
                .and_then(|(_, message)| message)
                .unwrap_or_default();
            return Err(callout_failure(&message));
        }
        check_status(
            self.get_http_call_response_header_bytes(":status")
                .as_deref(),
        )?;
        if body_size > self.composition.max_part_bytes {
            return Err(Failure::TooLarge(self.composition.max_part_bytes));
        }
        Ok(self
            .get_http_call_response_body(0, body_size)
            .unwrap_or_default())
    }
}

impl Context for ApiCompose {
    fn on_http_call_response(
        &mut self,
        token_id: u32,
        num_headers: usize,
        body_size: usize,
        _num_trailers: usize,
    ) {
        let Some(index) = self.composer.part_of(token_id) else {
            return;
        };
        let answer = self.callout_answer(num_headers, body_size);
        let composition = Rc::clone(&self.composition);
        let failure = self.composer.settle(index, answer, &composition);
        if let (Some(failure), Some(part)) = (failure, composition.parts.get(index)) {
            log_failure(part, &failure);
        }
        self.respond_if_decided();
    }
}

impl HttpContext for ApiCompose {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        self.request_id = self
            .get_http_request_header_bytes("x-request-id")
            .map(|id| String::from_utf8_lossy(&id).into_owned())
            .unwrap_or_default();
        let mut values = RequestValues::default();
        let composition = Rc::clone(&self.composition);
        // Every request is made before any is sent: a required part that cannot be made
        // decides the answer, and then no part is asked.
        let requests: Vec<Option<CalloutRequest>> = composition
            .parts
            .iter()
            .enumerate()
            .map(
                |(index, part)| match part.request(|source| values.get(source)) {
                    Ok(request) => Some(request),
                    Err(failure) => {
                        log_failure(part, &failure);
                        self.composer.failed(index, failure);
                        None
                    }
                },
            )
            .collect();
        if !self.respond_if_decided() {
            for (index, (part, request)) in composition.parts.iter().zip(&requests).enumerate() {
                let Some(request) = request else { continue };
                match self.dispatch(part, request) {
                    Ok(token) => self.composer.dispatched(index, token),
                    Err(failure) => self.composer.failed(index, failure),
                }
            }
            self.respond_if_decided();
        }
        // Paused either way: until the answers come, or for the local response just sent.
        Action::Pause
    }
}

/// The request's values, read from the host when a template first asks for them.
#[derive(Default)]
struct RequestValues {
    url_path: Option<Option<Vec<u8>>>,
    query: Option<Option<Vec<u8>>>,
}

impl RequestValues {
    fn get(&mut self, source: &Source) -> Option<Vec<u8>> {
        match source {
            Source::PathSegment(n) => {
                let path = self.url_path.get_or_insert_with(|| {
                    filter_support::property(NAME, &["request", "url_path"])
                });
                path_segment(path.as_deref()?, *n)
            }
            Source::Query(name) => {
                let query = self
                    .query
                    .get_or_insert_with(|| filter_support::property(NAME, &["request", "query"]));
                query_param(query.as_deref()?, name)
            }
            Source::Header(name) => {
                hostcalls::get_map_value_bytes(MapType::HttpRequestHeaders, name)
                    .ok()
                    .flatten()
            }
            Source::Property(path) => {
                let path: Vec<&str> = path.iter().map(String::as_str).collect();
                let bytes = filter_support::property(NAME, &path)?;
                Some(filter_support::template::render_value(&path, &bytes).into_bytes())
            }
        }
    }
}

/// Sends `response` as the request's local answer.
fn send(response: &LocalResponse) {
    let headers: Vec<(&str, &str)> = response
        .headers
        .iter()
        .map(|(name, value)| (*name, value.as_str()))
        .collect();
    if let Err(status) =
        hostcalls::send_http_response(response.status.into(), headers, Some(&response.body))
    {
        log::warn!("{NAME}: sending the answer failed: {status:?}");
    }
}

/// A part's failure: a warning when its upstream answered wrongly; at debug level when the
/// client's request caused it, or when the host already logged it (failed callouts).
fn log_failure(part: &Part, failure: &Failure) {
    let reason = failure.reason();
    match failure {
        Failure::Status(_) | Failure::NotJson | Failure::TooLarge(_) => log::warn!(
            "{NAME}: part `{}` from `{}` failed: {reason}",
            part.name,
            part.upstream
        ),
        _ => log::debug!("{NAME}: part `{}` failed: {reason}", part.name),
    }
}
