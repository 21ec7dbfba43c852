//! `json-transform`: rewrites JSON bodies at the edge. Keeps only listed fields, removes,
//! renames and sets fields (constants, or `${property}` templates), by JSON pointer, also
//! inside arrays and maps (`/items/*/secret`). Responses are transformed when `response` has
//! edits, requests only when `request` has.
//!
//! Config (every part optional):
//!
//! ```yaml
//! config:
//!   response:
//!     keep: [/id, /name, /items]               # an allow-list: only these values remain
//!     remove: [/items/*/secret, /internal]     # in list order
//!     rename: {/items/*/sku: /items/*/code}    # from: to, in `from` order
//!     set:                                     # in pointer order
//!       /edge/request_id: "${request.id}"      # a string is a template (`$$` for `$`)
//!       /edge/version: 2                       # anything else is a JSON constant
//!   request: { remove: [/role] }               # request bodies too
//!   max_body: 512KiB                           # default 512KiB; 1 byte to 64MiB
//!   fail_closed: false                         # default: what cannot be transformed goes on unchanged
//! ```
//!
//! Pointers are RFC 6901 (`/a~1b` is member `a/b`, `/m~0n` is `m~n`, `/items/0` an array's
//! first element, `` the whole body); a segment `*` matches every element of an array and every
//! member of an object. In each direction the edits apply in this order: `keep`, `remove`,
//! `rename`, `set` (see [`config::Edits`] and [`edit`] for each one's rules).
//!
//! Per message:
//! - Head: a `Content-Type` other than `application/json` or `application/*+json` (or none)
//!   leaves the message alone: its body is never buffered. A JSON one with a
//!   `Content-Encoding` (other than `identity`), or a `Content-Length` over `max_body`, cannot
//!   be transformed (below). Otherwise the filter removes `Content-Length` (the body's length
//!   may change; edgeward then sends it chunked or framed) and buffers the body.
//! - Body: every chunk is held (`Pause`) until the end of the stream, then the whole body is
//!   parsed, edited and written back compact (`set_buffer_bytes`). A body the edits do not
//!   change goes on byte for byte as it came.
//! - A body that is larger than `max_body` (found as it streams), not valid JSON (also
//!   truncated, or not UTF-8), nested deeper than 128 levels, or encoded goes on unchanged,
//!   or, with `fail_closed: true`, is answered instead: `502` for responses (if the head has
//!   not been sent yet; otherwise the response is cut short), `413`/`415`/`400` for requests,
//!   with `{"error": "body_too_large" | "unsupported_content_encoding" | "invalid_json" |
//!   "json_too_deep", "message": ...}`. An empty body is left alone.
//!
//! Counted in `wasmcustom_json_transform_bodies{direction, outcome}` (outcome: `transformed`,
//! `unchanged`, `passed` for a body that could not be transformed and went on, `rejected` for
//! one answered with an error); bodies that went on unchanged are logged at debug level,
//! rejections at info.
//!
//! Bounds: one body of at most `max_body` bytes is held (by the host, within `limits.body`:
//! keep that at least `max_body` + 64 KiB) per message; parsing and editing happen in one
//! callback, using at most about 20 × the body's size in guest memory (for a body of many
//! small values) and time linear in the body's size times the number of edits (about 10 ms of
//! guest CPU for 512 KiB). Nesting is bounded at 128 levels, and so is the recursion.
//!
//! The logic ([`json`], [`pointer`], [`edit`], [`config`], [`body`]) is free of the SDK and
//! unit-tested natively (`cargo test` in `filters/`); only the glue below talks to the host.

pub mod body;
pub mod config;
pub mod edit;
pub mod json;
pub mod pointer;

use std::rc::Rc;

use filter_support::root::{Configured, ConfiguredRoot};
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::{Action, BufferType, LogLevel, MapType, MetricType};

use crate::body::{Handling, Head, Refusal};
use crate::config::{Direction, Plan};

