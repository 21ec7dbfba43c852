//! `ab-test`: A/B testing. Puts every client in one of weighted buckets and keeps it there
//! (by a cookie or by the hash of a key of its requests); each bucket may send its requests
//! to its own upstream, set request headers and rewrite a path prefix.
//!
//! Config (`buckets` required):
//!
//! ```yaml
//! config:
//!   buckets:                             # name → weight, or name → {weight, ...}
//!     control: 90
//!     new-checkout:
//!       weight: 10                       # integers ≥ 0; at least one above 0
//!       upstream: origin-b               # optional: else the route's upstream
//!       request_headers: {x-variant: b}  # optional: set (replacing) on its requests
//!       prefix_rewrite: {from: /checkout/, to: /checkout-v2/}   # optional
//!   sticky:                              # default: {cookie: {}}
//!     cookie: {name: ab_bucket, max_age: 30d, domain: example.com, path: /,
//!              secure: false, http_only: true, same_site: Lax}
//!     # or hash: client_address | {header: x-user-id} | {cookie: session}
//!   bucket_header: x-ab-bucket           # default: the request header naming the bucket
//!   force_header: x-ab-force             # optional: a request header that picks the bucket
//! ```
//!
//! Bucket names are 1 to 64 letters, digits, `-` and `_` (they go into headers, cookies and
//! metric labels); at most 64 buckets. Unknown keys and bad values fail the configuration,
//! naming the key ([`config`]).
//!
//! `on_http_request_headers` picks the bucket ([`experiment`]):
//! 1. with `force_header`, a request whose header names a bucket (any weight, 0 included)
//!    gets it, for that request only (the cookie is left as it is); other values are ignored;
//! 2. `cookie`: a cookie naming a configured bucket keeps the client in it, whatever the
//!    weights now are; a client without one, or whose cookie names no configured bucket (a
//!    bucket since removed, a forged value), is placed by a random id (WASI `random_get`)
//!    and gets `Set-Cookie` on the response;
//! 3. `hash`: the stable hash of the key (the client's address, as
//!    `source.effective_address`; a header; a cookie) picks the bucket; a request without
//!    the header or cookie is placed by its client address.
//!
//! Placement is weighted rendezvous hashing ([`assign`]): new clients split as the weights
//! do, and a change of weights moves only the hashed clients that must move. The filter then
//! sets `bucket_header` to the bucket's name (replacing any value the client sent) and the
//! property `<filter name>.bucket` to it too (which `access_log_properties` can show), the
//! bucket's `request_headers`, rewrites `:path` when it starts with `prefix_rewrite.from`,
//! and sends the request to the bucket's `upstream` the way `geo-router` does
//! (`proxy_set_property(["route", "upstream"])`; a name edgeward refuses is logged as a
//! warning and the route's upstream kept). Returns `Continue`.
//!
//! `on_http_response_headers` adds `Set-Cookie` for a client newly placed in cookie mode.
//!
//! Metrics (counters, per bucket): `ab_test_requests_bucket=<name>` (requests) and
//! `ab_test_assignments_bucket=<name>` (clients newly placed by weight: new cookies, and
//! reassignments), exported as `wasmcustom_ab_test_requests{filter, bucket}` and
//! `wasmcustom_ab_test_assignments{filter, bucket}`. Each decision is logged at debug level
//! (`ab-test: bucket b (new client)`).
//!
//! The logic ([`config`], [`experiment`], [`assign`], [`cookie`]) is free of the SDK and
//! unit-tested natively (`cargo test` in `filters/`); only the glue below talks to the host.

pub mod assign;
pub mod config;
pub mod cookie;
pub mod experiment;

use std::rc::Rc;
use std::time::UNIX_EPOCH;

use filter_support::root::{Configured, ConfiguredRoot};
use filter_support::{host, property};
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::{Action, LogLevel};

use crate::experiment::{Experiment, Request};

const NAME: &str = "ab-test";

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| ConfiguredRoot::<State>::boxed());
}}

/// The experiment and its metrics, shared by the root's requests.
struct State {
    experiment: Experiment,
    /// The filter's name in edgeward's configuration: the request's bucket is set as the
    /// property `<name>.bucket`, for the access log and later filters.
    filter_name: String,
    /// Per bucket, in [`Experiment::buckets`] order.
    metrics: Vec<BucketMetrics>,
}

/// Ids of a bucket's counters; `None` if edgeward refused to define one (logged).
struct BucketMetrics {
    requests: Option<u32>,
    assignments: Option<u32>,
}

impl Configured for State {
    const NAME: &'static str = NAME;

