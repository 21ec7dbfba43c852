//! `header_rewriter`: sets, removes and appends HTTP headers in both directions.
//!
//! Config (JSON; every part is optional, `{}` or no config at all is valid):
//!
//! ```json
//! {
//!   "name": "a",
//!   "request":  { "set": { "x-a": "1", ":path": "/new" }, "remove": ["x-b"] },
//!   "response": { "set": { "x-c": "2" },                  "remove": ["server"] },
//!   "late_request": { "x-late": "1" },
//!   "trailers": { "set": { "x-d": "3" }, "remove": ["x-internal"] }
//! }
//! ```
//!
//! `name` defaults to `header_rewriter`. Unknown fields fail the configuration.
//!
//! Request headers, in this order:
//! 1. every `request.set` entry replaces the header (`proxy_replace_header_map_value`);
//!    pseudo-headers such as `:path`, `:method` or `:authority` are set like any other header;
//! 2. every `request.remove` entry is removed;
//! 3. `x-chain: <name>` is appended (`proxy_add_header_map_value`), so a chain of rewriters
//!    leaves one `x-chain` value per filter, in filter order.
//!
//! Response headers: the same with `response.set` / `response.remove`, then appends
//! `x-chain: <name>`, sets every `late_request` entry as a *request* header (out of its phase:
//! Envoy accepts it, and the SDK traps on any other answer), and finally sets
//! - `x-seen-request-path` to the request's `:path` as read *during the response phase*
//!   (so it reflects any rewrite of `:path`); not set if the host has no `:path`;
//! - `x-seen-status` to the response's `:status`; not set if the host has no `:status`.
//!
//! Response trailers (only with `trailers`): first reads them all and keeps them as
//! `name=value` pairs joined with `,` in their order; then applies `trailers.set` /
//! `trailers.remove`, and finally sets trailer `x-seen-trailers` to what it read.
//!
//! Every callback returns `Continue`.

use std::collections::BTreeMap;
use std::rc::Rc;

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};
use serde::Deserialize;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| Box::new(Root { config: Rc::default() }));
}}

#[derive(Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Config {
    name: String,
    request: Edits,
    response: Edits,
    late_request: BTreeMap<String, String>,
    trailers: Option<Edits>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            name: "header_rewriter".to_owned(),
            request: Edits::default(),
            response: Edits::default(),
            late_request: BTreeMap::new(),
            trailers: None,
        }
    }
}

#[derive(Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Edits {
    set: BTreeMap<String, String>,
    remove: Vec<String>,
}

struct Root {
    config: Rc<Config>,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        let Some(config) = filter_config::parse("header_rewriter", self.get_plugin_configuration())
        else {
            return false;
        };
        self.config = Rc::new(config);
        true
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Rewriter {
            config: Rc::clone(&self.config),
        }))
    }
}

struct Rewriter {
    config: Rc<Config>,
}

impl Context for Rewriter {}

impl HttpContext for Rewriter {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let edits = &self.config.request;
        for (name, value) in &edits.set {
            self.set_http_request_header(name, Some(value));
        }
        for name in &edits.remove {
            self.remove_http_request_header(name);
        }
        self.add_http_request_header("x-chain", &self.config.name);
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let edits = &self.config.response;
        for (name, value) in &edits.set {
            self.set_http_response_header(name, Some(value));
        }
        for name in &edits.remove {
            self.remove_http_response_header(name);
        }
        self.add_http_response_header("x-chain", &self.config.name);
        for (name, value) in &self.config.late_request {
            self.set_http_request_header(name, Some(value));
        }
        if let Some(path) = self.get_http_request_header(":path") {
            self.set_http_response_header("x-seen-request-path", Some(&path));
        }
        if let Some(status) = self.get_http_response_header(":status") {
            self.set_http_response_header("x-seen-status", Some(&status));
        }
        Action::Continue
    }

    fn on_http_response_trailers(&mut self, _num_trailers: usize) -> Action {
        let Some(edits) = &self.config.trailers else {
            return Action::Continue;
        };
        let seen: Vec<String> = self
            .get_http_response_trailers()
            .into_iter()
            .map(|(name, value)| format!("{name}={value}"))
            .collect();
        for (name, value) in &edits.set {
            self.set_http_response_trailer(name, Some(value));
        }
        for name in &edits.remove {
            self.set_http_response_trailer(name, None);
        }
        self.set_http_response_trailer("x-seen-trailers", Some(&seen.join(",")));
        Action::Continue
    }
}
