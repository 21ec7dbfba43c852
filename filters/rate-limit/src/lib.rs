//! `rate-limit`: token-bucket rate limits, keyed by any combination of the client's address,
//! request headers, JWT claims (as jwt-auth forwards them) and the route, shared by every
//! worker of the process through shared data.
//!
//! Config (the proxy hands over its YAML `config:` as JSON; unknown keys fail it):
//!
//! ```yaml
//! config:
//!   limits:                        # required, 1 to 16; a request must pass every one
//!     - name: per-client           # required: letters, digits, `-`, `_` (metrics, logs, keys)
//!       rate: 10                   # required: tokens added per `per` (1 to 1,000,000)
//!       per: 1s                    # required: 1s to 30d, whole s, m, h or d (or seconds)
//!       burst: 20                  # default `rate`: the bucket's size (1 to 1,000,000)
//!       key: [client_address]      # default []: one bucket for every request
//!       capacity: 10000            # default 10000: keys tracked (4 to 250,000)
//!     - name: per-user-hourly
//!       rate: 1000
//!       per: 1h
//!       key: [{claim: sub}, route] # parts: client_address | route | {header: name} | {claim: name}
//!   claim_headers: {sub: x-user-id}  # claim -> header, as jwt-auth's `forward_claims`
//!   headers: refused               # default refused; `always`: admitted responses get them too
//!   dry_run: false                 # default false; true: count and log, never refuse
//! ```
//!
//! Key parts: `client_address` is `source.effective_address` (the peer, or behind edgeward's
//! `geo.trusted_proxies` the client named by `X-Forwarded-For`); `route` the route's name;
//! `{header: x-api-key}` a request header (repeated ones joined with `,`); `{claim: sub}` the
//! header `claim_headers` names, which jwt-auth sets from the verified token (and removes
//! from clients): put this filter after jwt-auth in the route's chain. A request without one
//! of a limit's headers or claims is not counted by that limit.
//!
//! Per request (`on_http_request_headers`), each limit that applies, in order, takes a token
//! from its key's bucket. The first that has none refuses: the tokens taken by the limits
//! before it are given back, and the client gets `429` with `Retry-After` (seconds until that
//! bucket has a token), `RateLimit-Policy` and `RateLimit` (draft-ietf-httpapi-ratelimit-
//! headers-07: `RateLimit-Policy: 10;w=1;burst=20, 1000;w=3600` lists every limit that
//! applies; `RateLimit: limit=10, remaining=0, reset=<Retry-After>`) and the body
//! `{"error":"rate_limited","limit":"<name>","retry_after":<seconds>}`. With `headers:
//! always`, admitted responses get `RateLimit-Policy` and `RateLimit` for the limit with the
//! fewest tokens left (`reset`: seconds until its bucket is full). With `dry_run: true` a
//! refusal is counted and logged (`rate-limit: dry run: limit `x` would refuse ...`, info)
//! and the request goes on, without rate-limit headers; buckets drain exactly as if enforced.
//!
//! Buckets live in shared data ([`table`]): a fixed table per limit of `capacity` keys
//! (rows of four entries), made when the filter is configured, updated by compare-and-swap
//! (no update is lost between workers or instances); memory does not grow with the number of
//! keys. A key whose bucket has refilled is expired and its entry reused; when a row holds
//! four live buckets, the fullest is evicted (counted). A table that cannot be updated
//! (32 CAS attempts lost, a store error) lets the request through untracked, counted and
//! logged (warn).
//!
//! Metrics (per limit): `wasmcustom_rate_limit_requests{filter, limit, outcome}` with
//! `outcome` `admitted`, `refused`, `dry_run_refused` or `untracked`, and
//! `wasmcustom_rate_limit_evictions{filter, limit}`.
//!
//! The logic ([`config`], [`bucket`], [`key`], [`table`], [`limiter`]) is free of the SDK and
//! unit-tested natively (`cargo test` in `filters/`); only the glue below talks to the host.

