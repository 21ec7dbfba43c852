//! `queue_consumer`: owns shared queue `jobs` and records every item enqueued on it.
//!
//! No config (any configuration is ignored). Give the plugin an explicit vm_id (the tests
//! use `queues`): producers resolve the queue by that vm_id.
//!
//! `on_configure` registers shared queue `jobs` (`proxy_register_shared_queue`), which binds
//! it to this root context. Each `on_queue_ready` dequeues every item waiting and appends
//! them, in order, to shared-data key `queue.received` (comma-separated; decoded as UTF-8,
//! lossily), with a CAS loop. Shared data is per vm_id, so whoever reads `queue.received`
//! (e.g. `queue_producer`) must run under the same vm_id.
//!
//! HTTP contexts do nothing (every callback `Continue`).

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{ContextType, LogLevel};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| Box::new(Root));
}}

const QUEUE: &str = "jobs";
const RECEIVED_KEY: &str = "queue.received";

struct Root;

impl Root {
    /// Every item waiting on the queue, oldest first.
    fn drain(&self, queue_id: u32) -> Vec<String> {
        let mut items = Vec::new();
        loop {
            match self.dequeue_shared_queue(queue_id) {
                Ok(Some(item)) => items.push(String::from_utf8_lossy(&item).into_owned()),
                Ok(None) => return items,
                Err(status) => {
                    log::warn!("queue_consumer: dequeue from queue {queue_id} failed: {status:?}");
                    return items;
                }
            }
        }
    }
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        let queue_id = self.register_shared_queue(QUEUE);
        log::info!("queue_consumer: registered queue {QUEUE} as {queue_id}");
        true
    }

    fn on_queue_ready(&mut self, queue_id: u32) {
        let items = self.drain(queue_id);
        if items.is_empty() {
            return;
        }
        log::info!("queue_consumer: received {}", items.join(","));
        let appended = shared_data::update(RECEIVED_KEY, |current| {
            let mut parts: Vec<&[u8]> = current.into_iter().collect();
            parts.extend(items.iter().map(String::as_bytes));
            parts.join(&b","[..])
        });
        if let Err(status) = appended {
            log::warn!("queue_consumer: recording the items failed: {status:?}");
        }
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Idle))
    }
}

struct Idle;

impl Context for Idle {}

impl HttpContext for Idle {}
