//! `body_rewriter`: buffers a whole body and replaces every occurrence of a byte string.
//!
//! Config (JSON; each direction is optional, a missing direction is left untouched):
//!
//! ```json
//! {
//!   "request":  { "find": "hello", "replace": "howdy" },
//!   "response": { "find": "world", "replace": "there" }
//! }
//! ```
//!
//! No config (or `{}`) rewrites nothing. `find` must not be empty; unknown fields fail the
//! configuration. The match is on raw bytes, so bodies need not be UTF-8. With
//! `"keep_length": true` the filter forgets to remove `content-length` (a careless filter).
//!
//! For each configured direction:
//! - headers: removes `content-length` (the rewritten body may change size) unless
//!   `keep_length`, `Continue`;
//! - body: returns `Pause` until `end_of_stream`, so the host buffers the body; at the end
//!   it reads the whole buffered body (`proxy_get_buffer_bytes(0, body_size)`), replaces
//!   every non-overlapping occurrence left to right, writes it back over the whole buffer
//!   (`proxy_set_buffer_bytes(0, body_size, new)`) and returns `Continue`.
//!
//! Every body callback of a configured direction logs its size at info level:
//! `body_rewriter: request body 123 bytes, end_of_stream=false`.

use std::rc::Rc;

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};
use serde::Deserialize;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| Box::new(Root { config: Rc::default() }));
}}

#[derive(Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Config {
    request: Option<Replacement>,
    response: Option<Replacement>,
    keep_length: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Replacement {
    find: String,
    replace: String,
}

impl Replacement {
    fn apply(&self, body: &[u8]) -> Vec<u8> {
        let find = self.find.as_bytes();
        let mut rewritten = Vec::with_capacity(body.len());
        let mut rest = body;
        while let Some(at) = rest.windows(find.len()).position(|window| window == find) {
            rewritten.extend_from_slice(&rest[..at]);
            rewritten.extend_from_slice(self.replace.as_bytes());
            rest = &rest[at + find.len()..];
        }
        rewritten.extend_from_slice(rest);
        rewritten
    }
}

struct Root {
    config: Rc<Config>,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        let Some(config) =
            filter_config::parse::<Config>("body_rewriter", self.get_plugin_configuration())
        else {
            return false;
        };
        let directions = [&config.request, &config.response];
        if directions.into_iter().flatten().any(|r| r.find.is_empty()) {
            log::error!("body_rewriter: invalid configuration: `find` must not be empty");
            return false;
        }
        self.config = Rc::new(config);
        true
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(BodyRewriter {
            config: Rc::clone(&self.config),
        }))
    }
}

struct BodyRewriter {
    config: Rc<Config>,
}

impl Context for BodyRewriter {}

impl HttpContext for BodyRewriter {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        if self.config.request.is_some() && !self.config.keep_length {
            self.set_http_request_header("content-length", None);
        }
        Action::Continue
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        let Some(replacement) = &self.config.request else {
            return Action::Continue;
        };
        log::info!("body_rewriter: request body {body_size} bytes, end_of_stream={end_of_stream}");
        if !end_of_stream {
            return Action::Pause;
        }
        let body = self.get_http_request_body(0, body_size).unwrap_or_default();
        self.set_http_request_body(0, body_size, &replacement.apply(&body));
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        if self.config.response.is_some() && !self.config.keep_length {
            self.set_http_response_header("content-length", None);
        }
        Action::Continue
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        let Some(replacement) = &self.config.response else {
            return Action::Continue;
        };
        log::info!("body_rewriter: response body {body_size} bytes, end_of_stream={end_of_stream}");
        if !end_of_stream {
            return Action::Pause;
        }
        let body = self
            .get_http_response_body(0, body_size)
            .unwrap_or_default();
        self.set_http_response_body(0, body_size, &replacement.apply(&body));
        Action::Continue
    }
}
