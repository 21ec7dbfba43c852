//! `survivor`: stores a value in shared data, crashes on demand, and reads the value back,
//! to show that shared data outlives a trapped instance.
//!
//! No config (any configuration is ignored). Request headers look at `:path`:
//!
//! - `/store?v=X`: sets shared-data key `survivor.value` to `X` (the raw text of the first
//!   `v` parameter, not percent-decoded; empty if there is none);
//! - `/crash`: panics ("survivor filter crashes on purpose"), which traps the instance
//!   (`panic = "abort"`);
//! - `/read`: reads `survivor.value`, and response headers set `x-survivor: <value>`
//!   (`none` if the key is not set);
//! - anything else: nothing.
//!
//! Every callback that returns returns `Continue`.

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| Box::new(Root));
}}

const KEY: &str = "survivor.value";

struct Root;

impl Context for Root {}

impl RootContext for Root {
    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Survivor { read: None }))
    }
}

struct Survivor {
    /// `/read`: the value read, for the response headers.
    read: Option<String>,
}

impl Context for Survivor {}

impl HttpContext for Survivor {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let path = self.get_http_request_header(":path").unwrap_or_default();
        let (path, query) = path.split_once('?').unwrap_or((&path, ""));
        match path {
            "/store" => {
                let value = query
                    .split('&')
                    .find_map(|pair| pair.strip_prefix("v="))
                    .unwrap_or_default();
                log::info!("survivor: storing {value}");
                if let Err(status) = self.set_shared_data(KEY, Some(value.as_bytes()), None) {
                    log::warn!("survivor: storing failed: {status:?}");
                }
            }
            "/crash" => panic!("survivor filter crashes on purpose"),
            "/read" => {
                let value = shared_data::get_text(KEY).unwrap_or_else(|| "none".to_owned());
                self.read = Some(value);
            }
            _ => {}
        }
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        if let Some(value) = &self.read {
            self.set_http_response_header("x-survivor", Some(value));
        }
        Action::Continue
    }
}
