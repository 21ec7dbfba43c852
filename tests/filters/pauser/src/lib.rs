//! `pauser`: pauses every request at its headers and resumes it later from a timer tick.
//!
//! Config (JSON; both fields optional, no config at all is valid):
//!
//! ```json
//! { "tick_ms": 20, "resume": true }
//! ```
//!
//! `tick_ms` (default 20) is the root context's tick period, set in `on_configure` with
//! `proxy_set_tick_period_milliseconds`. `resume` (default true) says whether ticks resume
//! paused requests; with `false` a paused request stays paused until the host gives up on it
//! (e.g. a route timeout). Unknown fields fail the configuration.
//!
//! Request headers: appends request header `x-paused: 1`, records the HTTP context id in a
//! list shared with the root context, and returns `Pause`.
//!
//! Root `on_tick` (only with `resume: true`): takes every recorded id out of the list and, for
//! each, calls `proxy_set_effective_context(id)` then `proxy_continue_stream(request)`
//! (`resume_http_request`). An id the host no longer knows (`set_effective_context` fails)
//! is skipped.
//!
//! `on_done` of an HTTP context removes its id from the list, so a request that ended while
//! paused (timed out, client gone) is never resumed afterwards.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};
use serde::Deserialize;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| {
        Box::new(Root {
            config: Config::default(),
            paused: Rc::default(),
        })
    });
}}

#[derive(Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Config {
    tick_ms: u64,
    resume: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            tick_ms: 20,
            resume: true,
        }
    }
}

/// Ids of the HTTP contexts paused at their request headers and not resumed yet.
type PausedIds = Rc<RefCell<Vec<u32>>>;

struct Root {
    config: Config,
    paused: PausedIds,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        let Some(config) =
            filter_config::parse::<Config>("pauser", self.get_plugin_configuration())
        else {
            return false;
        };
        self.set_tick_period(Duration::from_millis(config.tick_ms));
        self.config = config;
        true
    }

    fn on_tick(&mut self) {
        if !self.config.resume {
            return;
        }
        // Take the ids out first: no borrow is held while the host runs the resumed requests.
        let ids = std::mem::take(&mut *self.paused.borrow_mut());
        for id in ids {
            if hostcalls::set_effective_context(id).is_err() {
                log::warn!("pauser: context {id} is gone, not resuming it");
                continue;
            }
            log::info!("pauser: resuming context {id}");
            if let Err(status) = hostcalls::resume_http_request() {
                log::warn!("pauser: resuming context {id} failed: {status:?}");
            }
        }
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Pauser {
            context_id,
            paused: Rc::clone(&self.paused),
        }))
    }
}

struct Pauser {
    context_id: u32,
    paused: PausedIds,
}

impl Context for Pauser {
    fn on_done(&mut self) -> bool {
        self.paused.borrow_mut().retain(|&id| id != self.context_id);
        true
    }
}

impl HttpContext for Pauser {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        self.add_http_request_header("x-paused", "1");
        self.paused.borrow_mut().push(self.context_id);
        log::info!("pauser: pausing context {}", self.context_id);
        Action::Pause
    }
}
