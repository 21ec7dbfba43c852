//! The Pingora `ProxyHttp` implementation: a thin conductor. Each hook asks a room (routing,
//! upstream, access log) what to do and applies the answer; nothing clever happens here.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use http::{header, HeaderValue, Version};
use pingora::cache::key::HashBinary;
use pingora::cache::{CacheKey, CacheMeta, NoCacheReason, RespCacheable};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::modules::http::HttpModules;
use pingora::prelude::*;
use pingora::proxy::{FailToProxy, RangeType};
use pingora::upstreams::peer::Peer;
use pingora::{ErrorSource, ErrorType};

use crate::access_log::{self, AccessLogger};
use crate::body_length::{DeclaredLength, LengthMismatch};
use crate::cache::{self, Cache, Outcome, PurgeMode, PurgeTarget};
use crate::config::{ResponsePhase, Route, RouteCache, UpstreamId};
use crate::fields;
use crate::geo::Geo;
use crate::metrics;
use crate::request_buffering::RequestBuffer;
use crate::routing::{request_host, RouteTable};
use crate::upstream::Upstreams;
use crate::wasm::{FilterChain, FilterFailure, FilterHost, LocalResponse, StreamInfo, Verdict};

const REQUEST_ID: &str = "x-request-id";

pub struct Edge {
    routes: RouteTable,
    geo: Option<Arc<Geo>>,
    upstreams: Arc<Upstreams>,
    filters: FilterHost,
    cache: Option<Arc<Cache>>,
    access_log: AccessLogger,
    inflight: Arc<AtomicUsize>,
}

/// Per-request state carried between the hooks.
pub struct RequestCtx {
    started: Instant,
    request_id: HeaderValue,
    route: Option<Arc<Route>>,
    /// Endpoints that refused a connection for this request; retries go elsewhere.
    failed_endpoints: Vec<SocketAddr>,
    endpoint: Option<SocketAddr>,
    /// Set when edgeward answered on its own (no route, no endpoint, upstream failure).
    refusal: Option<Refusal>,
    /// The route's filters, when it has any.
    chain: Option<FilterChain>,
    /// Whether the request has a body for the filters to see.
    request_has_body: bool,
    /// A small request body, held until complete.
    request_buffer: RequestBuffer,
    /// The length the upstream request head announced, which the filtered body must keep.
    request_length: DeclaredLength,
    /// The response body as the filters of each phase see it.
    before_cache: BodyPhase,
    after_cache: BodyPhase,
    /// A filter's answer decided in a phase that cannot write it; `fail_to_proxy` does.
    pending_answer: Option<Answer>,
    /// The error code of a filter's failure, for the access log.
    filter_error: Option<&'static str>,
    /// When the upstream was chosen, until its response head arrives.
    upstream_started: Option<Instant>,
    /// The route's upstream, or the one a filter chose instead.
    upstream: Option<UpstreamId>,
    /// The status of the upstream's response head, when the upstream answered.
    upstream_status: Option<u16>,
    /// The cache is on for this request.
    caching: bool,
    /// Why the request skipped the cache of its route.
    cache_bypass: Option<&'static str>,
    /// What the cache did, once the response head is known.
    cache_outcome: Option<Outcome>,
    /// Body bytes received from the upstream, against the cache's object size limit.
    upstream_body_bytes: u64,
    _inflight: InflightGuard,
}

/// The response body as the filters of one response phase see it.
#[derive(Default)]
struct BodyPhase {
    /// There is a body for these filters to see.
    has_body: bool,
    /// A filter answered in this phase's head: its body replaces the response body, once.
    replaced: bool,
    replacement: Option<Bytes>,
    /// These filters were told the body ended.
    ended: bool,
    /// The length the head announced, which the filtered body must keep.
    length: DeclaredLength,
}

/// A response edgeward writes instead of the upstream's.
#[derive(Debug)]
enum Answer {
    Local(LocalResponse),
    FilterFailed(FilterFailure),
}

/// Counts a request as in flight for as long as its context lives (shutdown waits on it).
struct InflightGuard(Arc<AtomicUsize>);

impl Drop for InflightGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
        metrics::global().inflight.dec();
    }
}

/// Why edgeward answered a request itself. Each maps to one status and one JSON error code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    NoRoute,
    PurgeForbidden,
    NoHealthyEndpoint,
    UpstreamTimeout,
    UpstreamUnavailable,
    BadRequest,
    Internal,
}

impl Refusal {
    fn status(self) -> u16 {
        match self {
            Refusal::NoRoute => 404,
            Refusal::PurgeForbidden => 403,
            Refusal::NoHealthyEndpoint | Refusal::UpstreamUnavailable => 502,
            Refusal::UpstreamTimeout => 504,
            Refusal::BadRequest => 400,
            Refusal::Internal => 500,
        }
    }