    fn configure(config: Option<&[u8]>) -> Result<State, String> {
        let experiment = Experiment::parse(config)?;
        let metrics = experiment
            .buckets
            .iter()
            .map(|bucket| BucketMetrics {
                requests: counter(&format!("ab_test_requests_bucket={}", bucket.name)),
                assignments: counter(&format!("ab_test_assignments_bucket={}", bucket.name)),
            })
            .collect();
        let filter_name = property(NAME, &["plugin_name"])
            .and_then(|name| String::from_utf8(name).ok())
            .unwrap_or_else(|| NAME.to_string());
        Ok(State {
            experiment,
            filter_name,
            metrics,
        })
    }

    fn http_context(state: &Rc<State>) -> Box<dyn HttpContext> {
        Box::new(AbTest {
            state: Rc::clone(state),
            set_cookie: None,
        })
    }
}

/// Defines a counter; on refusal (too many metrics, a name clash) logs and counts nothing.
fn counter(name: &str) -> Option<u32> {
    host::define_counter(name)
        .inspect_err(|status| {
            log::warn!("{NAME}: edgeward refused to define metric `{name}`: {status}")
        })
        .ok()
}

struct AbTest {
    state: Rc<State>,
    /// The bucket whose cookie the response must set: a client placed by this request.
    set_cookie: Option<usize>,
}

impl Context for AbTest {}

impl HttpContext for AbTest {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let state = Rc::clone(&self.state);
        let experiment = &state.experiment;
        let assignment = experiment.assign(&HostRequest);
        let Some(bucket) = experiment.buckets.get(assignment.bucket) else {
            return Action::Continue;
        };
        log::debug!(
            "{NAME}: bucket {} ({})",
            bucket.name,
            assignment.how.describe()
        );
        self.set_http_request_header(&experiment.bucket_header, Some(&bucket.name));
        if let Err(status) =
            host::set_property(&[&state.filter_name, "bucket"], bucket.name.as_bytes())
        {
            log::debug!(
                "{NAME}: setting property {}.bucket: {status}",
                state.filter_name
            );
        }
        for (name, value) in &bucket.request_headers {
            self.set_http_request_header(name, Some(value));
        }
        if let Some(rewrite) = &bucket.prefix_rewrite {
            let path = property(NAME, &["request", "path"]).and_then(|p| String::from_utf8(p).ok());
            if let Some(rewritten) = path.and_then(|path| rewrite.apply(&path)) {
                self.set_http_request_header(":path", Some(&rewritten));
            }
        }
        if let Some(upstream) = &bucket.upstream {
            if let Err(status) = host::set_route_upstream(upstream) {
                log::warn!(
                    "{NAME}: edgeward refused upstream `{upstream}` of bucket {}: {status}; \
                     keeping the route's upstream",
                    bucket.name
                );
            }
        }
        let metrics = state.metrics.get(assignment.bucket);
        increment(metrics.and_then(|m| m.requests));
        if assignment.how.sets_cookie() {
            increment(metrics.and_then(|m| m.assignments));
            self.set_cookie = Some(assignment.bucket);
        }
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let bucket = self
            .set_cookie
            .and_then(|index| self.state.experiment.buckets.get(index));
        if let Some(set_cookie) = bucket.and_then(|bucket| bucket.set_cookie.as_deref()) {
            self.add_http_response_header("set-cookie", set_cookie);
        }
        Action::Continue
    }
}

fn increment(metric: Option<u32>) {
    if let Some(id) = metric {
        // Only NOT_FOUND or BAD_ARGUMENT can come back, for a metric edgeward defined: nothing
        // to do about either.
        let _ = hostcalls::increment_metric(id, 1);
    }
}

/// The request as the host shows it: headers and the address through properties, which
/// give bytes (the SDK's header getters trap on a value that is not UTF-8).
struct HostRequest;

impl Request for HostRequest {
    fn header(&self, name: &str) -> Option<Vec<u8>> {
        property(NAME, &["request", "headers", name])
    }

    fn client_address(&self) -> Option<Vec<u8>> {
        property(NAME, &["source", "effective_address"])
    }

    fn random_id(&self) -> u64 {
        let mut bytes = [0; 8];
        match getrandom::getrandom(&mut bytes) {
            Ok(()) => u64::from_le_bytes(bytes),
            Err(err) => {
                // edgeward always answers `random_get`; should it not, the clock still
                // spreads clients over the buckets.
                log::warn!("{NAME}: random_get failed ({err}); placing the client by the clock");
                let nanos = hostcalls::get_current_time()
                    .ok()
                    .and_then(|now| now.duration_since(UNIX_EPOCH).ok())
                    .map_or(0, |since| since.as_nanos() as u64);
                assign::mix(nanos)
            }
        }
    }
}
