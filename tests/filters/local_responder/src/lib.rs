//! `local_responder`: answers a request itself (`proxy_send_local_response`) in one phase.
//!
//! Config (JSON; `phase` and `status` are required):
//!
//! ```json
//! {
//!   "phase": "request_headers",
//!   "status": 418,
//!   "body": "short and stout",
//!   "headers": { "x-local": "1" },
//!   "grpc_status": "unauthenticated"
//! }
//! ```
//!
//! `phase` is one of `request_headers`, `request_body`, `response_headers`, `response_body`.
//! `body` is optional (no body when absent), `headers` defaults to none; unknown fields fail
//! the configuration.
//!
//! In the configured phase the filter calls `send_http_response(status, headers, body)` and
//! returns `Pause`; with `grpc_status` (`permission_denied` or `unauthenticated`) it calls
//! `send_grpc_response(grpc_status, body, headers)` instead (the SDK sends status 200 then). In the body phases it acts only once `end_of_stream` is true and returns
//! `Pause` before that, so the host buffers the body; a request or response without a body
//! never reaches a body phase, so it is not answered. Every other phase returns `Continue`.
//!
//! A request carrying `x-skip-local: 1` is never answered: every phase returns `Continue`.
//!
//! Note for the `response_*` phases: the request has already gone upstream, and in the
//! `response_body` phase the response headers have already been let through (`Continue`),
//! so whether the host can still replace the response there is up to the host.

use std::collections::BTreeMap;
use std::rc::Rc;

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, GrpcStatusCode, LogLevel};
use serde::Deserialize;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| Box::new(Root { config: None }));
}}

#[derive(Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Phase {
    RequestHeaders,
    RequestBody,
    ResponseHeaders,
    ResponseBody,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    phase: Phase,
    status: u32,
    #[serde(default)]
    body: Option<String>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    #[serde(default)]
    grpc_status: Option<GrpcStatus>,
}

#[derive(Clone, Copy, Deserialize)]
#[serde(rename_all = "snake_case")]
enum GrpcStatus {
    PermissionDenied,
    Unauthenticated,
}

struct Root {
    config: Option<Rc<Config>>,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        let Some(config) =
            filter_config::parse_required("local_responder", self.get_plugin_configuration())
        else {
            return false;
        };
        self.config = Some(Rc::new(config));
        true
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        // A plugin whose configuration failed never gets HTTP contexts.
        let config = Rc::clone(self.config.as_ref()?);
        Some(Box::new(Responder {
            config,
            skip: false,
        }))
    }
}

struct Responder {
    config: Rc<Config>,
    /// Set from the request's `x-skip-local: 1` header.
    skip: bool,
}

impl Responder {
    fn acts_in(&self, phase: Phase) -> bool {
        !self.skip && self.config.phase == phase
    }

    fn respond(&self) -> Action {
        let headers = self
            .config
            .headers
            .iter()
            .map(|(name, value)| (name.as_str(), value.as_str()))
            .collect();
        let body = self.config.body.as_deref().map(str::as_bytes);
        match self.config.grpc_status {
            None => self.send_http_response(self.config.status, headers, body),
            Some(status) => {
                let status = match status {
                    GrpcStatus::PermissionDenied => GrpcStatusCode::PermissionDenied,
                    GrpcStatus::Unauthenticated => GrpcStatusCode::Unauthenticated,
                };
                let metadata = headers
                    .into_iter()
                    .map(|(name, value): (&str, &str)| (name, value.as_bytes()))
                    .collect();
                self.send_grpc_response(status, self.config.body.as_deref(), metadata)
            }
        }
        Action::Pause
    }

    fn on_body(&self, phase: Phase, end_of_stream: bool) -> Action {
        match (self.acts_in(phase), end_of_stream) {
            (false, _) => Action::Continue,
            (true, false) => Action::Pause,
            (true, true) => self.respond(),
        }
    }

    fn on_headers(&self, phase: Phase) -> Action {
        if self.acts_in(phase) {
            self.respond()
        } else {
            Action::Continue
        }
    }
}

impl Context for Responder {}

impl HttpContext for Responder {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        self.skip = self.get_http_request_header("x-skip-local").as_deref() == Some("1");
        self.on_headers(Phase::RequestHeaders)
    }

    fn on_http_request_body(&mut self, _body_size: usize, end_of_stream: bool) -> Action {
        self.on_body(Phase::RequestBody, end_of_stream)
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        self.on_headers(Phase::ResponseHeaders)
    }

    fn on_http_response_body(&mut self, _body_size: usize, end_of_stream: bool) -> Action {
        self.on_body(Phase::ResponseBody, end_of_stream)
    }
}
