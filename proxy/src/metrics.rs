//! The metric registry shared by the proxy, the filter host and the filters themselves,
//! exported in Prometheus text format on the admin listener's `/metrics`.
//!
//! One registry per process (metrics are process-wide by nature): `metrics::global()`.

use std::collections::HashMap;
use std::sync::{LazyLock, Mutex};

use prometheus::{
    exponential_buckets, Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec,
    IntGauge, IntGaugeVec, Opts, Registry,
};

use crate::sync::lock;

/// Seconds, from 100 µs to about 26 s, doubling.
fn latency_buckets() -> Vec<f64> {
    exponential_buckets(0.0001, 2.0, 19).unwrap_or_default()
}

pub(crate) struct Metrics {
    registry: Registry,
    pub requests: IntCounterVec,
    pub request_duration: HistogramVec,
    pub inflight: IntGauge,
    pub client_connections: IntGaugeVec,
    pub client_refusals: IntCounterVec,
    pub client_timeouts: IntCounterVec,
    pub client_aborts: IntCounterVec,
    pub upstream_latency: HistogramVec,
    pub upstream_failures: IntCounterVec,
    pub filter_calls: IntCounterVec,
    pub filter_duration: HistogramVec,
    pub filter_traps: IntCounterVec,
    pub filter_limit_hits: IntCounterVec,
    pub filter_instances_started: IntCounterVec,
    pub filter_instances: IntGaugeVec,
    pub callouts: IntCounterVec,
    pub callout_failures: IntCounterVec,
    pub cache_lookups: IntCounterVec,
    pub cache_stores: IntCounter,
    pub cache_evictions: IntCounterVec,
    pub cache_bytes: IntGaugeVec,
    pub cache_objects: IntGaugeVec,
    pub cache_purged: IntCounterVec,
    pub cache_disk_errors: IntCounterVec,
    pub access_log_dropped: IntCounter,
    pub tls_handshakes: IntCounterVec,
    pub tls_connections: IntCounterVec,
    pub tls_certificate_expiry: IntGaugeVec,
    pub config_reloads: IntCounterVec,
    pub config_last_reload: Gauge,
    pub config_generation: IntGauge,
    pub tls_certificate_reloads: IntCounterVec,
    custom: Mutex<Custom>,
}

/// Metrics filters define with `proxy_define_metric`.
#[derive(Default)]
struct Custom {
    /// By exported name, with the label names the family was made with.
    families: HashMap<String, (CustomFamily, Vec<String>)>,
    /// Indexed by metric id; one entry per (filter, name).
    metrics: Vec<CustomMetric>,
    ids: HashMap<(String, String), u32>,
    /// Metrics each filter defined, against [`MAX_METRICS_PER_FILTER`].
    per_filter: HashMap<String, usize>,
}

/// The most metrics (names, tags included) one filter may define: a filter that makes up
/// names per request must not grow the registry without bound.
const MAX_METRICS_PER_FILTER: usize = 10_000;

#[derive(Clone)]
enum CustomFamily {
    Counter(IntCounterVec),
    Gauge(IntGaugeVec),
    Histogram(HistogramVec),
}

/// One filter's metric.
#[derive(Clone)]
pub(crate) enum CustomMetric {
    Counter(IntCounter),
    Gauge(IntGauge),
    Histogram(Histogram),
}

/// The proxy-wasm metric types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CustomKind {
    Counter,
    Gauge,
    Histogram,
}

/// Why a metric could not be defined.
#[derive(Debug, thiserror::Error)]
pub(crate) enum MetricError {
    #[error("metric `{0}` is already defined with another type")]
    TypeConflict(String),
    #[error("metric `{name}` has the tags {tags:?}, but its family was defined with {family:?}")]
    TagConflict {
        name: String,
        tags: Vec<String>,
        family: Vec<String>,
    },
    #[error("the filter defined {MAX_METRICS_PER_FILTER} metrics already, the most one may")]
    TooMany,
    #[error("metric `{name}`")]
    Registry {
        name: String,
        source: prometheus::Error,
    },
}

fn counter(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    IntCounterVec::new(Opts::new(name, help), labels)
        .unwrap_or_else(|e| unreachable_metric(name, e))
}

