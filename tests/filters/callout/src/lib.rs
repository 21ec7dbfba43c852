//! `callout`: pauses each request, makes HTTP callouts (`proxy_http_call`) and acts on the
//! answers.
//!
//! Config (JSON, required; unknown fields fail the configuration):
//!
//! ```json
//! { "upstream": "auth", "path": "/bytes/1", "mode": "header", "timeout_ms": 5000 }
//! { "path": "/status/200", "mode": "fanout", "fanout": ["a", "b", "c"] }
//! ```
//!
//! `path` defaults to `/`, `mode` to `header`, `timeout_ms` (every callout's timeout) to
//! 5000. Mode `header` (or its alias `timeout`, for tests that set a small `timeout_ms`)
//! needs a non-empty `upstream`; mode `fanout` needs a non-empty `fanout` list of distinct
//! names. Every callout is `GET <path>` with headers `:method: GET`, `:path: <path>`,
//! `:authority: <upstream>` and `x-from-filter: callout`, and no body or trailers.
//!
//! Mode `header`: request headers dispatch one callout to `upstream` and return `Pause`.
//! - If `dispatch_http_call` fails (e.g. `BadArgument` for an upstream the filter may not
//!   call), the filter answers `500` with header `x-callout-error: <status, e.g.
//!   BadArgument>` and body `dispatch refused`.
//! - A failed callout (the answer has no headers: refused, timed out, ...) is answered
//!   `503` with header `x-callout: failed` and body `callout failed`.
//! - Otherwise it sets request headers `x-callout-status` (the callout's `:status`) and
//!   `x-callout-origin` (its `x-origin` header, `none` if absent) on the paused request,
//!   and `x-callout-trailers` (its trailers as `name=value` joined with `,`) when it had
//!   trailers, and resumes it; response headers then get the same two headers, with the same values.
//!
//! Mode `body` (needs `upstream`): request headers remove `content-length` (the body will grow)
//! and go on; the request body is buffered (`Pause`) to its end, where one callout to
//! `upstream` is dispatched and the request pauses again. The answer's callback reads the
//! whole request body, replaces it with `<body> [checked: <callout :status, or failed>]` and
//! resumes the request.
//!
//! Mode `fanout`: request headers dispatch one callout per `fanout` upstream, all at once,
//! and return `Pause`. Answers may come in any order; once every callout has answered the
//! filter answers `200` (`content-type: application/json`) with a JSON object mapping each
//! upstream name to the body of its answer (decoded as UTF-8, lossily), `"failed"` for a
//! failed callout, or `"refused"` if its `dispatch_http_call` failed.

use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;
use std::time::Duration;

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel, Status};
use serde::Deserialize;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| Box::new(Root { config: None }));
}}

#[derive(Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Mode {
    #[serde(alias = "timeout")]
    Header,
    Body,
    Fanout,
}

#[derive(Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Config {
    upstream: String,
    path: String,
    mode: Mode,
    fanout: Vec<String>,
    timeout_ms: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            upstream: String::new(),
            path: "/".to_owned(),
            mode: Mode::Header,
            fanout: Vec::new(),
            timeout_ms: 5000,
        }
    }
}

impl Config {
    /// Why the configuration cannot be used, if it cannot.
    fn problem(&self) -> Option<&'static str> {
        match self.mode {
            Mode::Header if self.upstream.is_empty() => Some("mode `header` needs `upstream`"),
            Mode::Body if self.upstream.is_empty() => Some("mode `body` needs `upstream`"),
            Mode::Fanout if self.fanout.is_empty() => Some("mode `fanout` needs `fanout`"),
            Mode::Fanout if has_duplicates(&self.fanout) => {
                Some("the names in `fanout` must be distinct")
            }
            _ => None,
        }
    }
}

fn has_duplicates(names: &[String]) -> bool {
    names
        .iter()
        .enumerate()
        .any(|(i, name)| names[..i].contains(name))
}

struct Root {
    config: Option<Rc<Config>>,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        let Some(config) =
            filter_config::parse_required::<Config>("callout", self.get_plugin_configuration())
        else {
            return false;
        };
        if let Some(problem) = config.problem() {
            log::error!("callout: invalid configuration: {problem}");
            return false;
        }
        self.config = Some(Rc::new(config));
        true
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        // A plugin whose configuration failed never gets HTTP contexts.
        let config = Rc::clone(self.config.as_ref()?);
        Some(Box::new(Callout {
            config,
            pending: HashMap::new(),
            answers: BTreeMap::new(),
            seen: None,
            body_size: 0,
        }))
    }
}

/// What a successful `header`-mode callout answered.
struct Seen {
    status: String,
    origin: String,
}

struct Callout {
    config: Rc<Config>,
    /// The callouts not answered yet: token → upstream name.
    pending: HashMap<u32, String>,
    /// `fanout` mode: upstream name → what it answered.
    answers: BTreeMap<String, String>,
    /// `header` mode: the callout's answer, once it came.
    seen: Option<Seen>,
    /// `body` mode: the size of the whole request body.
    body_size: usize,
}

