//! `pauser`: pauses every request at its request or response headers and resumes it later
//! from a timer tick.
//!
//! Config (JSON; every field optional, no config at all is valid):
//!
//! ```json
//! { "tick_ms": 20, "resume": true, "resume_after_ticks": 1, "phase": "request_headers" }
//! ```
//!
//! `tick_ms` (default 20) is the root context's tick period, set in `on_configure` with
//! `proxy_set_tick_period_milliseconds`. `resume` (default true) says whether ticks resume
//! paused requests; with `false` a paused request stays paused until the host gives up on it
//! (e.g. a route timeout). `resume_after_ticks` (default 1, at least 1) is how many ticks a
//! paused request waits: the tick that makes it that many resumes it. `phase` (default
//! `request_headers`) is where requests pause: `request_headers` or `response_headers`.
//! Unknown fields fail the configuration.
//!
//! Request headers: remembers `:path`; with `phase: request_headers` appends request header
//! `x-paused: 1`, records the HTTP context in a list shared with the root context, and returns
//! `Pause`. Otherwise `Continue`.
//!
//! Response headers: with `phase: response_headers`, records the HTTP context the same way
//! and returns `Pause`. With `phase: request_headers`, sets `x-resumed-after-ticks` to the
//! number of ticks the request waited before `on_tick` resumed it (`none` if it was never
//! resumed by a tick, i.e. the host did not wait) and returns `Continue`.
//!
//! Root `on_tick` (only with `resume: true`): counts one more tick for every recorded
//! context; each one that has waited `resume_after_ticks` ticks is taken out of the list and
//! resumed: `proxy_set_effective_context(id)`, then the log line
//! `pauser: resuming <path> at its <phase> after <n> ticks at <unix time in ns> ns` (info
//! level; the time is `proxy_get_current_time_nanoseconds`, read just before resuming), then
//! `proxy_continue_stream` of the request (`resume_http_request`) or of the response
//! (`resume_http_response`). An id the host no longer knows (`set_effective_context` fails)
//! is skipped.
//!
//! `on_done` of an HTTP context removes it from the list, so a request that ended while
//! paused (timed out, client gone) is never resumed afterwards.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::{Duration, UNIX_EPOCH};

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};
use serde::Deserialize;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| {
        Box::new(Root {
            config: Rc::new(Config::default()),
            shared: Rc::default(),
        })
    });
}}

#[derive(Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Config {
    tick_ms: u64,
    resume: bool,
    resume_after_ticks: u32,
    phase: Phase,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            tick_ms: 20,
            resume: true,
            resume_after_ticks: 1,
            phase: Phase::RequestHeaders,
        }
    }
}

#[derive(Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
enum Phase {
    RequestHeaders,
    ResponseHeaders,
}

impl Phase {
    fn name(self) -> &'static str {
        match self {
            Phase::RequestHeaders => "request headers",
            Phase::ResponseHeaders => "response headers",
        }
    }
}

/// A paused HTTP context, not resumed yet.
struct Paused {
    context_id: u32,
    path: String,
    ticks: u32,
}

/// What the root context and the HTTP contexts share.
#[derive(Default)]
struct Shared {
    paused: RefCell<Vec<Paused>>,
    /// Contexts resumed by a tick, with the number of ticks each waited.
    resumed: RefCell<HashMap<u32, u32>>,
}

struct Root {
    config: Rc<Config>,
    shared: Rc<Shared>,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        let Some(config) =
            filter_config::parse::<Config>("pauser", self.get_plugin_configuration())
        else {
            return false;
        };
        if config.resume_after_ticks == 0 {
            log::error!("pauser: invalid configuration: resume_after_ticks must be at least 1");
            return false;
        }
        self.set_tick_period(Duration::from_millis(config.tick_ms));
        self.config = Rc::new(config);
        true
    }

    fn on_tick(&mut self) {
        if !self.config.resume {
            return;
        }
        // Take the due contexts out first: no borrow is held while the host runs the resumed
        // requests.
        let due: Vec<Paused> = {
            let mut paused = self.shared.paused.borrow_mut();
            for context in paused.iter_mut() {
                context.ticks += 1;
            }
            let after = self.config.resume_after_ticks;
            let (due, waiting) = std::mem::take(&mut *paused)
                .into_iter()
                .partition(|context| context.ticks >= after);
            *paused = waiting;
            due
        };
        let phase = self.config.phase;
        for context in due {
            let id = context.context_id;
            if hostcalls::set_effective_context(id).is_err() {
                log::warn!("pauser: context {id} is gone, not resuming it");
                continue;
            }
            self.shared.resumed.borrow_mut().insert(id, context.ticks);
            let now = self
                .get_current_time()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_nanos();
            log::info!(
                "pauser: resuming {} at its {} after {} ticks at {now} ns",
                context.path,
                phase.name(),
                context.ticks
            );
            let resumed = match phase {
                Phase::RequestHeaders => hostcalls::resume_http_request(),
                Phase::ResponseHeaders => hostcalls::resume_http_response(),
            };
            if let Err(status) = resumed {
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
            path: String::new(),
            config: Rc::clone(&self.config),
            shared: Rc::clone(&self.shared),
        }))
    }
}

struct Pauser {
    context_id: u32,
    path: String,
    config: Rc<Config>,
    shared: Rc<Shared>,
}

impl Pauser {
    fn pause(&self) -> Action {
        self.shared.paused.borrow_mut().push(Paused {
            context_id: self.context_id,
            path: self.path.clone(),
            ticks: 0,
        });
        log::info!(
            "pauser: pausing context {} at its {}",
            self.context_id,
            self.config.phase.name()
        );
        Action::Pause
    }
}

impl Context for Pauser {
    fn on_done(&mut self) -> bool {
        let id = self.context_id;
        self.shared
            .paused
            .borrow_mut()
            .retain(|context| context.context_id != id);
        self.shared.resumed.borrow_mut().remove(&id);
        true
    }
}

impl HttpContext for Pauser {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        self.path = self.get_http_request_header(":path").unwrap_or_default();
        if self.config.phase != Phase::RequestHeaders {
            return Action::Continue;
        }
        self.add_http_request_header("x-paused", "1");
        self.pause()
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        if self.config.phase == Phase::ResponseHeaders {
            return self.pause();
        }
        let waited = self.shared.resumed.borrow().get(&self.context_id).copied();
        let waited = waited.map_or_else(|| "none".to_owned(), |ticks| ticks.to_string());
        self.set_http_response_header("x-resumed-after-ticks", Some(&waited));
        Action::Continue
    }
}