fn gauge(name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    IntGaugeVec::new(Opts::new(name, help), labels).unwrap_or_else(|e| unreachable_metric(name, e))
}

fn histogram(name: &str, help: &str, labels: &[&str], buckets: Vec<f64>) -> HistogramVec {
    HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), labels)
        .unwrap_or_else(|e| unreachable_metric(name, e))
}

/// Metric definitions are constants of this file; a bad one is a bug found by the first test.
#[cold]
fn unreachable_metric(name: &str, error: prometheus::Error) -> ! {
    #[allow(clippy::panic)]
    {
        panic!("metric `{name}` is malformed: {error}")
    }
}

impl Metrics {
    fn new() -> Self {
        let metrics = Metrics {
            registry: Registry::new(),
            requests: counter("edgeward_requests_total", "Requests answered, by route and status code.", &["route", "status"]),
            request_duration: histogram(
                "edgeward_request_duration_seconds",
                "Time from the request head to the end of the response, by route.",
                &["route"],
                latency_buckets(),
            ),
            inflight: IntGauge::new("edgeward_requests_in_flight", "Requests being served now.")
                .unwrap_or_else(|e| unreachable_metric("edgeward_requests_in_flight", e)),
            client_connections: gauge(
                "edgeward_client_connections",
                "Client connections open now, by listener.",
                &["listener"],
            ),
            client_refusals: counter(
                "edgeward_client_connections_refused_total",
                "Client connections closed at once because their listener had `client.max_connections` open, by listener.",
                &["listener"],
            ),
            client_timeouts: counter(
                "edgeward_client_timeouts_total",
                "Client connections closed by a client timeout, by listener and timeout (header, idle, body).",
                &["listener", "timeout"],
            ),
            client_aborts: counter(
                "edgeward_client_aborts_total",
                "Requests the client gave up on before its response was complete, by route.",
                &["route"],
            ),
            upstream_latency: histogram(
                "edgeward_upstream_latency_seconds",
                "Time from choosing an endpoint to the upstream's response head, by upstream.",
                &["upstream"],
                latency_buckets(),
            ),
            upstream_failures: counter(
                "edgeward_upstream_failures_total",
                "Failed upstream requests, by upstream and reason (refused, timeout, no_healthy_endpoint, ...).",
                &["upstream", "reason"],
            ),
            filter_calls: counter(
                "edgeward_filter_calls_total",
                "Filter callbacks run, by filter and phase.",
                &["filter", "phase"],
            ),
            filter_duration: histogram(
                "edgeward_filter_call_duration_seconds",
                "Time one filter callback ran, by filter.",
                &["filter"],
                exponential_buckets(0.000_001, 2.0, 20).unwrap_or_default(),
            ),
            filter_traps: counter("edgeward_filter_traps_total", "Filter crashes (traps, panics, proc_exit), by filter.", &["filter"]),
            filter_limit_hits: counter(
                "edgeward_filter_limit_hits_total",
                "Filter limits reached, by filter and limit (cpu, memory, body, unavailable, instances, metrics).",
                &["filter", "limit"],
            ),
            filter_instances_started: counter(
                "edgeward_filter_instances_started_total",
                "Filter instances created (at load, per request, after crashes), by filter.",
                &["filter"],
            ),
                                    filter_instances: gauge("edgeward_filter_instances", "Filter instances alive now, by filter.", &["filter"]),
            callouts: counter(
                "edgeward_filter_callouts_total",
                "HTTP callouts made by filters, by filter and upstream.",
                &["filter", "upstream"],
            ),
            callout_failures: counter(
                "edgeward_filter_callout_failures_total",
                "HTTP callouts that failed, by filter, upstream and reason (refused, timeout, forbidden, ...).",
                &["filter", "upstream", "reason"],
            ),
                        cache_lookups: counter(
                "edgeward_cache_lookups_total",
                "Requests on caching routes, by route and result (hit, stale, miss, expired, revalidated, bypass).",
                &["route", "result"],
            ),
            cache_stores: IntCounter::new("edgeward_cache_stores_total", "Responses stored in the cache.")
                .unwrap_or_else(|e| unreachable_metric("edgeward_cache_stores_total", e)),
            cache_evictions: counter(
                "edgeward_cache_evictions_total",
                "Objects evicted to make room, by tier (memory, disk).",
                &["tier"],
            ),
            cache_bytes: gauge("edgeward_cache_bytes", "Bytes the cache holds, by tier (memory, disk).", &["tier"]),
            cache_objects: gauge("edgeward_cache_objects", "Objects the cache holds, by tier (memory, disk).", &["tier"]),
            cache_purged: counter(
                "edgeward_cache_purged_objects_total",
                "Objects removed or marked stale by purges and invalidations, by how (url, surrogate_key, method) and mode (hard, soft).",
                &["how", "mode"],
            ),
            cache_disk_errors: counter(
                "edgeward_cache_disk_errors_total",
                "Disk tier failures, by operation (read, write, corrupt, queue_full).",
                &["operation"],
            ),
            access_log_dropped: IntCounter::new(
                "edgeward_access_log_dropped_total",
                "Access log lines dropped because the log target did not keep up.",
            )
            .unwrap_or_else(|e| unreachable_metric("edgeward_access_log_dropped_total", e)),
            tls_handshakes: counter(
                "edgeward_tls_handshakes_total",
                "TLS handshakes on client connections, by listener and result (ok, no_certificate, protocol_version, certificate_rejected, plaintext_http, not_tls, timeout, error).",
                &["listener", "result"],
            ),
            tls_connections: counter(
                "edgeward_tls_connections_total",
                "Client connections that completed their TLS handshake, by listener, TLS version and handshake (full, resumed).",
                &["listener", "version", "handshake"],
            ),
            tls_certificate_expiry: gauge(
                "edgeward_tls_certificate_expiry_seconds",
                "When each listener certificate expires (its notAfter), in seconds since the Unix epoch, by certificate.",
                &["certificate"],
            ),
            config_reloads: counter(
                "edgeward_config_reloads_total",
                "Configuration reloads, by result (ok, error).",
                &["result"],
            ),
            config_last_reload: Gauge::new(
                "edgeward_config_last_reload_success_timestamp_seconds",
                "When the configuration in use was loaded (at start or by the last successful reload), in seconds since the Unix epoch.",
            )
            .unwrap_or_else(|e| unreachable_metric("edgeward_config_last_reload_success_timestamp_seconds", e)),
            config_generation: IntGauge::new(
                "edgeward_config_generation",
                "The number of the configuration generation serving new requests (1 at start, one more per successful reload).",
            )
            .unwrap_or_else(|e| unreachable_metric("edgeward_config_generation", e)),
            tls_certificate_reloads: counter(
                "edgeward_tls_certificate_reloads_total",
                "Changed certificate files read by a TLS listener, by listener, certificate and result (ok: now served; error: refused, the previous certificate still serves).",
                &["listener", "certificate", "result"],
            ),
            custom: Mutex::new(Custom::default()),
        };
        let collectors: Vec<Box<dyn prometheus::core::Collector>> = vec![
            Box::new(metrics.requests.clone()),
            Box::new(metrics.request_duration.clone()),
            Box::new(metrics.inflight.clone()),
            Box::new(metrics.client_connections.clone()),
            Box::new(metrics.client_refusals.clone()),
            Box::new(metrics.client_timeouts.clone()),
            Box::new(metrics.client_aborts.clone()),
            Box::new(metrics.upstream_latency.clone()),
            Box::new(metrics.upstream_failures.clone()),
            Box::new(metrics.filter_calls.clone()),
            Box::new(metrics.filter_duration.clone()),
            Box::new(metrics.filter_traps.clone()),
            Box::new(metrics.filter_limit_hits.clone()),
            Box::new(metrics.filter_instances_started.clone()),
            Box::new(metrics.filter_instances.clone()),
            Box::new(metrics.callouts.clone()),
            Box::new(metrics.callout_failures.clone()),
            Box::new(metrics.cache_lookups.clone()),
            Box::new(metrics.cache_stores.clone()),
            Box::new(metrics.cache_evictions.clone()),
            Box::new(metrics.cache_bytes.clone()),
            Box::new(metrics.cache_objects.clone()),
            Box::new(metrics.cache_purged.clone()),
            Box::new(metrics.cache_disk_errors.clone()),
            Box::new(metrics.access_log_dropped.clone()),
            Box::new(metrics.tls_handshakes.clone()),
            Box::new(metrics.tls_connections.clone()),
            Box::new(metrics.tls_certificate_expiry.clone()),
            Box::new(metrics.config_reloads.clone()),
            Box::new(metrics.config_last_reload.clone()),
            Box::new(metrics.config_generation.clone()),
            Box::new(metrics.tls_certificate_reloads.clone()),
        ];
        for collector in collectors {
            if let Err(e) = metrics.registry.register(collector) {
                unreachable_metric("built-in", e);
            }
        }
        metrics
    }