pub mod bucket;
pub mod config;
pub mod key;
pub mod limiter;
pub mod table;

use std::rc::Rc;
use std::time::UNIX_EPOCH;

use filter_support::host::{self, Status};
use filter_support::root::{Configured, ConfiguredRoot};
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::{Action, LogLevel};

use crate::config::Config;
use crate::limiter::{Decision, Event, Limiter, Outcome};
use crate::table::{SetError, SharedStore, Verdict};

const NAME: &str = "rate-limit";

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| ConfiguredRoot::<Filter>::boxed());
}}

/// The limits and their metrics, shared by every request's context.
struct Filter {
    limiter: Limiter,
    metrics: Metrics,
}

impl Configured for Filter {
    const NAME: &'static str = NAME;

    fn configure(config: Option<&[u8]>) -> Result<Filter, String> {
        let config = Config::parse(config.unwrap_or_default())?;
        // Tables are per filter: two filters of this module (one VM id) never share buckets.
        let filter_name = filter_support::property(NAME, &["plugin_name"])
            .map(|name| String::from_utf8_lossy(&name).into_owned())
            .unwrap_or_else(|| NAME.to_owned());
        let limiter = Limiter::new(config, &filter_name);
        limiter.create_tables(&HostStore).map_err(|err| {
            format!(
                "{err} (lower the limits' `capacity`, or give this filter a `vm_id` of its own: \
                 shared data holds 64 MiB per VM id)"
            )
        })?;
        let metrics = Metrics::define(&limiter);
        Ok(Filter { limiter, metrics })
    }

    fn http_context(filter: &Rc<Filter>) -> Box<dyn HttpContext> {
        Box::new(RateLimit {
            filter: Rc::clone(filter),
            response_headers: Vec::new(),
        })
    }
}

struct RateLimit {
    filter: Rc<Filter>,
    /// Set on the response of an admitted request (`headers: always`).
    response_headers: Vec<(&'static str, String)>,
}

impl Context for RateLimit {}

impl HttpContext for RateLimit {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let Some(now) = now_nanos() else {
            log::warn!("{NAME}: the host gave no time; request let through unlimited");
            return Action::Continue;
        };
        let limiter = &self.filter.limiter;
        let outcome = limiter.check(&HostStore, now, |path| filter_support::property(NAME, path));
        for (limit, event) in limiter.events(&outcome) {
            self.filter.metrics.count(limit, event);
        }
        log_outcome(limiter, &outcome);
        match limiter.decide(&outcome) {
            Decision::Admit { response_headers } => {
                self.response_headers = response_headers;
                Action::Continue
            }
            Decision::Refuse { headers, body } => {
                let headers = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
                if let Err(status) =
                    hostcalls::send_http_response(429, headers, Some(body.as_bytes()))
                {
                    log::warn!("{NAME}: sending the 429 failed: {status:?}");
                }
                Action::Pause
            }
        }
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        for (name, value) in &self.response_headers {
            self.set_http_response_header(name, Some(value));
        }
        Action::Continue
    }
}

/// Nanoseconds since the epoch, by the host's clock.
fn now_nanos() -> Option<u64> {
    let now = hostcalls::get_current_time().ok()?;
    u64::try_from(now.duration_since(UNIX_EPOCH).ok()?.as_nanos()).ok()
}

