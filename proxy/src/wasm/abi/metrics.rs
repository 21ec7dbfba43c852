//! Filter metrics: `proxy_define_metric`, `proxy_increment_metric`, `proxy_record_metric`,
//! `proxy_get_metric`. They are exported on `/metrics` as `wasmcustom_<name>{filter="..."}`,
//! with the tags the name carries as more labels; instances of one filter share each metric.

use wasmtime::{Caller, Linker};

use super::memory;
use super::status::{status, HostResult, Status};
use crate::causes::describe;
use crate::metrics::{self, CustomKind, CustomMetric, MetricError};
use crate::wasm::state::HostState;

pub(crate) fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.func_wrap("env", "proxy_define_metric", define)?;
    linker.func_wrap("env", "proxy_increment_metric", increment)?;
    linker.func_wrap("env", "proxy_record_metric", record)?;
    linker.func_wrap("env", "proxy_get_metric", get)?;
    Ok(())
}

fn define(
    mut caller: Caller<'_, HostState>,
    kind: u32,
    name_ptr: u32,
    name_len: u32,
    ret_id: u32,
) -> HostResult {
    let kind = match kind {
        0 => CustomKind::Counter,
        1 => CustomKind::Gauge,
        2 => CustomKind::Histogram,
        _ => return Ok(Status::BadArgument as i32),
    };
    let name = match memory::read(&caller, name_ptr, name_len) {
        Ok(name) => String::from_utf8_lossy(&name).into_owned(),
        Err(status) => return Ok(status as i32),
    };
    let filter = caller.data().plugin.name.clone();
    match metrics::global().define_custom(&filter, kind, &name) {
        Ok(id) => Ok(status(memory::write_u32(&mut caller, ret_id, id))),
        // Counted, not logged: a filter that makes up names may hit it on every request.
        Err(e @ MetricError::TooMany) => {
            metrics::global()
                .filter_limit_hits
                .with_label_values(&[filter.as_str(), "metrics"])
                .inc();
            log::debug!("filter `{filter}`: cannot define metric `{name}`: {e}");
            Ok(Status::BadArgument as i32)
        }
        Err(e) => {
            log::warn!("filter `{filter}`: cannot define metric: {}", describe(&e));
            Ok(Status::BadArgument as i32)
        }
    }
}

/// Counters go up only; gauges move either way; histograms take `record`, not this.
fn increment(_caller: Caller<'_, HostState>, id: u32, delta: i64) -> HostResult {
    match metrics::global().custom(id) {
        None => return Ok(Status::NotFound as i32),
        Some(CustomMetric::Counter(c)) if delta > 0 => c.inc_by(delta as u64),
        Some(CustomMetric::Gauge(g)) => g.add(delta),
        Some(_) => return Ok(Status::BadArgument as i32),
    }
    Ok(Status::Ok as i32)
}

/// As in Envoy: a counter goes up by the value (a counter never goes down), a gauge is set to
/// it, a histogram observes it.
fn record(_caller: Caller<'_, HostState>, id: u32, value: i64) -> HostResult {
    let value = value as u64;
    match metrics::global().custom(id) {
        None => return Ok(Status::NotFound as i32),
        Some(CustomMetric::Counter(c)) => c.inc_by(value),
        Some(CustomMetric::Gauge(g)) => g.set(value as i64),
        Some(CustomMetric::Histogram(h)) => h.observe(value as f64),
    }
    Ok(Status::Ok as i32)
}

fn get(mut caller: Caller<'_, HostState>, id: u32, ret_value: u32) -> HostResult {
    let value = match metrics::global().custom(id) {
        None => return Ok(Status::NotFound as i32),
        Some(CustomMetric::Counter(c)) => c.get(),
        Some(CustomMetric::Gauge(g)) => g.get() as u64,
        Some(CustomMetric::Histogram(_)) => return Ok(Status::BadArgument as i32),
    };
    Ok(status(memory::write_u64(&mut caller, ret_value, value)))
}