    /// Everything, in the Prometheus text exposition format.
    pub(crate) fn render(&self) -> String {
        prometheus::TextEncoder::new()
            .encode_to_string(&self.registry.gather())
            .unwrap_or_else(|e| format!("# cannot encode metrics: {e}\n"))
    }

    /// Defines (or finds again) `filter`'s metric `name`, exported as `wasmcustom_<name>` with
    /// a `filter` label and the tags the name carries (see [`extract_tags`]), and returns its
    /// id. Instances of one filter share it.
    pub(crate) fn define_custom(
        &self,
        filter: &str,
        kind: CustomKind,
        name: &str,
    ) -> Result<u32, MetricError> {
        let mut custom = lock(&self.custom);
        if let Some(id) = custom.ids.get(&(filter.to_string(), name.to_string())) {
            let same_kind = matches!(
                (custom.metrics.get(*id as usize), kind),
                (Some(CustomMetric::Counter(_)), CustomKind::Counter)
                    | (Some(CustomMetric::Gauge(_)), CustomKind::Gauge)
                    | (Some(CustomMetric::Histogram(_)), CustomKind::Histogram)
            );
            return if same_kind {
                Ok(*id)
            } else {
                Err(MetricError::TypeConflict(name.to_string()))
            };
        }
        if custom.per_filter.get(filter).copied().unwrap_or(0) >= MAX_METRICS_PER_FILTER {
            return Err(MetricError::TooMany);
        }
        let (base, tags) = extract_tags(name);
        let exported = format!("wasmcustom_{}", sanitize(base));
        let mut labels = vec!["filter".to_string()];
        labels.extend(tags.iter().map(|(key, _)| key.clone()));
        let family = match custom.families.get(&exported) {
            Some((family, family_labels)) if *family_labels == labels => family.clone(),
            Some((_, family_labels)) => {
                return Err(MetricError::TagConflict {
                    name: name.to_string(),
                    tags: labels[1..].to_vec(),
                    family: family_labels[1..].to_vec(),
                })
            }
            None => {
                let family = self.register_custom(&exported, kind, name, &labels)?;
                custom
                    .families
                    .insert(exported.clone(), (family.clone(), labels));
                family
            }
        };
        let mut values = vec![filter];
        values.extend(tags.iter().map(|(_, value)| value.as_str()));
        let metric = match (family, kind) {
            (CustomFamily::Counter(c), CustomKind::Counter) => {
                CustomMetric::Counter(c.with_label_values(&values))
            }
            (CustomFamily::Gauge(g), CustomKind::Gauge) => {
                CustomMetric::Gauge(g.with_label_values(&values))
            }
            (CustomFamily::Histogram(h), CustomKind::Histogram) => {
                CustomMetric::Histogram(h.with_label_values(&values))
            }
            _ => return Err(MetricError::TypeConflict(name.to_string())),
        };
        let id = custom.metrics.len() as u32;
        custom.metrics.push(metric);
        custom
            .ids
            .insert((filter.to_string(), name.to_string()), id);
        *custom.per_filter.entry(filter.to_string()).or_default() += 1;
        Ok(id)
    }