fn log_outcome(limiter: &Limiter, outcome: &Outcome) {
    let dry_run = limiter.config.dry_run;
    for applied in &outcome.applied {
        let Some(limit) = limiter.limit(applied.limit) else {
            continue;
        };
        let key = || key::describe(&limit.key, &applied.values);
        match &applied.verdict {
            Some(Verdict::Refused { retry_after_secs }) if dry_run => log::info!(
                "{NAME}: dry run: limit `{}` would refuse {} (retry after {retry_after_secs} s)",
                limit.name,
                key()
            ),
            Some(Verdict::Refused { retry_after_secs }) => log::debug!(
                "{NAME}: limit `{}` refused {} (retry after {retry_after_secs} s)",
                limit.name,
                key()
            ),
            Some(Verdict::Untracked(why)) => log::warn!(
                "{NAME}: limit `{}`: request let through untracked: {why}",
                limit.name
            ),
            Some(Verdict::Admitted { evicted: true, .. }) => log::debug!(
                "{NAME}: limit `{}`: its table's row was full; evicted the fullest bucket for {}",
                limit.name,
                key()
            ),
            _ => {}
        }
    }
    for (limit, why) in &outcome.give_back_failures {
        let name = limiter.limit(*limit).map_or("?", |l| l.name.as_str());
        log::warn!("{NAME}: limit `{name}`: a token taken for a refused request is lost: {why}");
    }
}

/// Each limit's counters, defined once per instance (every instance gets the same ones).
struct Metrics {
    /// Per limit, the counter of each event of [`Event::ALL`], in that order (`None`: the
    /// host refused to define it).
    counters: Vec<[Option<u32>; Event::ALL.len()]>,
}

impl Metrics {
    fn define(limiter: &Limiter) -> Metrics {
        let counters = limiter
            .config
            .limits
            .iter()
            .map(|limit| {
                Event::ALL.map(|event| {
                    let name = metric_name(&limit.name, event);
                    match host::define_counter(&name) {
                        Ok(id) => Some(id),
                        Err(status) => {
                            log::warn!("{NAME}: the host refused metric `{name}`: {status}");
                            None
                        }
                    }
                })
            })
            .collect();
        Metrics { counters }
    }

    fn count(&self, limit: usize, event: Event) {
        let at = Event::ALL.iter().position(|e| *e == event);
        let id = self
            .counters
            .get(limit)
            .zip(at)
            .and_then(|(ids, at)| ids.get(at).copied().flatten());
        if let Some(id) = id {
            // A counter the host defined takes increments; nothing to do if it did not.
            let _ = hostcalls::increment_metric(id, 1);
        }
    }
}

/// The metric's name, its labels as tags (see docs/filters.md, Metrics).
fn metric_name(limit: &str, event: Event) -> String {
    let outcome = match event {
        Event::Admitted => "admitted",
        Event::Refused => "refused",
        Event::DryRunRefused => "dry_run_refused",
        Event::Untracked => "untracked",
        Event::Evicted => return format!("rate_limit_evictions_limit={limit}"),
    };
    format!("rate_limit_requests_limit={limit}_outcome={outcome}")
}

/// Shared data of this filter's VM id.
struct HostStore;

impl SharedStore for HostStore {
    fn get(&self, key: &str) -> Option<(Vec<u8>, Option<u32>)> {
        match hostcalls::get_shared_data(key) {
            Ok((Some(value), cas)) => Some((value, cas)),
            Ok((None, _)) | Err(_) => None,
        }
    }

    fn set(&self, key: &str, value: &[u8], cas: u32) -> Result<(), SetError> {
        match host::set_shared_data(key, value, cas) {
            Ok(()) => Ok(()),
            Err(Status::CAS_MISMATCH) => Err(SetError::CasMismatch),
            Err(Status::BAD_ARGUMENT) => Err(SetError::Refused(
                "BAD_ARGUMENT (a value or the VM id's store too large)".to_owned(),
            )),
            Err(status) => Err(SetError::Refused(status.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_names_carry_the_limit_and_outcome_as_tags() {
        assert_eq!(
            metric_name("per-client", Event::DryRunRefused),
            "rate_limit_requests_limit=per-client_outcome=dry_run_refused"
        );
        assert_eq!(
            metric_name("per_client", Event::Evicted),
            "rate_limit_evictions_limit=per_client"
        );
    }
}
