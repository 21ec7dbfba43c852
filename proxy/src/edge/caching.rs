//! The cache's part in the response phases: the `Cache-Status` header, the object size limit
//! on bodies without a length, the stored head a revalidating `304` updates, and which failures
//! may be answered with a stale object.

use bytes::Bytes;
use pingora::cache::{CachePhase, NoCacheReason};
use pingora::http::ResponseHeader;
use pingora::prelude::*;
use pingora::{ErrorSource, ErrorType};

use super::context::{CacheState, RequestCtx};
use super::forwarding;
use crate::cache::{self, Cache, Outcome};

/// Readies a head on a caching route for the client: no hop-by-hop or CDN-only fields, and a
/// `Cache-Status` saying what the cache did.
pub(super) fn status_header(
    session: &Session,
    resp: &mut ResponseHeader,
    ctx: &mut RequestCtx,
) -> Result<()> {
    // Heads from the origin lost their hop-by-hop fields in `upstream_response_filter`; a head
    // from the cache may have been stored before that was done.
    forwarding::strip_hop_by_hop(resp);
    cache::strip_cdn_fields(resp);
    let outcome = match ctx.cache.bypass {
        Some(detail) => Outcome::Bypass { detail },
        None => Outcome::from_phase(session.cache.phase(), ctx.upstream.status),
    };
    let ttl = outcome
        .served_from_cache()
        .then(|| session.cache.maybe_cache_meta().map(cache::ttl))
        .flatten();
    resp.insert_header("cache-status", outcome.header_value(ttl))?;
    ctx.cache.outcome = Some(outcome);
    Ok(())
}

/// A response without a length that turns out too large streams through uncached.
pub(super) fn limit_object_size(
    session: &mut Session,
    ctx: &mut RequestCtx,
    chunk: Option<&Bytes>,
    cache: &Cache,
) {
    if !session.cache.enabled() {
        return;
    }
    ctx.upstream.body_bytes += chunk.map_or(0, |b| b.len() as u64);
    if ctx.upstream.body_bytes > cache.max_object() {
        session
            .cache
            .response_became_uncacheable(NoCacheReason::ResponseTooLarge);
        session.cache.disable(NoCacheReason::ResponseTooLarge);
    }
}

/// Whether a stored object may answer instead of the upstream after `error` (Pingora checked
/// the object's stale windows before asking).
pub(super) fn serve_stale(ctx: &mut RequestCtx, error: Option<&Error>) -> bool {
    // An upstream 5xx arrives here as an error (no response hook sees it), for
    // `Cache-Status: fwd-status`.
    if let Some(ErrorType::HTTPStatus(status)) = error.map(|e| e.etype()) {
        ctx.upstream.status = Some(*status);
    }
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

/// Keeps the origin's `304` to a revalidation of a stored response, for
/// [`freshened_head`]. Pingora only carries a few of its fields over to the stored response.
pub(super) fn keep_not_modified(
    session: &Session,
    response: &ResponseHeader,
    state: &mut CacheState,
) {
    if response.status == http::StatusCode::NOT_MODIFIED
        && session.cache.phase() == CachePhase::Stale
    {
        state.not_modified = Some(Box::new(response.clone()));
    }
}

/// During a revalidation answered `304`: the stored head (`stored`, as Pingora merged it) with
/// every field of the `304` applied (RFC 9111 §4.3.4), which is what gets stored and served.
/// `None` otherwise.
pub(super) fn freshened_head(
    session: &Session,
    stored: &ResponseHeader,
    state: &mut CacheState,
) -> Result<Option<ResponseHeader>> {
    match state.not_modified.take() {
        Some(not_modified) if session.cache.phase() == CachePhase::Stale => {
            cache::policy::freshen(stored, &not_modified).map(Some)
        }
        _ => Ok(None),
    }
}