    fn code(self) -> &'static str {
        match self {
            Refusal::NoRoute => "no_route",
            Refusal::PurgeForbidden => "purge_forbidden",
            Refusal::NoHealthyEndpoint => "no_healthy_endpoint",
            Refusal::UpstreamTimeout => "upstream_timeout",
            Refusal::UpstreamUnavailable => "upstream_unavailable",
            Refusal::BadRequest => "bad_request",
            Refusal::Internal => "internal_error",
        }
    }

    /// What a proxying error means for the client.
    fn from_error(e: &Error) -> Option<Refusal> {
        use ErrorType::*;
        Some(match (e.esource(), e.etype()) {
            (
                ErrorSource::Upstream | ErrorSource::Unset,
                ConnectTimedout | ReadTimedout | WriteTimedout,
            ) => Refusal::UpstreamTimeout,
            (ErrorSource::Upstream, _) => Refusal::UpstreamUnavailable,
            (_, ConnectRefused | ConnectNoRoute | ConnectError | ConnectProxyFailure) => {
                Refusal::UpstreamUnavailable
            }
            // The client went away: there is nobody to answer.
            (ErrorSource::Downstream, ReadError | WriteError | ConnectionClosed) => return None,
            (ErrorSource::Downstream, _) => Refusal::BadRequest,
            _ => Refusal::Internal,
        })
    }
}

impl Edge {
    pub fn new(
        routes: RouteTable,
        upstreams: Arc<Upstreams>,
        filters: FilterHost,
        geo: Option<Arc<Geo>>,
        cache: Option<Arc<Cache>>,
        access_log: AccessLogger,
    ) -> Self {
        Edge {
            routes,
            geo,
            upstreams,
            filters,
            cache,
            access_log,
            inflight: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// Requests currently being served; graceful shutdown waits for this to reach zero.
    pub fn inflight(&self) -> Arc<AtomicUsize> {
        self.inflight.clone()
    }

    async fn refuse(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        refusal: Refusal,
        message: &str,
    ) -> Result<()> {
        ctx.refusal = Some(refusal);
        let body = serde_json::json!({
            "error": refusal.code(),
            "status": refusal.status(),
            "message": message,
            "request_id": ctx.request_id.to_str().unwrap_or_default(),
        })
        .to_string();
        write_json(session, ctx, refusal.status(), body).await
    }

    /// Writes a filter's answer as the whole response.
    async fn answer(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        answer: Answer,
    ) -> Result<()> {
        let (head, body) = answer_response(&answer, &ctx.request_id)?;
        if let Answer::FilterFailed(failure) = &answer {
            ctx.filter_error = Some(failure.code);
        }
        session.write_response_header(Box::new(head), false).await?;
        session.write_response_body(Some(body), true).await?;
        drain_unread_body(session).await;
        Ok(())
    }

    /// Runs what a filter chain decided for the request phases: `Ok(true)` when the request
    /// was answered (or closed) here.
    async fn settle_request(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        verdict: Verdict,
    ) -> Result<bool> {
        match verdict {
            Verdict::Continue => Ok(false),
            Verdict::Respond(response) => self
                .answer(session, ctx, Answer::Local(response))
                .await
                .map(|()| true),
            Verdict::Fail(failure) => self
                .answer(session, ctx, Answer::FilterFailed(failure))
                .await
                .map(|()| true),
            Verdict::Close => Err(closed_by_filter()),
        }
    }

    fn upstream_name(&self, ctx: &RequestCtx) -> Option<&str> {
        ctx.upstream.map(|id| self.upstreams.get(id).name())
    }

    /// The request's route's caching, when the cache is on for this request.
    fn route_cache<'a>(&self, ctx: &'a RequestCtx) -> Option<&'a RouteCache> {
        ctx.route
            .as_deref()
            .and_then(|r| r.cache.as_ref())
            .filter(|_| ctx.caching)
    }

