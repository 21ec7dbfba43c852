//! What a request carries from hook to hook.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::HeaderValue;
use pingora::http::ResponseHeader;

use super::answers::Refusal;
use crate::answer::Answer;
use crate::body_length::DeclaredLength;
use crate::cache::Outcome;
use crate::config::{ResponsePhase, Route, UpstreamId};
use crate::metrics;
use crate::request_buffering::FilteredBody;
use crate::runtime::Generation;
use crate::wasm::FilterChain;

pub(crate) struct RequestCtx {
    pub started: Instant,
    pub request_id: HeaderValue,
    pub route: Option<Arc<Route>>,
    /// Set when edgeward answered on its own (no route, no endpoint, upstream failure).
    pub refusal: Option<Refusal>,
    pub upstream: UpstreamState,
    pub cache: CacheState,
    pub filters: FilterState,
    /// The client was told to send its body (`100 Continue`).
    pub continue_sent: bool,
    /// The configuration this request runs on, from its start to its end.
    pub generation: Arc<Generation>,
    _inflight: InflightGuard,
}

/// The upstream side of a request.
#[derive(Default)]
pub(crate) struct UpstreamState {
    /// The route's upstream, or the one a filter chose instead.
    pub chosen: Option<UpstreamId>,
    /// Endpoints that refused a connection for this request; retries go elsewhere.
    pub failed_endpoints: Vec<SocketAddr>,
    pub endpoint: Option<SocketAddr>,
    /// When the endpoint was chosen, until its response head arrives.
    pub started: Option<Instant>,
    /// The status of the upstream's response head, when the upstream answered.
    pub status: Option<u16>,
    /// Body bytes received, against the cache's object size limit.
    pub body_bytes: u64,
    /// What went wrong with the upstream, for the access log, when it failed.
    pub failure: Option<String>,
}

/// What the cache does for a request.
#[derive(Default)]
pub(crate) struct CacheState {
    /// The cache is on for this request.
    pub on: bool,
    /// Why the request skipped the cache of its route.
    pub bypass: Option<&'static str>,
    /// What the cache did, once the response head is known.
    pub outcome: Option<Outcome>,
    /// The origin's `304` to a revalidation, whose fields update the stored response.
    pub not_modified: Option<Box<ResponseHeader>>,
}

/// The route's filter chain and what it decided.
#[derive(Default)]
pub(crate) struct FilterState {
    /// The route's filters, when it has any.
    pub chain: Option<FilterChain>,
    /// Whether the request has a body for the filters to see.
    pub request_has_body: bool,
    /// The length the upstream request head announced, which the filtered body must keep.
    pub request_length: DeclaredLength,
    /// The request body as the chain let it go, for Pingora's resends.
    pub request_body: FilteredBody,
    /// The response body as the filters of each phase see it.
    pub before_cache: BodyPhase,
    pub after_cache: BodyPhase,
    /// A filter's answer decided in a phase that cannot write it; `fail_to_proxy` does.
    pub pending_answer: Option<Answer>,
    /// The error code of a filter's failure, for the access log.
    pub error: Option<&'static str>,
    /// What answered the request when a filter did, for `response.code_details`.
    pub code_details: Option<String>,
}

/// The response body as the filters of one response phase see it.
#[derive(Default)]
pub(crate) struct BodyPhase {
    /// There is a body for these filters to see.
    pub has_body: bool,
    /// A filter answered in this phase's head: its body replaces the response body, once.
    pub replaced: bool,
    pub replacement: Option<Bytes>,
    /// These filters were told the body ended.
    pub ended: bool,
    /// The length the head announced, which the filtered body must keep.
    pub length: DeclaredLength,
}

impl FilterState {
    /// The chain, when some of its filters run in the response phase `phase`.
    pub(crate) fn chain_in(&mut self, phase: ResponsePhase) -> Option<&mut FilterChain> {
        self.chain
            .as_mut()
            .filter(|chain| chain.has_response_phase(phase))
    }

    /// Keeps the error code of a filter's failure for the access log, and what answered.
    pub(crate) fn note(&mut self, answer: &Answer) {
        if let Some(code) = answer.error_code() {
            self.error = Some(code);
        }
        self.code_details = Some(answer.code_details());
    }
}

impl RequestCtx {
    /// A new request's context; it counts in `inflight` for as long as it lives.
    pub(crate) fn new(inflight: &Arc<AtomicUsize>, generation: Arc<Generation>) -> Self {
        inflight.fetch_add(1, Ordering::AcqRel);
        metrics::global().inflight.inc();
        RequestCtx {
            started: Instant::now(),
            request_id: HeaderValue::from_static(""),
            route: None,
            refusal: None,
            upstream: UpstreamState::default(),
            cache: CacheState::default(),
            filters: FilterState::default(),
            continue_sent: false,
            generation,
            _inflight: InflightGuard(inflight.clone()),
        }
    }

    pub(crate) fn route_name(&self) -> &str {
        self.route.as_deref().map_or("", |r| r.name.as_str())
    }
}

/// Counts a request as in flight for as long as its context lives (shutdown waits on it).
struct InflightGuard(Arc<AtomicUsize>);

impl Drop for InflightGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
        metrics::global().inflight.dec();
    }
}