    /// Makes and registers the family `exported` with `labels`.
    fn register_custom(
        &self,
        exported: &str,
        kind: CustomKind,
        name: &str,
        labels: &[String],
    ) -> Result<CustomFamily, MetricError> {
        let help = format!("Defined by filters: {name}");
        let registry_error = |source| MetricError::Registry {
            name: name.to_string(),
            source,
        };
        let labels: Vec<&str> = labels.iter().map(String::as_str).collect();
        let family = match kind {
            CustomKind::Counter => CustomFamily::Counter(
                IntCounterVec::new(Opts::new(exported, help), &labels).map_err(registry_error)?,
            ),
            CustomKind::Gauge => CustomFamily::Gauge(
                IntGaugeVec::new(Opts::new(exported, help), &labels).map_err(registry_error)?,
            ),
            CustomKind::Histogram => CustomFamily::Histogram(
                HistogramVec::new(
                    HistogramOpts::new(exported, help)
                        .buckets(exponential_buckets(1.0, 4.0, 16).unwrap_or_default()),
                    &labels,
                )
                .map_err(registry_error)?,
            ),
        };
        let collector: Box<dyn prometheus::core::Collector> = match &family {
            CustomFamily::Counter(c) => Box::new(c.clone()),
            CustomFamily::Gauge(g) => Box::new(g.clone()),
            CustomFamily::Histogram(h) => Box::new(h.clone()),
        };
        self.registry.register(collector).map_err(registry_error)?;
        Ok(family)
    }