    /// Answers a `PURGE` request: removes every cached object of its URL (all variants), or
    /// marks them stale with `Soft-Purge: 1`.
    async fn purge_request(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        cache: &Cache,
    ) -> Result<()> {
        let client = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip());
        if !cache.may_purge(client) {
            let message = "PURGE is not allowed from this address (see `cache.purge_allowed_from`)";
            return self
                .refuse(session, ctx, Refusal::PurgeForbidden, message)
                .await;
        }
        let req = session.req_header();
        let soft = ["soft-purge", "fastly-soft-purge"]
            .iter()
            .any(|name| req.headers.get(*name).is_some_and(|v| v.as_bytes() == b"1"));
        let mode = if soft {
            PurgeMode::Soft
        } else {
            PurgeMode::Hard
        };
        let url = cache::ObjectUrl::of(req);
        let target = PurgeTarget::Url {
            host: Some(url.host),
            path_and_query: url.path_and_query,
        };
        let purged = cache.purge(&target, mode, "url");
        let body = serde_json::json!({"purged": purged, "mode": mode.as_str()}).to_string();
        write_json(session, ctx, 200, body).await
    }

    /// Runs a response head through the filters of `phase`. A filter's answer replaces the
    /// head here, and the body in the same phase.
    async fn filter_response_head(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut RequestCtx,
        phase: ResponsePhase,
    ) -> Result<()> {
        let Some(chain) = ctx.chain.as_mut().filter(|c| c.has_response_phase(phase)) else {
            return Ok(());
        };
        let end_of_stream = !response_has_body(session.req_header(), resp);
        let verdict = chain
            .on_response_headers(phase, session.req_header_mut(), resp, end_of_stream)
            .await;
        let body = match phase {
            ResponsePhase::BeforeCache => &mut ctx.before_cache,
            ResponsePhase::AfterCache => &mut ctx.after_cache,
        };
        body.has_body = !end_of_stream;
        let answer = match verdict {
            Verdict::Continue => {
                if body.has_body {
                    body.length = DeclaredLength::announce(&resp.headers);
                    // A filter that removed the length gets the body chunked (HTTP/1.1) or
                    // framed (HTTP/2).
                    let unframed_h1 = phase == ResponsePhase::AfterCache
                        && session.req_header().version != Version::HTTP_2
                        && !resp.headers.contains_key(header::CONTENT_LENGTH)
                        && !resp.headers.contains_key(header::TRANSFER_ENCODING);
                    if unframed_h1 {
                        resp.insert_header(header::TRANSFER_ENCODING, "chunked")?;
                    }
                }
                return Ok(());
            }
            Verdict::Close => return Err(closed_by_filter()),
            Verdict::Respond(response) => Answer::Local(response),
            Verdict::Fail(failure) => Answer::FilterFailed(failure),
        };
        // The head has not left yet: replace it, and the body after it.
        let (head, replacement) = answer_response(&answer, &ctx.request_id)?;
        if let Answer::FilterFailed(failure) = &answer {
            ctx.filter_error = Some(failure.code);
        }
        *resp = head;
        body.replaced = true;
        body.replacement = Some(replacement);
        Ok(())
    }

    /// Runs a response body chunk through the filters of `phase`.
    fn filter_response_body(
        &self,
        session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut RequestCtx,
        phase: ResponsePhase,
    ) -> Result<()> {
        let state = match phase {
            ResponsePhase::BeforeCache => &mut ctx.before_cache,
            ResponsePhase::AfterCache => &mut ctx.after_cache,
        };
        if state.replaced {
            // A filter's answer replaced the response: its body once, never the upstream's.
            *body = Some(state.replacement.take().unwrap_or_default());
            return Ok(());
        }
        let Some(chain) = ctx
            .chain
            .as_mut()
            .filter(|_| state.has_body && !state.ended)
        else {
            return Ok(());
        };
        state.ended = end_of_stream;
        let (data, verdict) =
            chain.on_response_body(phase, session.req_header_mut(), body.take(), end_of_stream);
        let length_kept = state.length.pass(data.len(), end_of_stream);
        *body = Some(data);
        match verdict {
            Verdict::Continue => length_kept.or_else(|mismatch| {
                // Answered in `fail_to_proxy` if the head has not left yet, else cut off.
                let failure = length_changed(ctx, &mismatch, "response");
                ctx.filter_error = Some(LENGTH_CHANGED);
                ctx.pending_answer = Some(Answer::FilterFailed(failure));
                Error::e_explain(ErrorType::HTTPStatus(500), "response body length changed")
            }),
            // The head is gone: the only honest ending is to cut the response short.
            Verdict::Close => Err(closed_by_filter()),
            Verdict::Respond(_) | Verdict::Fail(_) => {
                if let Verdict::Fail(failure) = &verdict {
                    ctx.filter_error = Some(failure.code);
                }
                log::warn!("a filter answered after the response head was sent ({verdict:?}); aborting the response");
                Error::e_explain(
                    ErrorType::InternalError,
                    "filter answered during the response body",
                )
            }
        }
    }

    fn stream_info(&self, session: &Session, ctx: &RequestCtx, route: &Route) -> StreamInfo {
        let client = session.client_addr().and_then(|a| a.as_inet()).copied();
        let effective_address = client.map(|peer| match &self.geo {
            Some(geo) => {
                let forwarded = session.req_header().headers.get_all("x-forwarded-for");
                geo.client_address(peer.ip(), forwarded.iter().filter_map(|v| v.to_str().ok()))
            }
            None => peer.ip(),
        });
        StreamInfo {
            client,
            effective_address,
            geo: self.geo.clone(),
            server: session.server_addr().and_then(|a| a.as_inet()).copied(),
            protocol: protocol_name(session.req_header().version),
            request_id: ctx.request_id.to_str().unwrap_or_default().to_string(),
            route: Arc::from(route.name.as_str()),
            upstream: Arc::from(self.upstreams.get(route.upstream).name()),
            started: SystemTime::now() - ctx.started.elapsed(),
            started_at: ctx.started,
            ..StreamInfo::default()
        }
    }
}

#[async_trait]
impl ProxyHttp for Edge {
    type CTX = RequestCtx;

    /// None. Pingora's default adds a response-compression module at level 0, there for
    /// proxies that turn compression on per request; edgeward never does, and the idle module
    /// cost an allocation and five dynamic calls per request.
    fn init_downstream_modules(&self, _modules: &mut HttpModules) {}

