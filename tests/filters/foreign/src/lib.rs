//! `foreign`: calls Envoy's foreign functions the way Envoy filters do, and reports what
//! the host answered.
//!
//! Config (JSON; every field optional, unknown fields fail the configuration):
//!
//! ```json
//! { "path": "/new/x", "clear_route_cache": true }
//! ```
//!
//! `on_configure` declares the read-only property `tenant` with
//! `call_foreign_function("declare_property", DeclarePropertyArguments{name: "tenant",
//! readonly: true, type: STRING})`, protobuf-encoded as Envoy expects, and fails the
//! configuration if the host refuses it.
//!
//! Request headers:
//! - `proxy_set_property(["tenant"], "a")`, then `(["tenant"], "b")`, remembering the
//!   second answer (`Ok`, or the status, e.g. `BadArgument`) and what `tenant` reads after;
//! - `call_foreign_function("expr_create", ...)`, remembering the answer (`NotFound` from a
//!   host without it);
//! - with `path`: sets `:path` to it, and with `clear_route_cache` then calls
//!   `call_foreign_function("clear_route_cache", None)`, remembering the answer.
//!
//! `Continue`. Response headers: `x-second-set`, `x-tenant`, `x-expr-create` and (when
//! called) `x-clear-route-cache` with what was remembered. `Continue`.

use std::ptr::null_mut;
use std::rc::Rc;

use proxy_wasm::hostcalls;
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
    path: Option<String>,
    clear_route_cache: bool,
}

struct Root {
    config: Rc<Config>,
}

impl Context for Root {}

/// `DeclarePropertyArguments { name = 1, readonly = 2, type = 3 }` for a short name.
fn declaration(name: &str, readonly: bool) -> Vec<u8> {
    let mut args = vec![0x0a, name.len() as u8];
    args.extend_from_slice(name.as_bytes());
    args.extend_from_slice(&[0x10, u8::from(readonly), 0x18, 1]);
    args
}

// The SDK hides the statuses this filter reports (its `set_property` panics on any but OK,
// its `call_foreign_function` reads NOT_FOUND as "no result"), so it makes these two calls
// itself.
#[allow(clashing_extern_declarations)]
#[link(wasm_import_module = "env")]
extern "C" {
    fn proxy_set_property(path: *const u8, path_size: usize, value: *const u8, size: usize) -> u32;
    fn proxy_call_foreign_function(
        name: *const u8,
        name_size: usize,
        arguments: *const u8,
        arguments_size: usize,
        results: *mut *mut u8,
        results_size: *mut usize,
    ) -> u32;
}

/// A status code as the spec names it.
fn status_name(code: u32) -> String {
    match code {
        0 => "Ok".to_owned(),
        1 => "NotFound".to_owned(),
        2 => "BadArgument".to_owned(),
        other => format!("status {other}"),
    }
}

/// `proxy_set_property` of a one-segment path; the status the host answered.
fn set_property(name: &str, value: &[u8]) -> String {
    // SAFETY: both pointers and lengths describe live slices for the whole call; the host
    // only reads them.
    let code =
        unsafe { proxy_set_property(name.as_ptr(), name.len(), value.as_ptr(), value.len()) };
    status_name(code)
}

/// `proxy_call_foreign_function`; the status the host answered.
fn call_foreign_function(name: &str, arguments: &[u8]) -> String {
    let mut results: *mut u8 = null_mut();
    let mut results_size: usize = 0;
    // SAFETY: the name and arguments are live slices for the call; the host writes the
    // result pointer and size into the two locals. A result (none is expected from these
    // functions) is leaked, which a test filter can afford.
    let code = unsafe {
        proxy_call_foreign_function(
            name.as_ptr(),
            name.len(),
            arguments.as_ptr(),
            arguments.len(),
            &mut results,
            &mut results_size,
        )
    };
    status_name(code)
}

impl RootContext for Root {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        let Some(config) =
            filter_config::parse::<Config>("foreign", self.get_plugin_configuration())
        else {
            return false;
        };
        self.config = Rc::new(config);
        let declared = hostcalls::call_foreign_function(
            "declare_property",
            Some(&declaration("tenant", true)),
        );
        if let Err(status) = declared {
            log::error!("foreign: declare_property failed: {status:?}");
            return false;
        }
        true
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Foreign {
            config: self.config.clone(),
            seen: Vec::new(),
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Foreign {
    config: Rc<Config>,
    /// Response headers to set: what the host answered in the request phase.
    seen: Vec<(&'static str, String)>,
}

impl Context for Foreign {}

impl HttpContext for Foreign {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let first = set_property("tenant", b"a");
        if first != "Ok" {
            log::error!("foreign: the first set of `tenant` failed: {first}");
        }
        self.seen
            .push(("x-second-set", set_property("tenant", b"b")));
        let tenant = self.get_property(vec!["tenant"]).unwrap_or_default();
        self.seen
            .push(("x-tenant", String::from_utf8_lossy(&tenant).into_owned()));
        let expr = call_foreign_function("expr_create", b"request.path");
        self.seen.push(("x-expr-create", expr));
        if let Some(path) = &self.config.path {
            self.set_http_request_header(":path", Some(path));
            if self.config.clear_route_cache {
                let cleared = call_foreign_function("clear_route_cache", b"");
                self.seen.push(("x-clear-route-cache", cleared));
            }
        }
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        for (name, value) in &self.seen {
            self.set_http_response_header(name, Some(value));
        }
        Action::Continue
    }
}