    /// Every metric filters defined, as (filter, name as defined, value), sorted: a counter's
    /// or gauge's value, a histogram's number of samples.
    pub(crate) fn custom_values(&self) -> Vec<(String, String, i64)> {
        let custom = lock(&self.custom);
        let mut values: Vec<_> = custom
            .ids
            .iter()
            .filter_map(|((filter, name), id)| {
                let value = match custom.metrics.get(*id as usize)? {
                    CustomMetric::Counter(c) => i64::try_from(c.get()).unwrap_or(i64::MAX),
                    CustomMetric::Gauge(g) => g.get(),
                    CustomMetric::Histogram(h) => {
                        i64::try_from(h.get_sample_count()).unwrap_or(i64::MAX)
                    }
                };
                Some((filter.clone(), name.clone(), value))
            })
            .collect();
        values.sort();
        values
    }

    /// A filter metric by id.
    pub(crate) fn custom(&self, id: u32) -> Option<CustomMetric> {
        let custom = lock(&self.custom);
        custom.metrics.get(id as usize).cloned()
    }
}

/// Splits a filter's metric name into its family name and tags, as Envoy's tag extraction
/// does with the patterns filters are written for (Coraza's
/// `waf_filter.tx.interruptions_ruleid=942100_phase=http_request_body`, Istio's
/// `name.key=value`): a `_` or `.`, a key (a letter, then letters and digits) and `=` start a
/// tag, whose value runs to the next such start. What precedes the first tag is the name.
/// The key `filter` is edgeward's own label and stays in the name.
fn extract_tags(name: &str) -> (&str, Vec<(String, String)>) {
    // Each tag's separator, the start of its value, and its key.
    let mut starts: Vec<(usize, usize, &str)> = Vec::new();
    for (equals, _) in name.match_indices('=') {
        let Some(separator) = name[..equals].rfind(['_', '.']) else {
            continue;
        };
        let key = &name[separator + 1..equals];
        let well_formed = key.starts_with(|c: char| c.is_ascii_alphabetic())
            && key.chars().all(|c| c.is_ascii_alphanumeric());
        // A separator inside the previous tag's value would split it: it starts a tag only
        // after that value began.
        let after_previous = starts
            .last()
            .is_none_or(|&(_, value_at, _)| separator >= value_at);
        if well_formed && key != "filter" && after_previous {
            starts.push((separator, equals + 1, key));
        }
    }
    let Some(&(first, _, _)) = starts.first() else {
        return (name, Vec::new());
    };
    let mut tags: Vec<(String, String)> = Vec::with_capacity(starts.len());
    for (n, &(_, value_at, key)) in starts.iter().enumerate() {
        let value_end = starts.get(n + 1).map_or(name.len(), |next| next.0);
        let value = name[value_at..value_end].to_string();
        // A key given twice keeps its last value.
        match tags.iter_mut().find(|(k, _)| k == key) {
            Some(tag) => tag.1 = value,
            None => tags.push((key.to_string(), value)),
        }
    }
    (&name[..first], tags)
}

