//! A finished request's metrics and access-log line.

use std::time::SystemTime;

use pingora::prelude::*;

use super::answers::Refusal;
use super::context::RequestCtx;
use super::forwarding::protocol_name;
use crate::access_log::{self, AccessLogger};
use crate::metrics;
use crate::routing::request_host;

/// Counts the request and writes its access-log line; `upstream` names the upstream it went
/// to, if any.
pub(super) fn log_request(
    session: &Session,
    ctx: &RequestCtx,
    upstream: Option<&str>,
    access_log: &AccessLogger,
) {
    let status = session.response_written().map_or(0, |r| r.status.as_u16());
    let route = ctx.route_name();
    let duration = ctx.started.elapsed();
    let metrics = metrics::global();
    if let Some(outcome) = ctx.cache.outcome {
        metrics
            .cache_lookups
            .with_label_values(&[route, outcome.metric_label()])
            .inc();
    }
    metrics
        .requests
        .with_label_values(&[route, status_label(status)])
        .inc();
    metrics
        .request_duration
        .with_label_values(&[route])
        .observe(duration.as_secs_f64());
    if !access_log.is_on() {
        return;
    }
    let req = session.req_header();
    let properties: Vec<(&str, String)> = match &ctx.filters.chain {
        Some(chain) => ctx
            .generation
            .access_log_properties
            .iter()
            .filter_map(|name| Some((name.as_str(), chain.set_property_text(name)?)))
            .collect(),
        None => Vec::new(),
    };
    access_log.write(&access_log::Entry {
        time: SystemTime::now(),
        request_id: ctx.request_id.to_str().unwrap_or_default(),
        client: session.client_addr().and_then(|a| a.as_inet()).copied(),
        protocol: protocol_name(req.version),
        method: req.method.as_str(),
        host: request_host(req).unwrap_or(""),
        path: req.uri.path_and_query().map_or("/", |pq| pq.as_str()),
        status,
        bytes_sent: session.body_bytes_sent(),
        bytes_received: session.body_bytes_read(),
        route: ctx.route.as_deref().map(|r| r.name.as_str()),
        upstream,
        endpoint: ctx.upstream.endpoint,
        duration,
        error: ctx.refusal.map(Refusal::code).or(ctx.filters.error),
        error_detail: ctx.upstream.failure.as_deref(),
        properties: &properties,
    });
}

/// The status as a metric label, without allocating per request: "none" when no response
/// was written (the client went away).
fn status_label(status: u16) -> &'static str {
    static LABELS: std::sync::LazyLock<Vec<String>> =
        std::sync::LazyLock::new(|| (100..600u16).map(|s| s.to_string()).collect());
    match status {
        100..=599 => LABELS
            .get(usize::from(status - 100))
            .map_or("other", String::as_str),
        0 => "none",
        _ => "other",
    }
}
