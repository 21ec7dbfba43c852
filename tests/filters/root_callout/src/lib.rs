//! `root_callout`: makes HTTP callouts from the root context, on a timer, and publishes
//! what they answered in shared data.
//!
//! Config (JSON, required; unknown fields fail the configuration):
//!
//! ```json
//! { "upstream": "origin", "path": "/status/200", "tick_ms": 50 }
//! ```
//!
//! `upstream` is required (non-empty); `path` defaults to `/`, `tick_ms` to 50.
//!
//! `on_configure` sets the root context's tick period to `tick_ms`. Each `on_tick` with no
//! callout in flight dispatches `GET <path>` to `upstream` from the root context (headers
//! `:method: GET`, `:path`, `:authority: <upstream>`, `x-from-filter: root_callout`;
//! timeout 5 s). A failed dispatch is logged and tried again on the next tick.
//!
//! Each answer, in the root context's `on_http_call_response`, stores in shared data
//! - `root_callout.last_status`: the answer's `:status`, or `failed` for a failed callout
//!   (no headers);
//! - `root_callout.count`: the number of answers so far, failed ones included (decimal
//!   text, incremented with a CAS loop).
//!
//! Shared data is per vm_id, so every instance (every worker) with the same vm_id adds to
//! the same count.
//!
//! Response headers (HTTP contexts): `x-root-callout-count` (the count, `0` before any
//! answer) and `x-root-callout-status` (the last status, `none` before any answer).
//! `Continue`.

use std::time::Duration;

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};
use serde::Deserialize;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| {
        Box::new(Root {
            config: Config::default(),
            in_flight: None,
        })
    });
}}

const COUNT_KEY: &str = "root_callout.count";
const STATUS_KEY: &str = "root_callout.last_status";
const TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Config {
    upstream: String,
    path: String,
    tick_ms: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            upstream: String::new(),
            path: "/".to_owned(),
            tick_ms: 50,
        }
    }
}

struct Root {
    config: Config,
    /// The token of the callout not answered yet.
    in_flight: Option<u32>,
}

impl Context for Root {
    fn on_http_call_response(
        &mut self,
        token_id: u32,
        num_headers: usize,
        _body_size: usize,
        _num_trailers: usize,
    ) {
        if self.in_flight == Some(token_id) {
            self.in_flight = None;
        }
        let status = if num_headers == 0 {
            "failed".to_owned()
        } else {
            self.get_http_call_response_header(":status")
                .unwrap_or_else(|| "none".to_owned())
        };
        if let Err(err) = self.set_shared_data(STATUS_KEY, Some(status.as_bytes()), None) {
            log::warn!("root_callout: storing the status failed: {err:?}");
        }
        match shared_data::increment(COUNT_KEY) {
            Ok(count) => log::info!("root_callout: answer {count}: {status}"),
            Err(err) => log::warn!("root_callout: counting the answer failed: {err:?}"),
        }
    }
}

impl RootContext for Root {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        let Some(config) = filter_config::parse_required::<Config>(
            "root_callout",
            self.get_plugin_configuration(),
        ) else {
            return false;
        };
        if config.upstream.is_empty() {
            log::error!("root_callout: invalid configuration: `upstream` is required");
            return false;
        }
        self.set_tick_period(Duration::from_millis(config.tick_ms));
        self.config = config;
        true
    }

    fn on_tick(&mut self) {
        if self.in_flight.is_some() {
            return;
        }
        let upstream = self.config.upstream.as_str();
        let headers = vec![
            (":method", "GET"),
            (":path", self.config.path.as_str()),
            (":authority", upstream),
            ("x-from-filter", "root_callout"),
        ];
        match self.dispatch_http_call(upstream, headers, None, vec![], TIMEOUT) {
            Ok(token) => self.in_flight = Some(token),
            Err(status) => log::warn!("root_callout: dispatch to {upstream} failed: {status:?}"),
        }
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Reporter))
    }
}

struct Reporter;

impl Context for Reporter {}

impl HttpContext for Reporter {
    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let count = shared_data::get_text(COUNT_KEY).unwrap_or_else(|| "0".to_owned());
        let status = shared_data::get_text(STATUS_KEY).unwrap_or_else(|| "none".to_owned());
        self.set_http_response_header("x-root-callout-count", Some(&count));
        self.set_http_response_header("x-root-callout-status", Some(&status));
        Action::Continue
    }
}