/// Prometheus metric names allow `[a-zA-Z0-9_:]`; filters often use dots.
fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == ':' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

static GLOBAL: LazyLock<Metrics> = LazyLock::new(Metrics::new);

pub(crate) fn global() -> &'static Metrics {
    &GLOBAL
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_metrics_are_shared_by_name_and_typed() {
        let metrics = Metrics::new();
        let a = metrics
            .define_custom("f", CustomKind::Counter, "hits.total")
            .unwrap();
        assert_eq!(
            metrics
                .define_custom("f", CustomKind::Counter, "hits.total")
                .unwrap(),
            a
        );
        let b = metrics
            .define_custom("g", CustomKind::Counter, "hits.total")
            .unwrap();
        assert_ne!(a, b);
        assert!(metrics
            .define_custom("f", CustomKind::Gauge, "hits.total")
            .is_err());
        assert!(metrics
            .define_custom("h", CustomKind::Gauge, "hits.total")
            .is_err());
        if let Some(CustomMetric::Counter(c)) = metrics.custom(a) {
            c.inc_by(3);
        }
        let text = metrics.render();
        assert!(
            text.contains("wasmcustom_hits_total{filter=\"f\"} 3"),
            "{text}"
        );
        assert!(text.contains("edgeward_requests_in_flight 0"), "{text}");
    }

    #[test]
    fn tags_in_metric_names_become_labels() {
        assert_eq!(
            extract_tags("waf_filter.tx.interruptions_ruleid=942100_phase=http_request_body"),
            (
                "waf_filter.tx.interruptions",
                vec![
                    ("ruleid".into(), "942100".into()),
                    ("phase".into(), "http_request_body".into())
                ]
            )
        );
        assert_eq!(
            extract_tags("requests.rule=7.verdict=deny"),
            (
                "requests",
                vec![
                    ("rule".into(), "7".into()),
                    ("verdict".into(), "deny".into())
                ]
            )
        );
        assert_eq!(
            extract_tags("plain.name_total"),
            ("plain.name_total", vec![])
        );
        assert_eq!(extract_tags("odd=1"), ("odd=1", vec![]));
        assert_eq!(extract_tags("x.filter=a"), ("x.filter=a", vec![]));
        assert_eq!(
            extract_tags("calls.path=/a=b"),
            ("calls", vec![("path".into(), "/a=b".into())])
        );

        let metrics = Metrics::new();
        let deny = metrics
            .define_custom("waf", CustomKind::Counter, "hits.rule=1.verdict=deny")
            .unwrap();
        let allow = metrics
            .define_custom("waf", CustomKind::Counter, "hits.rule=2.verdict=allow")
            .unwrap();
        assert_ne!(deny, allow);
        for (id, n) in [(deny, 2), (allow, 5)] {
            if let Some(CustomMetric::Counter(c)) = metrics.custom(id) {
                c.inc_by(n);
            }
        }
        let text = metrics.render();
        assert!(
            text.contains(r#"wasmcustom_hits{filter="waf",rule="1",verdict="deny"} 2"#),
            "{text}"
        );
        assert!(
            text.contains(r#"wasmcustom_hits{filter="waf",rule="2",verdict="allow"} 5"#),
            "{text}"
        );
        // One family, one set of labels.
        assert!(matches!(
            metrics.define_custom("waf", CustomKind::Counter, "hits.rule=3"),
            Err(MetricError::TagConflict { .. })
        ));
    }

    #[test]
    fn a_filter_cannot_define_metrics_without_bound() {
        let metrics = Metrics::new();
        for n in 0..MAX_METRICS_PER_FILTER {
            metrics
                .define_custom("greedy", CustomKind::Gauge, &format!("g.n={n}"))
                .unwrap();
        }
        assert!(matches!(
            metrics.define_custom("greedy", CustomKind::Gauge, "g.n=last"),
            Err(MetricError::TooMany)
        ));
        // Names it has already stay usable, and other filters are not affected.
        assert!(metrics
            .define_custom("greedy", CustomKind::Gauge, "g.n=0")
            .is_ok());
        assert!(metrics
            .define_custom("modest", CustomKind::Gauge, "g.n=0")
            .is_ok());
    }
}
