//! `Edge`, the Pingora `ProxyHttp` implementation: a thin conductor. Each hook asks a module
//! (routing, upstream, cache, the filter host, the access log) what to do and applies the
//! answer; the work is in the files beside this one.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use bytes::Bytes;
use http::header;
use pingora::cache::key::HashBinary;
use pingora::cache::{CacheKey, CacheMeta, NoCacheReason, RespCacheable};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::modules::http::HttpModules;
use pingora::prelude::*;
use pingora::proxy::{FailToProxy, RangeType};
use pingora::upstreams::peer::Peer;
use pingora::ErrorType;

use super::answers::{self, Refusal};
use super::context::RequestCtx;
use super::forwarding;
use super::{caching, failures, filtering, logging, purge};
use crate::access_log::AccessLogger;
use crate::answer::REQUEST_ID;
use crate::body_length::DeclaredLength;
use crate::cache::{self, Cache};
use crate::config::{ResponsePhase, Route, RouteCache};
use crate::connections;
use crate::metrics;
use crate::request_buffering;
use crate::routing::request_host;
use crate::runtime::Generations;
use crate::wasm::FilterChain;

pub(crate) struct Edge {
    /// Routes, upstreams, filters and the geo database: each request takes the generation
    /// serving when it starts and keeps it to its end.
    generations: Arc<Generations>,
    /// Plain-HTTP listeners that send every request to HTTPS, and the HTTPS port; empty on
    /// most configurations, which then spend nothing on it.
    redirects: Vec<(SocketAddr, u16)>,
    cache: Option<Arc<Cache>>,
    access_log: AccessLogger,
    inflight: Arc<AtomicUsize>,
    /// Set when the process drains (or hands its listeners over): responses then close their
    /// connections, so that clients move to a fresh one between requests rather than have an
    /// idle one closed under them.
    draining: Arc<AtomicBool>,
}

impl Edge {
    pub(crate) fn new(
        generations: Arc<Generations>,
        redirects: Vec<(SocketAddr, u16)>,
        cache: Option<Arc<Cache>>,
        access_log: AccessLogger,
        draining: Arc<AtomicBool>,
    ) -> Self {
        Edge {
            generations,
            redirects,
            cache,
            access_log,
            inflight: Arc::new(AtomicUsize::new(0)),
            draining,
        }
    }

    /// Requests currently being served; graceful shutdown waits for this to reach zero.
    pub(crate) fn inflight(&self) -> Arc<AtomicUsize> {
        self.inflight.clone()
    }

    /// The HTTPS port, when the request came to a listener that redirects to HTTPS.
    fn redirect_port(&self, session: &Session) -> Option<u16> {
        let local = *session.server_addr()?.as_inet()?;
        connections::listener_at(&self.redirects, |(address, _)| *address, local)
            .map(|(_, port)| *port)
    }

    /// Serves the request on `route`: its upstream (unless a filter chose another), its cache
    /// policy, and the name the filters' properties show.
    fn take_route(&self, session: &Session, ctx: &mut RequestCtx, route: &Arc<Route>) {
        ctx.route = Some(route.clone());
        let chain = ctx.filters.chain.as_mut();
        let chosen = chain.as_ref().and_then(|chain| chain.upstream_override());
        ctx.upstream.chosen = Some(chosen.unwrap_or(route.upstream));
        if let Some(chain) = chain {
            let upstream = ctx.generation.upstreams.get(route.upstream).name();
            chain.rerouted(route, upstream);
        }
        ctx.cache = Default::default();
        if let Some(route_cache) = &route.cache {
            ctx.cache.bypass = cache::bypass_reason(session.req_header(), route_cache);
            ctx.cache.on = ctx.cache.bypass.is_none() && self.cache.is_some();
        }
    }

    fn upstream_name<'a>(&self, ctx: &'a RequestCtx) -> Option<&'a str> {
        ctx.upstream
            .chosen
            .map(|id| ctx.generation.upstreams.get(id).name())
    }

    /// The request's route's caching, when the cache is on for this request.
    fn route_cache<'a>(&self, ctx: &'a RequestCtx) -> Option<&'a RouteCache> {
        ctx.route
            .as_deref()
            .and_then(|r| r.cache.as_ref())
            .filter(|_| ctx.cache.on)
    }
}

#[async_trait]
impl ProxyHttp for Edge {
    type CTX = RequestCtx;

