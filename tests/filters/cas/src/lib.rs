//! `cas`: checks the compare-and-swap rules of shared data within one request.
//!
//! No config (any configuration is ignored).
//!
//! Request headers, on shared-data key `cas.key`:
//! 1. `set_shared_data("cas.key", "v1", no CAS)` — expects `Ok` (a write without CAS is
//!    unconditional);
//! 2. `get_shared_data("cas.key")` — expects value `v1` and a CAS (`cas1`);
//! 3. `set_shared_data("cas.key", "v2", cas1)` — expects `Ok` (the CAS is current);
//! 4. `set_shared_data("cas.key", "v3", cas1)` — expects `Err(CasMismatch)` (step 3 made
//!    `cas1` stale);
//! 5. reads the final value — expects `v2`.
//!
//! It stops at the first unmet expectation. `Continue`.
//!
//! Response headers: `x-cas: ok` if every expectation held, else `x-cas: <what went wrong
//! first>` (e.g. `set v3 with a stale cas gave Ok(()), not CasMismatch`); and
//! `x-cas-value: <final value of cas.key>` (`none` if unset). `Continue`.
//!
//! The key is shared by every instance with the same vm_id: concurrent requests through
//! this filter interfere with each other, so tests send them one at a time.

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, Bytes, ContextType, LogLevel, Status};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| Box::new(Root));
}}

const KEY: &str = "cas.key";

struct Root;

impl Context for Root {}

impl RootContext for Root {
    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Cas { report: None }))
    }
}

/// The outcome of the checks, for the response headers.
struct Report {
    verdict: String,
    value: String,
}

struct Cas {
    report: Option<Report>,
}

impl Cas {
    /// Steps 1 to 4 (see the crate docs); `Err` describes the first unmet expectation.
    fn exercise(&self) -> Result<(), String> {
        self.set_shared_data(KEY, Some(b"v1"), None)
            .map_err(|status| format!("set v1 without cas gave {status:?}"))?;
        let (value, cas) = self.get_shared_data(KEY);
        if value.as_deref() != Some(b"v1".as_slice()) {
            return Err(format!("read {} after setting v1", show(value.as_ref())));
        }
        let Some(cas1) = cas else {
            return Err("no cas after setting v1".to_owned());
        };
        self.set_shared_data(KEY, Some(b"v2"), Some(cas1))
            .map_err(|status| format!("set v2 with the current cas gave {status:?}"))?;
        match self.set_shared_data(KEY, Some(b"v3"), Some(cas1)) {
            Err(Status::CasMismatch) => Ok(()),
            other => Err(format!(
                "set v3 with a stale cas gave {other:?}, not CasMismatch"
            )),
        }
    }
}

impl Context for Cas {}

impl HttpContext for Cas {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let outcome = self.exercise();
        let (value, _) = self.get_shared_data(KEY);
        let value = show(value.as_ref());
        let verdict = match outcome {
            Ok(()) if value == "v2" => "ok".to_owned(),
            Ok(()) => format!("final value is {value}, not v2"),
            Err(problem) => problem,
        };
        log::info!("cas: {verdict}");
        self.report = Some(Report { verdict, value });
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        if let Some(report) = &self.report {
            self.set_http_response_header("x-cas", Some(&report.verdict));
            self.set_http_response_header("x-cas-value", Some(&report.value));
        }
        Action::Continue
    }
}

/// A shared-data value for a header: its text (lossily decoded), or `none`.
fn show(value: Option<&Bytes>) -> String {
    value.map_or_else(
        || "none".to_owned(),
        |bytes| String::from_utf8_lossy(bytes).into_owned(),
    )
}