    fn new_ctx(&self) -> RequestCtx {
        self.inflight.fetch_add(1, Ordering::AcqRel);
        metrics::global().inflight.inc();
        RequestCtx {
            started: Instant::now(),
            request_id: HeaderValue::from_static(""),
            route: None,
            failed_endpoints: Vec::new(),
            endpoint: None,
            refusal: None,
            chain: None,
            request_has_body: false,
            request_buffer: RequestBuffer::default(),
            request_length: DeclaredLength::default(),
            before_cache: BodyPhase::default(),
            after_cache: BodyPhase::default(),
            pending_answer: None,
            filter_error: None,
            upstream_started: None,
            upstream: None,
            upstream_status: None,
            caching: false,
            cache_bypass: None,
            cache_outcome: None,
            upstream_body_bytes: 0,
            _inflight: InflightGuard(self.inflight.clone()),
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        ctx.request_id = request_id(session.req_header());
        session
            .req_header_mut()
            .insert_header(REQUEST_ID, ctx.request_id.clone())?;
        if let Some(cache) = self
            .cache
            .as_ref()
            .filter(|_| is_purge(session.req_header()))
        {
            self.purge_request(session, ctx, cache).await?;
            return Ok(true);
        }
        match self.routes.find(session.req_header()) {
            Some(route) => {
                ctx.route = Some(route.clone());
                ctx.upstream = Some(route.upstream);
                ctx.request_buffer = RequestBuffer::for_request(&session.req_header().headers);
                if let Some(route_cache) = &route.cache {
                    ctx.cache_bypass = cache::bypass_reason(session.req_header(), route_cache);
                    ctx.caching = ctx.cache_bypass.is_none() && self.cache.is_some();
                }
                let info = || self.stream_info(session, ctx, route);
                let Some(mut chain) = self.filters.chain(route, info, ctx.started) else {
                    return Ok(false);
                };
                let end_of_stream = session.is_body_empty();
                ctx.request_has_body = !end_of_stream;
                let verdict = chain
                    .on_request_headers(session.req_header_mut(), end_of_stream)
                    .await;
                // A filter may have chosen another upstream (`route.upstream`).
                if let Some(upstream) = chain.upstream_override() {
                    ctx.upstream = Some(upstream);
                }
                ctx.chain = Some(chain);
                self.settle_request(session, ctx, verdict).await
            }
            None => {
                let req = session.req_header();
                let message = format!(
                    "no route matches {} {}{}",
                    req.method,
                    request_host(req).unwrap_or(""),
                    req.uri.path()
                );
                self.refuse(session, ctx, Refusal::NoRoute, &message)
                    .await?;
                Ok(true)
            }
        }
    }

    async fn upstream_peer(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        let Some(upstream) = ctx.upstream.map(|id| self.upstreams.get(id)) else {
            return Error::e_explain(
                ErrorType::InternalError,
                "no upstream chosen before endpoint selection",
            );
        };
        let key = session
            .req_header()
            .uri
            .path_and_query()
            .map_or(b"/".as_slice(), |pq| pq.as_str().as_bytes());
        match upstream.select(key, &ctx.failed_endpoints) {
            Some(addr) => {
                ctx.endpoint = Some(addr);
                ctx.upstream_started = Some(Instant::now());
                if let Some(chain) = &mut ctx.chain {
                    chain.set_upstream_address(addr);
                }
                Ok(Box::new(upstream.peer(addr)))
            }
            None => {
                ctx.refusal = Some(Refusal::NoHealthyEndpoint);
                Error::e_explain(
                    ErrorType::ConnectNoRoute,
                    format!("upstream `{}` has no healthy endpoint", upstream.name()),
                )
            }
        }
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        peer: &HttpPeer,
        ctx: &mut RequestCtx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        if let Some(addr) = peer.address().as_inet() {
            ctx.failed_endpoints.push(*addr);
        }
        let retries = ctx
            .upstream
            .map_or(0, |id| self.upstreams.get(id).retries());
        e.set_retry(ctx.failed_endpoints.len() <= retries as usize);
        e
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let Some(route) = &ctx.route else {
            return Ok(());
        };
        if let Some(prefix) = &route.strip_prefix {
            let stripped = strip_path_prefix(&upstream_request.uri, prefix);
            upstream_request.set_uri(stripped);
        }
        if let Some(host) = &route.host_rewrite {
            // Origin-form URI, so that an HTTP/2 `:authority` cannot override the new Host.
            let origin_form = upstream_request
                .uri
                .path_and_query()
                .map_or("/", |pq| pq.as_str())
                .parse::<http::Uri>()
                .map_err(|e| Error::because(ErrorType::InternalError, "origin-form URI", e))?;
            upstream_request.set_uri(origin_form);
            upstream_request.insert_header(header::HOST, host.clone())?;
        }
        if ctx.chain.is_some() && ctx.request_has_body {
            ctx.request_length = DeclaredLength::announce(&upstream_request.headers);
        }
        add_forwarding_headers(session, upstream_request)
    }

    async fn request_body_filter(
        &self,
        session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        // A small body goes on (to the filters and upstream) once complete.
        *body = ctx.request_buffer.pass(body.take(), end_of_stream);
        if !end_of_stream && body.as_ref().is_some_and(Bytes::is_empty) {
            return Ok(());
        }
        let Some(chain) = ctx.chain.as_mut().filter(|_| ctx.request_has_body) else {
            return Ok(());
        };
        // Held-back data is an empty chunk, never `None`, which would end the upstream body.
        let (data, verdict) = chain
            .on_request_body(session.req_header_mut(), body.take(), end_of_stream)
            .await;
        let length_kept = ctx.request_length.pass(data.len(), end_of_stream);
        *body = Some(data);
        let answer = match verdict {
            Verdict::Continue => match length_kept {
                Ok(()) => return Ok(()),
                Err(mismatch) => Answer::FilterFailed(length_changed(ctx, &mismatch, "request")),
            },
            Verdict::Close => return Err(closed_by_filter()),
            Verdict::Respond(response) => Answer::Local(response),
            Verdict::Fail(failure) => Answer::FilterFailed(failure),
        };
        // The request head already went upstream: abort it and answer in `fail_to_proxy`.
        let status = answer_status(&answer);
        ctx.pending_answer = Some(answer);
        Error::e_explain(
            ErrorType::HTTPStatus(status),
            "a filter answered during the request body",
        )
    }

    fn request_cache_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<()> {
        if let Some(cache) = self.cache.as_ref().filter(|_| ctx.caching) {
            cache.enable(&mut session.cache);
        }
        Ok(())
    }

    fn cache_key_callback(&self, session: &Session, ctx: &mut RequestCtx) -> Result<CacheKey> {
        match (self.route_cache(ctx), self.upstream_name(ctx)) {
            (Some(route_cache), Some(upstream)) => Ok(cache::cache_key(
                session.req_header(),
                &route_cache.key,
                upstream,
            )),
            _ => Error::e_explain(
                ErrorType::InternalError,
                "cache key without a caching route",
            ),
        }
    }

    fn cache_vary_filter(
        &self,
        meta: &CacheMeta,
        _ctx: &mut RequestCtx,
        req: &RequestHeader,
    ) -> Option<HashBinary> {
        cache::policy::variance(meta.headers(), req)
    }

    fn response_cache_filter(
        &self,
        session: &Session,
        resp: &ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<RespCacheable> {
        Ok(match (self.route_cache(ctx), &self.cache) {
            (Some(route_cache), Some(cache)) => {
                cache::admission(session.req_header(), resp, route_cache, cache.max_object())
            }
            _ => RespCacheable::Uncacheable(NoCacheReason::NeverEnabled),
        })
    }

    fn should_serve_stale(
        &self,
        _session: &mut Session,
        ctx: &mut RequestCtx,
        error: Option<&Error>,
    ) -> bool {
        // An upstream 5xx arrives here as an error (no response hook sees it), for
        // `Cache-Status: fwd-status`.
        if let Some(ErrorType::HTTPStatus(status)) = error.map(|e| e.etype()) {
            ctx.upstream_status = Some(*status);
        }
        // Whether the stored response's windows allow it was checked before this is asked.
        error.is_none_or(|e| {
            e.esource() == &ErrorSource::Upstream
                || matches!(
                    e.etype(),
                    ErrorType::HTTPStatus(500..=599)
                        | ErrorType::ConnectTimedout
                        | ErrorType::ConnectRefused
                        | ErrorType::ConnectNoRoute
                        | ErrorType::ConnectError
                        | ErrorType::ReadTimedout
                )
        })
    }

    fn range_header_filter(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> RangeType {
        // Filters see whole bodies: a route with response filters answers ranges in full.
        let filtered = ctx
            .chain
            .as_ref()
            .is_some_and(|c| c.has_response_phase(ResponsePhase::AfterCache));
        if filtered {
            return RangeType::None;
        }
        const MAX_RANGES: Option<usize> = Some(200);
        pingora::proxy::range_header_filter(session.req_header(), resp, MAX_RANGES)
    }

    async fn upstream_response_filter(
        &self,
        session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let status = upstream_response.status.as_u16();
        ctx.upstream_status = Some(status);
        if let (Some(started), Some(upstream)) =
            (ctx.upstream_started.take(), self.upstream_name(ctx))
        {
            metrics::global()
                .upstream_latency
                .with_label_values(&[upstream])
                .observe(started.elapsed().as_secs_f64());
        }
        // Before the cache (RFC 9111 §3.1) and the filters: no one past this point sees them.
        strip_hop_by_hop(upstream_response);
        let req = session.req_header();
        if let Some(cache) = &self.cache {
            // RFC 9111 §4.4: a successful unsafe request makes stored responses for its URL
            // invalid.
            if !req.method.is_safe() && (200..400).contains(&status) {
                let url = cache::ObjectUrl::of(req);
                let target = PurgeTarget::Url {
                    host: Some(url.host),
                    path_and_query: url.path_and_query,
                };
                cache.purge(&target, PurgeMode::Hard, "method");
            }
        }
        self.filter_response_head(session, upstream_response, ctx, ResponsePhase::BeforeCache)
            .await
    }

    fn upstream_response_body_filter(
        &self,
        session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<Option<std::time::Duration>> {
        self.filter_response_body(
            session,
            body,
            end_of_stream,
            ctx,
            ResponsePhase::BeforeCache,
        )?;
        if let Some(cache) = self.cache.as_ref().filter(|_| session.cache.enabled()) {
            // A response without a length that turns out too large streams through uncached.
            ctx.upstream_body_bytes += body.as_ref().map_or(0, |b| b.len() as u64);
            if ctx.upstream_body_bytes > cache.max_object() {
                session
                    .cache
                    .response_became_uncacheable(NoCacheReason::ResponseTooLarge);
                session.cache.disable(NoCacheReason::ResponseTooLarge);
            }
        }
        Ok(None)
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let via = via(
            upstream_response.headers.get(header::VIA),
            session.req_header().version,
        );
        upstream_response.insert_header("via", via)?;
        if ctx.route.as_ref().is_some_and(|r| r.cache.is_some()) && self.cache.is_some() {
            // Heads from the origin lost their hop-by-hop fields in `upstream_response_filter`;
            // a head from the cache may have been stored before that was done.
            strip_hop_by_hop(upstream_response);
            cache::strip_cdn_fields(upstream_response);
            let outcome = match ctx.cache_bypass {
                Some(detail) => Outcome::Bypass { detail },
                None => Outcome::from_phase(session.cache.phase(), ctx.upstream_status),
            };
            let ttl = outcome
                .served_from_cache()
                .then(|| session.cache.maybe_cache_meta().map(cache::ttl))
                .flatten();
            upstream_response.insert_header("cache-status", outcome.header_value(ttl))?;
            ctx.cache_outcome = Some(outcome);
        }
        self.filter_response_head(session, upstream_response, ctx, ResponsePhase::AfterCache)
            .await
    }

    fn response_body_filter(
        &self,
        session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<Option<std::time::Duration>> {
        // Bodies served from the cache after a revalidation or a stale-if-error do not end
        // with an end of stream here; the stored body running out is the end.
        let end_of_stream = end_of_stream || cache::body_fully_read(&mut session.cache);
        self.filter_response_body(session, body, end_of_stream, ctx, ResponsePhase::AfterCache)?;
        Ok(None)
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut RequestCtx,
    ) -> FailToProxy {
        if let Some(answer) = ctx.pending_answer.take() {
            let status = answer_status(&answer);
            if session.response_written().is_none() {
                if let Err(write_error) = self.answer(session, ctx, answer).await {
                    log::debug!("cannot send the filter's answer: {write_error}");
                }
            }
            return FailToProxy {
                error_code: status,
                can_reuse_downstream: false,
            };
        }
        let refusal = ctx.refusal.or_else(|| Refusal::from_error(e));
        let Some(refusal) = refusal else {
            return FailToProxy {
                error_code: 0,
                can_reuse_downstream: false,
            };
        };
        if let (
            Refusal::NoHealthyEndpoint | Refusal::UpstreamTimeout | Refusal::UpstreamUnavailable,
            Some(upstream),
        ) = (refusal, self.upstream_name(ctx))
        {
            metrics::global()
                .upstream_failures
                .with_label_values(&[upstream, refusal.code()])
                .inc();
        }
        if session.response_written().is_none() {
            let upstream = self.upstream_name(ctx).unwrap_or_default().to_string();
            let message = match refusal {
                Refusal::NoHealthyEndpoint => {
                    format!("upstream `{upstream}` has no healthy endpoint")
                }
                Refusal::UpstreamTimeout => format!("upstream `{upstream}` did not answer in time"),
                Refusal::UpstreamUnavailable => {
                    format!("upstream `{upstream}` failed: {}", e.etype().as_str())
                }
                Refusal::BadRequest => format!("bad request: {}", e.etype().as_str()),
                Refusal::NoRoute | Refusal::PurgeForbidden | Refusal::Internal => {
                    "internal error".to_string()
                }
            };
            if let Err(write_error) = self.refuse(session, ctx, refusal, &message).await {
                log::debug!("cannot send the error response: {write_error}");
            }
        }
        ctx.refusal = Some(refusal);
        FailToProxy {
            error_code: refusal.status(),
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, _e: Option<&Error>, ctx: &mut RequestCtx) {
        if let Some(chain) = ctx.chain.as_mut() {
            let sent = chain
                .needs_sent_response()
                .then(|| session.response_written().cloned())
                .flatten();
            chain.finish(session.req_header_mut(), sent);
        }
        let status = session.response_written().map_or(0, |r| r.status.as_u16());
        let route = ctx.route.as_deref().map_or("", |r| r.name.as_str());
        let duration = ctx.started.elapsed();
        let metrics = metrics::global();
        if let Some(outcome) = ctx.cache_outcome {
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
        if !self.access_log.is_on() {
            return;
        }
        let req = session.req_header();
        let route = ctx.route.as_deref();
        self.access_log.write(&access_log::Entry {
            time: SystemTime::now(),
            request_id: ctx.request_id.to_str().unwrap_or_default(),
            client: session.client_addr().and_then(|a| a.as_inet()).copied(),
            protocol: protocol_name(req.version),
            method: req.method.as_str(),
            host: request_host(req).unwrap_or(""),
            path: req.uri.path_and_query().map_or("/", |pq| pq.as_str()),
            status: session.response_written().map_or(0, |r| r.status.as_u16()),
            bytes_sent: session.body_bytes_sent(),
            bytes_received: session.body_bytes_read(),
            route: route.map(|r| r.name.as_str()),
            upstream: self.upstream_name(ctx),
            endpoint: ctx.endpoint,
            duration,
            error: ctx.refusal.map(Refusal::code).or(ctx.filter_error),
        });
    }
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

/// Answers with edgeward's own JSON (never cached), then reads what the client still sends.
async fn write_json(
    session: &mut Session,
    ctx: &RequestCtx,
    status: u16,
    body: String,
) -> Result<()> {
    let mut resp = ResponseHeader::build(status, Some(4))?;
    resp.insert_header(header::CONTENT_TYPE, "application/json")?;
    resp.insert_header(header::CACHE_CONTROL, "no-store")?;
    resp.insert_header(REQUEST_ID, ctx.request_id.clone())?;
    resp.set_content_length(body.len())?;
    session.write_response_header(Box::new(resp), false).await?;
    session
        .write_response_body(Some(Bytes::from(body)), true)
        .await?;
    drain_unread_body(session).await;
    Ok(())
}

/// `PURGE`, the method CDNs take for removing a URL from the cache.
fn is_purge(req: &RequestHeader) -> bool {
    req.method.as_str().eq_ignore_ascii_case("PURGE")
}

/// The access log's error code for a body whose length a filter changed under its head.
const LENGTH_CHANGED: &str = "body_length_changed";

/// Logs and explains a filtered body that broke its head's `Content-Length`: the message
/// cannot be finished honestly, so it ends (with a 500 if its head has not left yet).
fn length_changed(ctx: &RequestCtx, mismatch: &LengthMismatch, direction: &str) -> FilterFailure {
    let route_name = ctx.route.as_deref().map_or("", |r| r.name.as_str());
    let filters = ctx
        .chain
        .as_ref()
        .map(FilterChain::filter_names)
        .unwrap_or_default();
    log::warn!("route `{route_name}` (filters {filters}): the {direction} is cut off: {mismatch}");
    FilterFailure {
        filter: filters,
        status: 500,
        code: LENGTH_CHANGED,
        message: format!("the {direction} body: {mismatch}"),
    }
}

fn closed_by_filter() -> Box<Error> {
    Error::explain(ErrorType::ConnectionClosed, "a filter closed the stream").into_down()
}

/// Whether a response to this request carries a body (RFC 9110 §6.4.1).
fn response_has_body(req: &RequestHeader, resp: &ResponseHeader) -> bool {
    let status = resp.status.as_u16();
    req.method != http::Method::HEAD
        && !(100..200).contains(&status)
        && status != 204
        && status != 304
        && resp
            .headers
            .get(header::CONTENT_LENGTH)
            .is_none_or(|v| v.as_bytes() != b"0")
}

fn answer_status(answer: &Answer) -> u16 {
    match answer {
        Answer::Local(response) => response.status,
        Answer::FilterFailed(failure) => failure.status,
    }
}

/// The head and body of a filter's answer: its own response, or edgeward's JSON error
/// naming the filter.
fn answer_response(answer: &Answer, request_id: &HeaderValue) -> Result<(ResponseHeader, Bytes)> {
    match answer {
        Answer::Local(local) => {
            let mut head = ResponseHeader::build(local.status, Some(local.headers.len() + 1))?;
            for (name, value) in &local.headers {
                if let (Ok(name), Ok(value)) = (
                    http::HeaderName::from_bytes(name),
                    HeaderValue::from_bytes(value),
                ) {
                    head.append_header(name, value)?;
                }
            }
            head.remove_header(&header::TRANSFER_ENCODING);
            head.set_content_length(local.body.len())?;
            Ok((head, Bytes::copy_from_slice(&local.body)))
        }
        Answer::FilterFailed(failure) => {
            let body = serde_json::json!({
                "error": failure.code,
                "status": failure.status,
                "filter": failure.filter,
                "message": failure.message,
                "request_id": request_id.to_str().unwrap_or_default(),
            })
            .to_string();
            let mut head = ResponseHeader::build(failure.status, Some(4))?;
            head.insert_header(header::CONTENT_TYPE, "application/json")?;
            head.insert_header(header::CACHE_CONTROL, "no-store")?;
            head.insert_header(REQUEST_ID, request_id.clone())?;
            head.set_content_length(body.len())?;
            Ok((head, Bytes::from(body)))
        }
    }
}

/// Reads (and drops) what the client is still sending after it was answered early, for a
/// bounded time: closing with unread data makes the kernel reset the connection, and the
/// client would never see the answer.
async fn drain_unread_body(session: &mut Session) {
    const DRAIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
    let downstream = session.as_downstream_mut();
    if downstream.is_body_done() {
        return;
    }
    if tokio::time::timeout(DRAIN_TIMEOUT, downstream.drain_request_body())
        .await
        .is_err()
    {
        log::debug!("gave up draining a request body after {DRAIN_TIMEOUT:?}");
    }
}

/// Keeps a sane client-supplied request id (so traces join up), otherwise makes a new one.
fn request_id(req: &RequestHeader) -> HeaderValue {
    let supplied = req.headers.get(REQUEST_ID).filter(|v| {
        let b = v.as_bytes();
        !b.is_empty() && b.len() <= 128 && b.iter().all(|c| c.is_ascii_graphic())
    });
    match supplied {
        Some(v) => v.clone(),
        None => new_request_id(),
    }
}

fn new_request_id() -> HeaderValue {
    use std::cell::Cell;
    use std::hash::BuildHasher;
    thread_local! {
        // A randomly keyed hasher over a counter: unique, unpredictable, no syscall per id.
        static SOURCE: (std::collections::hash_map::RandomState, Cell<u64>) = Default::default();
    }
    let (a, b) = SOURCE.with(|(keys, counter)| {
        let n = counter.get();
        counter.set(n.wrapping_add(2));
        (keys.hash_one(n), keys.hash_one(n + 1))
    });
    let mut raw = [0u8; 16];
    raw[..8].copy_from_slice(&a.to_be_bytes());
    raw[8..].copy_from_slice(&b.to_be_bytes());
    let mut id = [0u8; 32];
    // 32 hex digits (of a slice exactly twice as long) are always a valid header value.
    match hex::encode_to_slice(raw, &mut id) {
        Ok(()) => HeaderValue::from_bytes(&id).unwrap_or(HeaderValue::from_static("0")),
        Err(_) => HeaderValue::from_static("0"),
    }
}

fn protocol_name(version: Version) -> &'static str {
    match version {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_11 => "HTTP/1.1",
        Version::HTTP_2 => "HTTP/2",
        Version::HTTP_3 => "HTTP/3",
        _ => "HTTP",
    }
}

/// `/api/users?x=1` with prefix `/api/` → `/users?x=1`; the result always starts with `/`.
fn strip_path_prefix(uri: &http::Uri, prefix: &str) -> http::Uri {
    let path = uri.path();
    let rest = path.strip_prefix(prefix).unwrap_or(path);
    let mut new = String::with_capacity(path.len() + 1);
    if !rest.starts_with('/') {
        new.push('/');
    }
    new.push_str(rest);
    if let Some(query) = uri.query() {
        new.push('?');
        new.push_str(query);
    }
    new.parse().unwrap_or_else(|_| uri.clone())
}

/// X-Forwarded-For (appended), X-Forwarded-Proto, X-Forwarded-Host and Via, as a proxy should.
fn add_forwarding_headers(session: &Session, upstream_request: &mut RequestHeader) -> Result<()> {
    let downstream = session.req_header();
    if let Some(client) = session.client_addr().and_then(|a| a.as_inet()) {
        let mut chain = String::with_capacity(48);
        let earlier = downstream.headers.get_all("x-forwarded-for");
        for hop in earlier.iter().filter_map(|v| v.to_str().ok()) {
            chain.push_str(hop);
            chain.push_str(", ");
        }
        // Writing to a String cannot fail.
        let _ = write!(chain, "{}", client.ip());
        upstream_request.insert_header("x-forwarded-for", chain)?;
    }
    upstream_request.insert_header("x-forwarded-proto", HeaderValue::from_static("http"))?;
    let original_host = match downstream.uri.authority() {
        Some(authority) => Some(HeaderValue::from_str(authority.as_str()).ok()),
        None => Some(downstream.headers.get(header::HOST).cloned()),
    }
    .flatten();
    if let Some(host) = original_host {
        upstream_request.insert_header("x-forwarded-host", host)?;
    }
    let via = via(downstream.headers.get(header::VIA), downstream.version);
    // Names as `&'static str`: a `HeaderName` makes Pingora copy its case, then parse it back.
    upstream_request.insert_header("via", via)
}

/// `existing` Via with this hop appended, e.g. `1.1 cdn, 1.1 edgeward`.
fn via(existing: Option<&HeaderValue>, version: Version) -> HeaderValue {
    // Static values: most requests and responses carry no Via, and need no formatting.
    let ours = match version {
        Version::HTTP_10 => "1.0 edgeward",
        Version::HTTP_2 => "2 edgeward",
        Version::HTTP_3 => "3 edgeward",
        _ => "1.1 edgeward",
    };
    existing
        .and_then(|v| v.to_str().ok())
        .and_then(|existing| HeaderValue::from_str(&format!("{existing}, {ours}")).ok())
        .unwrap_or(HeaderValue::from_static(ours))
}

/// Hop-by-hop response fields belong to the upstream connection, not the client's
/// (RFC 9110 §7.6.1). Pingora frames the downstream response itself.
fn strip_hop_by_hop(resp: &mut ResponseHeader) {
    const HOP_BY_HOP: [&str; 5] = [
        "connection",
        "keep-alive",
        "proxy-connection",
        "upgrade",
        "proxy-authenticate",
    ];
    if resp.status == http::StatusCode::SWITCHING_PROTOCOLS {
        return;
    }
    let nominated: Vec<String> = resp
        .headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| {
            !t.is_empty()
                && !["close", "keep-alive", "transfer-encoding", "content-length"]
                    .iter()
                    .any(|kept| t.eq_ignore_ascii_case(kept))
        })
        .map(str::to_ascii_lowercase)
        .collect();
    for name in nominated {
        resp.remove_header(&name);
    }
    fields::remove_fields(resp, &HOP_BY_HOP);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_stripping_keeps_a_leading_slash_and_the_query() {
        let uri: http::Uri = "/api/users?x=1".parse().unwrap();
        assert_eq!(strip_path_prefix(&uri, "/api/").to_string(), "/users?x=1");
        let uri: http::Uri = "/api".parse().unwrap();
        assert_eq!(strip_path_prefix(&uri, "/api").to_string(), "/");
    }

    #[test]
    fn request_ids_are_unique_hex() {
        let a = new_request_id();
        let b = new_request_id();
        assert_ne!(a, b);
        assert_eq!(a.len(), 32);
        assert!(a.as_bytes().iter().all(|c| c.is_ascii_hexdigit()));
    }

    #[test]
    fn via_appends_this_hop() {
        assert_eq!(via(None, Version::HTTP_2), "2 edgeward");
        let cdn = HeaderValue::from_static("1.0 cdn");
        assert_eq!(via(Some(&cdn), Version::HTTP_11), "1.0 cdn, 1.1 edgeward");
    }

    #[test]
    fn hop_by_hop_response_fields_are_removed() {
        let mut resp = ResponseHeader::build(200, None).unwrap();
        resp.insert_header("connection", "close, x-secret").unwrap();
        resp.insert_header("x-secret", "1").unwrap();
        resp.insert_header("keep-alive", "timeout=5").unwrap();
        resp.insert_header("x-kept", "1").unwrap();
        strip_hop_by_hop(&mut resp);
        assert!(resp.headers.get("x-secret").is_none());
        assert!(resp.headers.get("keep-alive").is_none());
        assert!(resp.headers.get("connection").is_none());
        assert_eq!(resp.headers.get("x-kept").unwrap(), "1");
    }
}