const NAME: &str = "json-transform";

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| ConfiguredRoot::<Shared>::boxed());
}}

/// The plan and the metrics, shared by every request's context.
struct Shared {
    plan: Plan,
    metrics: Metrics,
}

impl Configured for Shared {
    const NAME: &'static str = NAME;

    fn configure(config: Option<&[u8]>) -> Result<Shared, String> {
        let plan = Plan::parse(config)?;
        if plan.is_empty() {
            log::warn!("{NAME}: the configuration transforms no body");
        }
        Ok(Shared {
            plan,
            metrics: Metrics::define(),
        })
    }

    fn http_context(shared: &Rc<Shared>) -> Box<dyn HttpContext> {
        Box::new(Transform {
            shared: Rc::clone(shared),
            request: State::Idle,
            response: State::Idle,
        })
    }
}

/// Where one direction's body stands.
#[derive(Clone, Copy, PartialEq, Eq)]
enum State {
    /// Not buffering: the body (if any) goes through untouched.
    Idle,
    /// Holding the body until its end.
    Buffering,
}

struct Transform {
    shared: Rc<Shared>,
    request: State,
    response: State,
}

impl Context for Transform {}

impl HttpContext for Transform {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        self.on_head(Direction::Request)
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        self.on_body(Direction::Request, body_size, end_of_stream)
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        self.on_head(Direction::Response)
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        self.on_body(Direction::Response, body_size, end_of_stream)
    }
}

impl Transform {
    fn state(&mut self, direction: Direction) -> &mut State {
        match direction {
            Direction::Request => &mut self.request,
            Direction::Response => &mut self.response,
        }
    }

    fn on_head(&mut self, direction: Direction) -> Action {
        let plan = &self.shared.plan;
        if plan.edits(direction).is_none() {
            return Action::Continue;
        }
        let map = headers_of(direction);
        let content_type = header(map, "content-type");
        let content_encoding = header(map, "content-encoding");
        let content_length = header(map, "content-length");
        let head = Head {
            content_type: content_type.as_deref(),
            content_encoding: content_encoding.as_deref(),
            content_length: content_length.as_deref(),
        };
        match body::handling(head, plan.max_body) {
            Handling::Ignore => Action::Continue,
            Handling::Buffer => {
                if content_length.is_some() {
                    if let Err(status) = hostcalls::remove_map_value(map, "content-length") {
                        log::warn!("{NAME}: removing content-length failed: {status:?}");
                    }
                }
                *self.state(direction) = State::Buffering;
                Action::Continue
            }
            Handling::Refuse(refusal) => self.refuse(direction, &refusal),
        }
    }

    fn on_body(&mut self, direction: Direction, body_size: usize, end_of_stream: bool) -> Action {
        if *self.state(direction) != State::Buffering {
            return Action::Continue;
        }
        let shared = Rc::clone(&self.shared);
        let plan = &shared.plan;
        if body_size > plan.max_body {
            *self.state(direction) = State::Idle;
            return self.refuse(
                direction,
                &Refusal::TooLarge {
                    limit: plan.max_body,
                },
            );
        }
        if !end_of_stream {
            return Action::Pause;
        }
        *self.state(direction) = State::Idle;
        let Some(edits) = plan.edits(direction) else {
            return Action::Continue;
        };
        let buffer = body_of(direction);
        let whole = match hostcalls::get_buffer(buffer, 0, body_size) {
            Ok(whole) => whole.unwrap_or_default(),
            Err(status) => {
                log::warn!(
                    "{NAME}: reading the {} body failed: {status:?}",
                    direction.name()
                );
                return Action::Continue;
            }
        };
        let transformed =
            body::transform(edits, &whole, |path| filter_support::property(NAME, path));
        match transformed {
            Ok(None) => {
                shared.metrics.count(direction, Outcome::Unchanged);
                Action::Continue
            }
            Ok(Some(new_body)) => {
                match hostcalls::set_buffer(buffer, 0, whole.len(), &new_body) {
                    Ok(()) => shared.metrics.count(direction, Outcome::Transformed),
                    Err(status) => log::warn!(
                        "{NAME}: replacing the {} body failed: {status:?}",
                        direction.name()
                    ),
                }
                Action::Continue
            }
            Err(refusal) => self.refuse(direction, &refusal),
        }
    }

