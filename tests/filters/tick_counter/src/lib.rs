//! `tick_counter`: counts timer ticks in shared data.
//!
//! Config (JSON; optional, no config at all is valid; unknown fields fail the
//! configuration):
//!
//! ```json
//! { "tick_ms": 20, "done_after_ticks": 3 }
//! ```
//!
//! `on_configure` sets the root context's tick period to `tick_ms` (default 20). Each
//! `on_tick` adds 1 to shared-data key `tick_counter.ticks` (decimal text) with a CAS loop:
//! read the value and its CAS, write the new value with that CAS, start again on
//! `CasMismatch`. Shared data is per vm_id, so every instance (every worker) with the same
//! vm_id ticks the same counter.
//!
//! Response headers: `x-ticks: <tick_counter.ticks>` (`0` before the first tick).
//! `Continue`.
//!
//! With `done_after_ticks` (default 0: done at once), the root context's `on_done` answers
//! false and logs `tick_counter: on_done, not done yet`; its ticks then count down, and the
//! last one logs `tick_counter: proxy_done after <n> ticks` and calls `proxy_done`. Dropping
//! the root context (its `on_delete`) logs `tick_counter: root deleted`.

use std::time::Duration;

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};
use serde::Deserialize;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| Box::<Root>::default());
}}

const TICKS_KEY: &str = "tick_counter.ticks";

#[derive(Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Config {
    tick_ms: u64,
    done_after_ticks: u32,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            tick_ms: 20,
            done_after_ticks: 0,
        }
    }
}

#[derive(Default)]
struct Root {
    done_after_ticks: u32,
    /// Ticks since `on_done` answered false, while it waits.
    ending: Option<u32>,
}

impl Context for Root {
    fn on_done(&mut self) -> bool {
        if self.done_after_ticks == 0 {
            return true;
        }
        log::info!("tick_counter: on_done, not done yet");
        self.ending = Some(0);
        false
    }
}

impl Drop for Root {
    fn drop(&mut self) {
        log::info!("tick_counter: root deleted");
    }
}

impl RootContext for Root {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        let Some(config) =
            filter_config::parse::<Config>("tick_counter", self.get_plugin_configuration())
        else {
            return false;
        };
        self.set_tick_period(Duration::from_millis(config.tick_ms));
        self.done_after_ticks = config.done_after_ticks;
        true
    }

    fn on_tick(&mut self) {
        if let Some(ticks) = self.ending.as_mut() {
            *ticks += 1;
            if *ticks == self.done_after_ticks {
                log::info!("tick_counter: proxy_done after {ticks} ticks");
                self.done();
            }
            return;
        }
        if let Err(status) = shared_data::increment(TICKS_KEY) {
            log::warn!("tick_counter: counting the tick failed: {status:?}");
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
        let ticks = shared_data::get_text(TICKS_KEY).unwrap_or_else(|| "0".to_owned());
        self.set_http_response_header("x-ticks", Some(&ticks));
        Action::Continue
    }
}