    /// None. Pingora's default adds a response-compression module at level 0, there for
    /// proxies that turn compression on per request; edgeward never does, and the idle module
    /// costs work on every request.
    fn init_downstream_modules(&self, _modules: &mut HttpModules) {}

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx::new(&self.inflight, self.generations.current())
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        connections::request_started(session.as_downstream_mut());
        if self.draining.load(Ordering::Relaxed) {
            session.set_keepalive(None);
        }
        ctx.request_id = forwarding::request_id(session.req_header());
        session
            .req_header_mut()
            .insert_header(REQUEST_ID, ctx.request_id.clone())?;
        if !self.redirects.is_empty() {
            if let Some(port) = self.redirect_port(session) {
                answers::redirect_to_https(session, &ctx.request_id, port).await?;
                return Ok(true);
            }
        }
        if let Some(cache) = self
            .cache
            .as_ref()
            .filter(|_| purge::is_purge(session.req_header()))
        {
            purge::purge_request(session, ctx, cache).await?;
            return Ok(true);
        }
        if let Some(problem) = forwarding::host_problem(session.req_header()) {
            // A malformed request ends its connection, as Pingora's own 400s do.
            session.set_keepalive(None);
            ctx.refusal = Some(Refusal::BadRequest);
            answers::refuse(session, &ctx.request_id, Refusal::BadRequest, problem).await?;
            return Ok(true);
        }
        let generation = ctx.generation.clone();
        let Some(route) = generation.routes.find(session.req_header()) else {
            return refuse_unrouted(session, ctx).await;
        };
        self.take_route(session, ctx, route);
        let info = || {
            let geo = generation.geo.as_ref();
            filtering::stream_info(session, ctx, route, geo, &generation.upstreams)
        };
        if let Some(chain) = generation.filters.chain(route, info, ctx.started) {
            if filtering::request_headers(session, ctx, chain).await? {
                return Ok(true);
            }
        }
        if ctx
            .filters
            .chain
            .as_mut()
            .is_some_and(FilterChain::take_route_cache_cleared)
        {
            // A filter changed what routing reads: the request goes where its head now
            // matches, with the filters it already went through.
            let Some(route) = generation.routes.find(session.req_header()) else {
                return refuse_unrouted(session, ctx).await;
            };
            self.take_route(session, ctx, route);
        }
        // RFC 9110 §10.1.1: the request goes on, so the client may send its body now.
        if forwarding::expects_continue(session.req_header())
            && !session.is_body_empty()
            && !ctx.continue_sent
        {
            session
                .as_downstream_mut()
                .write_continue_response()
                .await?;
        }
        request_buffering::read_small_body(session).await?;
        Ok(false)
    }

    async fn upstream_peer(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        let generation = ctx.generation.clone();
        let Some(upstream) = ctx.upstream.chosen.map(|id| generation.upstreams.get(id)) else {
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
        let Some(addr) = upstream.select(key, &ctx.upstream.failed_endpoints) else {
            ctx.refusal = Some(Refusal::NoHealthyEndpoint);
            return Error::e_explain(
                ErrorType::ConnectNoRoute,
                format!("upstream `{}` has no healthy endpoint", upstream.name()),
            );
        };
        ctx.upstream.endpoint = Some(addr);
        ctx.upstream.started = Some(Instant::now());
        if let Some(chain) = &mut ctx.filters.chain {
            chain.set_upstream_address(addr);
        }
        Ok(Box::new(upstream.peer(addr)))
    }

    /// The connection's local address, for filters (`upstream.local_address`); looked up
    /// (a system call) only when the route has filters.
    async fn connected_to_upstream(
        &self,
        _session: &mut Session,
        _reused: bool,
        _peer: &HttpPeer,
        #[cfg(unix)] _fd: std::os::unix::io::RawFd,
        #[cfg(windows)] _sock: std::os::windows::io::RawSocket,
        digest: Option<&pingora::protocols::Digest>,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if let Some(chain) = ctx.filters.chain.as_mut() {
            let local = digest
                .and_then(|d| d.socket_digest.as_ref())
                .and_then(|socket| socket.local_addr()?.as_inet().copied());
            if let Some(local) = local {
                chain.set_upstream_local_address(local);
            }
        }
        Ok(())
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        peer: &HttpPeer,
        ctx: &mut RequestCtx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        if let Some(addr) = peer.address().as_inet() {
            ctx.upstream.failed_endpoints.push(*addr);
        }
        let retries = ctx
            .upstream
            .chosen
            .map_or(0, |id| ctx.generation.upstreams.get(id).retries());
        e.set_retry(ctx.upstream.failed_endpoints.len() <= retries as usize);
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
        forwarding::rewrite_upstream_request(session, route, upstream_request)?;
        if ctx.filters.chain.is_some() && ctx.filters.request_has_body {
            ctx.filters.request_length = DeclaredLength::announce(&upstream_request.headers);
            ctx.filters
                .request_body
                .attempt_starts(session.as_downstream());
        }
        Ok(())
    }

    async fn request_body_filter(
        &self,
        session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        filtering::request_body(session, body, end_of_stream, ctx).await
    }

    fn request_cache_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<()> {
        if let Some(cache) = self.cache.as_ref().filter(|_| ctx.cache.on) {
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
        let freshened = caching::freshened_head(session, resp, &mut ctx.cache)?;
        let resp = freshened.as_ref().unwrap_or(resp);
        let (Some(route_cache), Some(cache)) = (self.route_cache(ctx), &self.cache) else {
            return Ok(RespCacheable::Uncacheable(NoCacheReason::NeverEnabled));
        };
        Ok(cache::admission(
            session.req_header(),
            resp,
            route_cache,
            cache.max_object(),
        ))
    }

    fn cache_not_modified_filter(
        &self,
        session: &Session,
        resp: &ResponseHeader,
        _ctx: &mut RequestCtx,
    ) -> Result<bool> {
        Ok(cache::policy::not_modified(session.req_header(), resp))
    }

    fn should_serve_stale(
        &self,
        _session: &mut Session,
        ctx: &mut RequestCtx,
        error: Option<&Error>,
    ) -> bool {
        caching::serve_stale(ctx, error)
    }

    fn range_header_filter(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> RangeType {
        // Filters see whole bodies: a route with response filters answers ranges in full.
        let filtered = ctx
            .filters
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
        ctx.upstream.status = Some(status);
        if let (Some(started), Some(upstream)) =
            (ctx.upstream.started.take(), self.upstream_name(ctx))
        {
            metrics::global()
                .upstream_latency
                .with_label_values(&[upstream])
                .observe(started.elapsed().as_secs_f64());
        }
        // Before the cache (RFC 9111 §3.1) and the filters: no one past this point sees them.
        forwarding::strip_hop_by_hop(upstream_response);
        if let Some(cache) = &self.cache {
            purge::invalidate_after(cache, session.req_header(), status);
        }
        filtering::response_head(session, upstream_response, ctx, ResponsePhase::BeforeCache)
            .await?;
        caching::keep_not_modified(session, upstream_response, &mut ctx.cache);
        Ok(())
    }

    fn upstream_response_body_filter(
        &self,
        session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<Option<std::time::Duration>> {
        let phase = ResponsePhase::BeforeCache;
        filtering::response_body(session, body, end_of_stream, ctx, phase)?;
        if let Some(cache) = &self.cache {
            caching::limit_object_size(session, ctx, body.as_ref(), cache);
        }
        Ok(None)
    }

    fn upstream_response_trailer_filter(
        &self,
        session: &mut Session,
        upstream_trailers: &mut http::HeaderMap,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        filtering::response_trailers_now(session, upstream_trailers, ctx)
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let via = forwarding::via(
            upstream_response.headers.get(header::VIA),
            session.req_header().version,
        );
        upstream_response.insert_header("via", via)?;
        if ctx.route.as_ref().is_some_and(|r| r.cache.is_some()) && self.cache.is_some() {
            caching::status_header(session, upstream_response, ctx)?;
        }
        filtering::response_head(session, upstream_response, ctx, ResponsePhase::AfterCache).await
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
        let phase = ResponsePhase::AfterCache;
        filtering::response_body(session, body, end_of_stream, ctx, phase)?;
        Ok(None)
    }

    async fn response_trailer_filter(
        &self,
        session: &mut Session,
        upstream_trailers: &mut http::HeaderMap,
        ctx: &mut RequestCtx,
    ) -> Result<Option<Bytes>> {
        filtering::response_trailers(session, upstream_trailers, ctx).await;
        Ok(None)
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut RequestCtx,
    ) -> FailToProxy {
        // The name lives in the generation, which the request's context holds: keep it apart.
        let generation = ctx.generation.clone();
        let upstream = ctx
            .upstream
            .chosen
            .map(|id| generation.upstreams.get(id).name());
        failures::answer(session, e, ctx, upstream).await
    }

    /// A client that went away is counted and logged at debug level (`fail_to_proxy`), not
    /// reported as an error of edgeward's.
    fn suppress_error_log(&self, _session: &Session, _ctx: &RequestCtx, error: &Error) -> bool {
        Refusal::from_error(error).is_none()
    }

    async fn logging(&self, session: &mut Session, _e: Option<&Error>, ctx: &mut RequestCtx) {
        connections::response_done(session.as_downstream());
        filtering::finish(session, ctx);
        logging::log_request(session, ctx, self.upstream_name(ctx), &self.access_log);
    }
}

/// Answers a request no route matches (`404`); `Ok(true)`: the request was answered.
async fn refuse_unrouted(session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
    let req = session.req_header();
    let host = request_host(req).unwrap_or("");
    let message = format!("no route matches {} {host}{}", req.method, req.uri.path());
    ctx.refusal = Some(Refusal::NoRoute);
    answers::refuse(session, &ctx.request_id, Refusal::NoRoute, &message).await?;
    Ok(true)
}
