//! `body_inspector`: holds each request's headers until it has read the whole body, then
//! decides on them: the pattern of signature checks, body-based authorization and WAFs. It
//! needs the host to deliver body callbacks while the request headers are paused (Envoy does).
//!
//! Config (JSON; every field optional, no config at all is valid):
//!
//! ```json
//! { "deny": "attack", "rewrite_path": true }
//! ```
//!
//! Request headers: a request without a body (`end_of_stream`) goes on untouched; any other
//! is paused (`Pause`).
//!
//! Request body: returns `Pause` (buffer) until `end_of_stream`, counting the callbacks.
//! Then it reads the whole body (the size argument is cumulative while it buffers):
//! - if the body contains `deny` (when set), the filter answers `403` with header
//!   `x-denied-by: body_inspector` and body `denied by body_inspector\n`;
//! - otherwise it sets request headers `x-body-digest: <size>:<FNV-1a 64 of the body, 16 hex
//!   digits>` and `x-body-callbacks: <number of body callbacks>`, with `rewrite_path` appends
//!   `inspected=<size>` to the query of `:path`, and returns `Continue`, which lets the held
//!   headers go on with the body.
//!
//! Unknown fields fail the configuration.

use std::rc::Rc;

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};
use serde::Deserialize;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| Box::new(Root { config: Rc::default() }));
}}

#[derive(Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
struct Config {
    deny: Option<String>,
    rewrite_path: bool,
}

struct Root {
    config: Rc<Config>,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        match filter_config::parse::<Config>("body_inspector", self.get_plugin_configuration()) {
            Some(config) => {
                self.config = Rc::new(config);
                true
            }
            None => false,
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Inspector {
            config: self.config.clone(),
            callbacks: 0,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Inspector {
    config: Rc<Config>,
    callbacks: u32,
}

impl Context for Inspector {}

impl HttpContext for Inspector {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        if end_of_stream {
            Action::Continue
        } else {
            Action::Pause
        }
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        self.callbacks += 1;
        if !end_of_stream {
            return Action::Pause;
        }
        let body = self.get_http_request_body(0, body_size).unwrap_or_default();
        let denied = self
            .config
            .deny
            .as_deref()
            .is_some_and(|word| contains(&body, word.as_bytes()));
        if denied {
            self.send_http_response(
                403,
                vec![("x-denied-by", "body_inspector")],
                Some(b"denied by body_inspector\n"),
            );
            return Action::Pause;
        }
        let digest = format!("{}:{:016x}", body.len(), fnv1a(&body));
        self.set_http_request_header("x-body-digest", Some(&digest));
        self.set_http_request_header("x-body-callbacks", Some(&self.callbacks.to_string()));
        if self.config.rewrite_path {
            let path = self.get_http_request_header(":path").unwrap_or_default();
            let separator = if path.contains('?') { '&' } else { '?' };
            let path = format!("{path}{separator}inspected={}", body.len());
            self.set_http_request_header(":path", Some(&path));
        }
        Action::Continue
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

fn fnv1a(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3)
    })
}
