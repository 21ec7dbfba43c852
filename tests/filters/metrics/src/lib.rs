//! `metrics`: defines one metric of each kind and updates them on every request.
//!
//! No config (any configuration is ignored).
//!
//! `on_configure` defines, with `proxy_define_metric`: counters `requests_total` and
//! `recorded_total`, gauge `in_flight` and histogram `body_size`.
//!
//! Request headers: `requests_total` +1 and `in_flight` +1 (`proxy_increment_metric`), and
//! records the value 1234 in `body_size` and 5 in `recorded_total` (`proxy_record_metric`,
//! which Envoy adds to a counter). Then, as Coraza's WAF does for its per-rule counters, it
//! defines the counter `requests_by_method=<:method>` on the spot (a name carrying a tag,
//! which Envoy's tag extraction turns into a label) and adds 1 to it. `Continue`.
//!
//! Response headers: `x-requests-total` and `x-in-flight`, the values of `requests_total`
//! and `in_flight` read back with `proxy_get_metric` (`error: <status>` if that fails).
//! `Continue`. With one value per metric name however many instances define it (as in
//! Envoy), requests one at a time see `x-requests-total` 1, 2, 3, ...; `x-in-flight` counts
//! the requests whose `on_log` has not run yet, this one included, so it is at least 1.
//!
//! `on_log`: `in_flight` -1 (`proxy_increment_metric` with offset -1), for requests whose
//! headers were counted.

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel, MetricType, Status};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| Box::new(Root { metrics: None }));
}}

/// The value recorded in the `body_size` histogram for every request.
const RECORDED_BODY_SIZE: u64 = 1234;
/// The value recorded in the `recorded_total` counter for every request.
const RECORDED_COUNT: u64 = 5;

/// The ids of the metrics, as `proxy_define_metric` returned them.
#[derive(Clone, Copy)]
struct Metrics {
    requests_total: u32,
    recorded_total: u32,
    in_flight: u32,
    body_size: u32,
}

impl Metrics {
    fn define() -> Result<Metrics, Status> {
        Ok(Metrics {
            requests_total: hostcalls::define_metric(MetricType::Counter, "requests_total")?,
            recorded_total: hostcalls::define_metric(MetricType::Counter, "recorded_total")?,
            in_flight: hostcalls::define_metric(MetricType::Gauge, "in_flight")?,
            body_size: hostcalls::define_metric(MetricType::Histogram, "body_size")?,
        })
    }
}

struct Root {
    metrics: Option<Metrics>,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        match Metrics::define() {
            Ok(metrics) => {
                self.metrics = Some(metrics);
                true
            }
            Err(status) => {
                log::error!("metrics: defining the metrics failed: {status:?}");
                false
            }
        }
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        // A plugin whose configuration failed never gets HTTP contexts.
        let metrics = self.metrics?;
        Some(Box::new(Request {
            metrics,
            counted: false,
        }))
    }
}

struct Request {
    metrics: Metrics,
    /// Whether this request's headers incremented `in_flight` (which `on_log` undoes).
    counted: bool,
}

fn increment(metric: u32, offset: i64) {
    if let Err(status) = hostcalls::increment_metric(metric, offset) {
        log::warn!("metrics: incrementing metric {metric} by {offset} failed: {status:?}");
    }
}

fn read(metric: u32) -> String {
    match hostcalls::get_metric(metric) {
        Ok(value) => value.to_string(),
        Err(status) => format!("error: {status:?}"),
    }
}

impl Context for Request {}

impl HttpContext for Request {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        increment(self.metrics.requests_total, 1);
        increment(self.metrics.in_flight, 1);
        self.counted = true;
        if let Err(status) = hostcalls::record_metric(self.metrics.body_size, RECORDED_BODY_SIZE) {
            log::warn!("metrics: recording body_size failed: {status:?}");
        }
        if let Err(status) = hostcalls::record_metric(self.metrics.recorded_total, RECORDED_COUNT) {
            log::warn!("metrics: recording recorded_total failed: {status:?}");
        }
        let method = self.get_http_request_header(":method").unwrap_or_default();
        match hostcalls::define_metric(MetricType::Counter, &format!("requests_by_method={method}"))
        {
            Ok(id) => increment(id, 1),
            Err(status) => log::warn!("metrics: defining requests_by_method failed: {status:?}"),
        }
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let requests_total = read(self.metrics.requests_total);
        let in_flight = read(self.metrics.in_flight);
        self.set_http_response_header("x-requests-total", Some(&requests_total));
        self.set_http_response_header("x-in-flight", Some(&in_flight));
        Action::Continue
    }

    fn on_log(&mut self) {
        if self.counted {
            increment(self.metrics.in_flight, -1);
        }
    }
}
