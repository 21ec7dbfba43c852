//! `properties`: reads host properties into response headers, and round-trips one of its own.
//!
//! Config (JSON; `paths` defaults to none; unknown fields fail the configuration): each path
//! is a list of segments, exactly as passed to `proxy_get_property` (segments joined by NUL).
//!
//! ```json
//! { "paths": [["request", "path"], ["source", "port"], ["plugin_name"],
//!             ["request", "headers", "x-foo"]] }
//! ```
//!
//! Request headers: `set_property(["my.prop"], "v1")` — a single segment named `my.prop`,
//! which is how Envoy stores a plugin-set property (filter state key `wasm.my.prop`) and
//! reads it back — and `set_property(["request", "path"], "/overwritten")`, a built-in path,
//! which Envoy accepts (the SDK traps on any other answer) without changing what
//! `request.path` reads; `Continue`.
//!
//! Response headers: for every configured path, sets response header
//! `x-prop-<segments joined by '.'>` (e.g. `x-prop-request.path`, `x-prop-source.port`) to
//! the property's value, rendered as
//! - a decimal integer for the 8-byte little-endian integer properties: `request.size`,
//!   `request.total_size`, `request.time` and `request.duration` (nanoseconds),
//!   `response.code`, `response.size`, `response.total_size`, `source.port`,
//!   `destination.port`, `upstream.port`, `upstream.request_attempt_count`,
//!   `response.grpc_status`, `response.flags`, `listener_direction` (signed) and
//!   `connection.id` (unsigned);
//! - `true` / `false` for the 1-byte boolean `connection.mtls`;
//! - otherwise the text itself if it is UTF-8 without control characters;
//! - otherwise (or when a number/bool has the wrong length) `hex:` and the bytes in hex;
//! - `missing` when the host answers NotFound.
//!
//! It then reads `my.prop` back into `x-prop-my.prop` (so `v1` when the host keeps
//! properties set by the filter for the life of the request). `Continue`.
//!
//! `on_log` reads `response.code`, `request.path`, `response.grpc_status`,
//! `response.code_details` and `response.flags` and logs, at warn level,
//! `on_log status=<code> path=<path> grpc_status=<status> details=<details> flags=<flags>`
//! (`missing` for any the host does not have).

use std::fmt::Write as _;
use std::rc::Rc;

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};
use serde::Deserialize;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| Box::new(Root { config: Rc::default() }));
}}

/// The property this filter sets on every request and reads back.
const OWN_PROPERTY: &str = "my.prop";
const OWN_PROPERTY_VALUE: &[u8] = b"v1";

const SIGNED_PROPERTIES: &[&str] = &[
    "request.size",
    "request.total_size",
    "request.time",
    "request.duration",
    "response.code",
    "response.size",
    "response.total_size",
    "source.port",
    "destination.port",
    "upstream.port",
    "upstream.request_attempt_count",
    "response.grpc_status",
    "response.flags",
    "listener_direction",
];
const UNSIGNED_PROPERTIES: &[&str] = &["connection.id"];
const BOOL_PROPERTIES: &[&str] = &["connection.mtls"];

#[derive(Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Config {
    paths: Vec<Vec<String>>,
}

struct Root {
    config: Rc<Config>,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        let Some(config) = filter_config::parse("properties", self.get_plugin_configuration())
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
        Some(Box::new(Properties {
            config: Rc::clone(&self.config),
        }))
    }
}

struct Properties {
    config: Rc<Config>,
}

impl Properties {
    /// The property at `path`, rendered for a header value (see the crate docs).
    fn read(&self, path: &[&str]) -> String {
        match self.get_property(path.to_vec()) {
            Some(value) => render(&path.join("."), &value),
            None => "missing".to_owned(),
        }
    }

    fn copy_to_response_header(&self, path: &[&str]) {
        let header = format!("x-prop-{}", path.join("."));
        self.set_http_response_header(&header, Some(&self.read(path)));
    }
}

impl Context for Properties {}

impl HttpContext for Properties {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        self.set_property(vec![OWN_PROPERTY], Some(OWN_PROPERTY_VALUE));
        self.set_property(vec!["request", "path"], Some(b"/overwritten"));
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        for path in &self.config.paths {
            let segments: Vec<&str> = path.iter().map(String::as_str).collect();
            self.copy_to_response_header(&segments);
        }
        self.copy_to_response_header(&[OWN_PROPERTY]);
        Action::Continue
    }

    fn on_log(&mut self) {
        let code = self.read(&["response", "code"]);
        let path = self.read(&["request", "path"]);
        let grpc_status = self.read(&["response", "grpc_status"]);
        let details = self.read(&["response", "code_details"]);
        let flags = self.read(&["response", "flags"]);
        log::warn!(
            "on_log status={code} path={path} grpc_status={grpc_status} details={details} flags={flags}"
        );
    }
}

fn render(dotted_path: &str, value: &[u8]) -> String {
    let decoded = if SIGNED_PROPERTIES.contains(&dotted_path) {
        <[u8; 8]>::try_from(value)
            .ok()
            .map(|bytes| i64::from_le_bytes(bytes).to_string())
    } else if UNSIGNED_PROPERTIES.contains(&dotted_path) {
        <[u8; 8]>::try_from(value)
            .ok()
            .map(|bytes| u64::from_le_bytes(bytes).to_string())
    } else if BOOL_PROPERTIES.contains(&dotted_path) {
        match value {
            [0] => Some("false".to_owned()),
            [1] => Some("true".to_owned()),
            _ => None,
        }
    } else {
        std::str::from_utf8(value)
            .ok()
            .filter(|text| !text.chars().any(char::is_control))
            .map(str::to_owned)
    };
    decoded.unwrap_or_else(|| {
        value.iter().fold("hex:".to_owned(), |mut hex, byte| {
            let _ = write!(hex, "{byte:02x}");
            hex
        })
    })
}