impl Callout {
    fn dispatch(&mut self, upstream: &str) -> Result<(), Status> {
        let headers = vec![
            (":method", "GET"),
            (":path", self.config.path.as_str()),
            (":authority", upstream),
            ("x-from-filter", "callout"),
        ];
        let timeout = Duration::from_millis(self.config.timeout_ms);
        let token = self.dispatch_http_call(upstream, headers, None, vec![], timeout)?;
        log::info!(
            "callout: dispatched {} to {upstream} (token {token})",
            self.config.path
        );
        self.pending.insert(token, upstream.to_owned());
        Ok(())
    }

    fn start_header(&mut self) -> Action {
        let config = Rc::clone(&self.config);
        if let Err(status) = self.dispatch(&config.upstream) {
            let error = format!("{status:?}");
            self.send_http_response(
                500,
                vec![("x-callout-error", &error)],
                Some(b"dispatch refused"),
            );
        }
        Action::Pause
    }

    fn start_fanout(&mut self) -> Action {
        let config = Rc::clone(&self.config);
        for upstream in &config.fanout {
            if self.dispatch(upstream).is_err() {
                self.answers.insert(upstream.clone(), "refused".to_owned());
            }
        }
        self.respond_if_complete();
        Action::Pause
    }

    fn finish_header(&mut self, num_headers: usize) {
        if num_headers == 0 {
            self.send_http_response(503, vec![("x-callout", "failed")], Some(b"callout failed"));
            return;
        }
        let header = |name| {
            self.get_http_call_response_header(name)
                .unwrap_or_else(|| "none".to_owned())
        };
        let seen = Seen {
            status: header(":status"),
            origin: header("x-origin"),
        };
        self.set_http_request_header("x-callout-status", Some(&seen.status));
        self.set_http_request_header("x-callout-origin", Some(&seen.origin));
        let trailers: Vec<String> = self
            .get_http_call_response_trailers()
            .into_iter()
            .map(|(name, value)| format!("{name}={value}"))
            .collect();
        if !trailers.is_empty() {
            self.set_http_request_header("x-callout-trailers", Some(&trailers.join(",")));
        }
        self.seen = Some(seen);
        self.resume_http_request();
    }

    fn finish_body(&mut self, num_headers: usize) {
        let status = match num_headers {
            0 => "failed".to_owned(),
            _ => self
                .get_http_call_response_header(":status")
                .unwrap_or_default(),
        };
        let mut body = self
            .get_http_request_body(0, self.body_size)
            .unwrap_or_default();
        body.extend_from_slice(format!(" [checked: {status}]").as_bytes());
        self.set_http_request_body(0, self.body_size, &body);
        self.resume_http_request();
    }

    fn finish_fanout(&mut self, upstream: String, num_headers: usize, body_size: usize) {
        let answer = if num_headers == 0 {
            "failed".to_owned()
        } else {
            let body = self
                .get_http_call_response_body(0, body_size)
                .unwrap_or_default();
            String::from_utf8_lossy(&body).into_owned()
        };
        self.answers.insert(upstream, answer);
        self.respond_if_complete();
    }

    /// Answers the request with the collected answers once no callout is pending.
    fn respond_if_complete(&self) {
        if !self.pending.is_empty() {
            return;
        }
        let body = serde_json::to_string(&self.answers).unwrap_or_default();
        self.send_http_response(
            200,
            vec![("content-type", "application/json")],
            Some(body.as_bytes()),
        );
    }
}

impl Context for Callout {
    fn on_http_call_response(
        &mut self,
        token_id: u32,
        num_headers: usize,
        body_size: usize,
        _num_trailers: usize,
    ) {
        let Some(upstream) = self.pending.remove(&token_id) else {
            log::warn!("callout: answer for unknown token {token_id}");
            return;
        };
        log::info!("callout: {upstream} answered (token {token_id}, {num_headers} headers)");
        match self.config.mode {
            Mode::Header => self.finish_header(num_headers),
            Mode::Body => self.finish_body(num_headers),
            Mode::Fanout => self.finish_fanout(upstream, num_headers, body_size),
        }
    }
}

impl HttpContext for Callout {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        match self.config.mode {
            Mode::Header => self.start_header(),
            Mode::Body => {
                self.set_http_request_header("content-length", None);
                Action::Continue
            }
            Mode::Fanout => self.start_fanout(),
        }
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if self.config.mode != Mode::Body || !end_of_stream {
            return match self.config.mode {
                Mode::Body => Action::Pause,
                _ => Action::Continue,
            };
        }
        self.body_size = body_size;
        self.start_header()
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        if let Some(seen) = &self.seen {
            self.set_http_response_header("x-callout-status", Some(&seen.status));
            self.set_http_response_header("x-callout-origin", Some(&seen.origin));
        }
        Action::Continue
    }
}
