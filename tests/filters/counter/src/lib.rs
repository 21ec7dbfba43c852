//! `counter`: counts requests in guest memory and reports the count in a response header.
//!
//! No config (any configuration is ignored).
//!
//! The count lives in the root context (one per plugin per VM instance). Request headers:
//! increments it, remembers the new value for this request and logs `counter: request <n>`
//! at info level. Response headers: sets `x-count: <value remembered for this request>`
//! (`0` if the request headers were never seen). Both return `Continue`.
//!
//! So an instance reused across requests answers 1, 2, 3, … while a fresh instance per
//! request always answers 1.
//!
//! The root context's `on_done` logs `counter: root done after <n> requests` at info level
//! (the host calls it when the filter goes away: at shutdown, or when a reload retires it).

use std::cell::Cell;
use std::rc::Rc;

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| Box::new(Root { requests: Rc::default() }));
}}

struct Root {
    requests: Rc<Cell<u64>>,
}

impl Context for Root {
    fn on_done(&mut self) -> bool {
        log::info!("counter: root done after {} requests", self.requests.get());
        true
    }
}

impl RootContext for Root {
    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Counter {
            requests: Rc::clone(&self.requests),
            count: 0,
        }))
    }
}

struct Counter {
    requests: Rc<Cell<u64>>,
    /// This request's position in the count.
    count: u64,
}

impl Context for Counter {}

impl HttpContext for Counter {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        self.count = self.requests.get() + 1;
        self.requests.set(self.count);
        log::info!("counter: request {}", self.count);
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        self.set_http_response_header("x-count", Some(&self.count.to_string()));
        Action::Continue
    }
}
