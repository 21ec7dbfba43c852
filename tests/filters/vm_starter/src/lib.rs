//! `vm_starter`: shows what `on_vm_start` received, and can refuse to start.
//!
//! No plugin configuration (any is ignored). The VM configuration (`vm_config`) is read in
//! `on_vm_start` with `get_vm_configuration`:
//!
//! - the text `reject` makes `on_vm_start` log `vm_starter: rejecting vm_config "reject"` at
//!   error level and return `false`, so the host must fail the load;
//! - anything else (or nothing) is kept, together with the size `on_vm_start` was given, and
//!   `on_vm_start` returns `true`.
//!
//! Response headers: `x-vm-config: <the VM configuration, lossily decoded as UTF-8>` (empty
//! when there was none) and `x-vm-config-size: <the size argument of on_vm_start>`; `x-vm-
//! started: no` instead of both if `on_vm_start` never ran on this instance. `Continue`.

use std::rc::Rc;

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| Box::new(Root { started: None }));
}}

/// What `on_vm_start` was given.
struct Started {
    vm_config: String,
    size: usize,
}

struct Root {
    started: Option<Rc<Started>>,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_vm_start(&mut self, vm_configuration_size: usize) -> bool {
        let vm_config = self
            .get_vm_configuration()
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
            .unwrap_or_default();
        if vm_config == "reject" {
            log::error!("vm_starter: rejecting vm_config {vm_config:?}");
            return false;
        }
        self.started = Some(Rc::new(Started {
            vm_config,
            size: vm_configuration_size,
        }));
        true
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Reporter {
            started: self.started.clone(),
        }))
    }
}

struct Reporter {
    started: Option<Rc<Started>>,
}

impl Context for Reporter {}

impl HttpContext for Reporter {
    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        match &self.started {
            Some(started) => {
                self.set_http_response_header("x-vm-config", Some(&started.vm_config));
                let size = started.size.to_string();
                self.set_http_response_header("x-vm-config-size", Some(&size));
            }
            None => self.set_http_response_header("x-vm-started", Some("no")),
        }
        Action::Continue
    }
}
