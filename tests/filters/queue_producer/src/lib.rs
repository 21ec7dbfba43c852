//! `queue_producer`: enqueues jobs on the shared queue `jobs` owned by `queue_consumer`,
//! and reports what the consumer has received so far.
//!
//! Config (JSON; optional, no config at all is valid; unknown fields fail the
//! configuration):
//!
//! ```json
//! { "queue_vm_id": "queues" }
//! ```
//!
//! `queue_vm_id` (default `queues`) is the vm_id the consumer runs under, which
//! `proxy_resolve_shared_queue` needs to find its queue.
//!
//! Request headers: resolves queue `jobs` of `queue_vm_id` (on every request, so a queue
//! registered later is found later); if it is found and the request has an `x-job` header,
//! enqueues that header's value. `Continue`.
//!
//! Response headers:
//! - `x-queue`: `enqueued`; `missing` if the queue could not be resolved; `no-job` if it was
//!   resolved but the request had no `x-job`; `failed: <status>` if the enqueue failed;
//! - `x-received`: shared-data key `queue.received` (the comma-separated items the consumer
//!   got, `none` before any). Shared data is per vm_id, so this filter must run under the
//!   consumer's vm_id to see it. The consumer gets its `on_queue_ready` after the enqueue,
//!   not necessarily before this response, so a job shows up in a later response.
//!
//! `Continue`.

use std::rc::Rc;

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};
use serde::Deserialize;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| Box::new(Root { config: Rc::default() }));
}}

const QUEUE: &str = "jobs";
const RECEIVED_KEY: &str = "queue.received";

#[derive(Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Config {
    queue_vm_id: String,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            queue_vm_id: "queues".to_owned(),
        }
    }
}

struct Root {
    config: Rc<Config>,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        let Some(config) = filter_config::parse("queue_producer", self.get_plugin_configuration())
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
        Some(Box::new(Producer {
            config: Rc::clone(&self.config),
            outcome: None,
        }))
    }
}

struct Producer {
    config: Rc<Config>,
    /// The `x-queue` value for this request, once its request headers were seen.
    outcome: Option<String>,
}

impl Producer {
    fn produce(&self) -> String {
        let Some(queue_id) = self.resolve_shared_queue(&self.config.queue_vm_id, QUEUE) else {
            return "missing".to_owned();
        };
        let Some(job) = self.get_http_request_header("x-job") else {
            return "no-job".to_owned();
        };
        match self.enqueue_shared_queue(queue_id, Some(job.as_bytes())) {
            Ok(()) => {
                log::info!("queue_producer: enqueued {job} on queue {queue_id}");
                "enqueued".to_owned()
            }
            Err(status) => format!("failed: {status:?}"),
        }
    }
}

impl Context for Producer {}

impl HttpContext for Producer {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        self.outcome = Some(self.produce());
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let received = shared_data::get_text(RECEIVED_KEY).unwrap_or_else(|| "none".to_owned());
        if let Some(outcome) = &self.outcome {
            self.set_http_response_header("x-queue", Some(outcome));
        }
        self.set_http_response_header("x-received", Some(&received));
        Action::Continue
    }
}