    /// A body that cannot be transformed: on unchanged, or answered when failing closed.
    fn refuse(&self, direction: Direction, refusal: &Refusal) -> Action {
        let metrics = &self.shared.metrics;
        if !self.shared.plan.fail_closed {
            log::debug!(
                "{NAME}: the {} body goes on unchanged: {refusal}",
                direction.name()
            );
            metrics.count(direction, Outcome::Passed);
            return Action::Continue;
        }
        let status = refusal.status(direction);
        log::info!(
            "{NAME}: answering {status} {}: the {} body cannot be transformed: {refusal}",
            refusal.code(),
            direction.name()
        );
        metrics.count(direction, Outcome::Rejected);
        let answer = refusal.answer(direction);
        let headers = vec![("content-type", "application/json")];
        if let Err(status) = hostcalls::send_http_response(status, headers, Some(answer.as_bytes()))
        {
            log::warn!("{NAME}: sending the error answer failed: {status:?}");
        }
        Action::Pause
    }
}

fn headers_of(direction: Direction) -> MapType {
    match direction {
        Direction::Request => MapType::HttpRequestHeaders,
        Direction::Response => MapType::HttpResponseHeaders,
    }
}

fn body_of(direction: Direction) -> BufferType {
    match direction {
        Direction::Request => BufferType::HttpRequestBody,
        Direction::Response => BufferType::HttpResponseBody,
    }
}

/// A header's value as bytes (the SDK's string reads trap on values that are not UTF-8).
fn header(map: MapType, name: &str) -> Option<Vec<u8>> {
    hostcalls::get_map_value_bytes(map, name).ok().flatten()
}

/// What became of a body the filter buffered (or refused from its head).
#[derive(Clone, Copy)]
enum Outcome {
    Transformed,
    Unchanged,
    Passed,
    Rejected,
}

impl Outcome {
    const ALL: [Outcome; 4] = [
        Outcome::Transformed,
        Outcome::Unchanged,
        Outcome::Passed,
        Outcome::Rejected,
    ];

    fn name(self) -> &'static str {
        match self {
            Outcome::Transformed => "transformed",
            Outcome::Unchanged => "unchanged",
            Outcome::Passed => "passed",
            Outcome::Rejected => "rejected",
        }
    }
}

/// The counters `json_transform_bodies.direction=D.outcome=O` (tags the host turns into
/// labels); a counter the host refused is simply not counted.
#[derive(Default)]
struct Metrics {
    ids: Vec<(Direction, &'static str, Option<u32>)>,
}

impl Metrics {
    fn define() -> Metrics {
        let mut ids = Vec::new();
        for direction in [Direction::Request, Direction::Response] {
            for outcome in Outcome::ALL {
                let name = format!(
                    "json_transform_bodies.direction={}.outcome={}",
                    direction.name(),
                    outcome.name()
                );
                let id = hostcalls::define_metric(MetricType::Counter, &name).ok();
                ids.push((direction, outcome.name(), id));
            }
        }
        Metrics { ids }
    }

    fn count(&self, direction: Direction, outcome: Outcome) {
        let id = self
            .ids
            .iter()
            .find(|(d, o, _)| *d == direction && *o == outcome.name())
            .and_then(|(_, _, id)| *id);
        if let Some(id) = id {
            if let Err(status) = hostcalls::increment_metric(id, 1) {
                log::debug!("{NAME}: counting failed: {status:?}");
            }
        }
    }
}
