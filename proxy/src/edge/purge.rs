//! Removing objects from the cache by URL: `PURGE` requests, and the invalidation a successful
//! unsafe request causes (RFC 9111 §4.4).

use pingora::http::RequestHeader;
use pingora::prelude::*;

use super::answers::{self, Refusal};
use super::context::RequestCtx;
use crate::cache::{Cache, ObjectUrl, PurgeMode, PurgeTarget};

/// `PURGE`, the method CDNs take for removing a URL from the cache.
pub(super) fn is_purge(req: &RequestHeader) -> bool {
    req.method.as_str().eq_ignore_ascii_case("PURGE")
}

/// Answers a `PURGE` request: removes every cached object of its URL (all variants), or
/// marks them stale with `Soft-Purge: 1`.
pub(super) async fn purge_request(
    session: &mut Session,
    ctx: &mut RequestCtx,
    cache: &Cache,
) -> Result<()> {
    let client = session
        .client_addr()
        .and_then(|a| a.as_inet())
        .map(|a| a.ip());
    if !cache.may_purge(client) {
        let refusal = Refusal::PurgeForbidden;
        ctx.refusal = Some(refusal);
        let message = "PURGE is not allowed from this address (see `cache.purge_allowed_from`)";
        return answers::refuse(session, &ctx.request_id, refusal, message).await;
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
    let purged = cache.purge(&url_of(req), mode, "url");
    let body = serde_json::json!({"purged": purged, "mode": mode.as_str()});
    answers::send(session, crate::answer::json(200, &body, &ctx.request_id)?).await
}

/// RFC 9111 §4.4: a successful unsafe request makes stored responses for its URL invalid.
pub(super) fn invalidate_after(cache: &Cache, req: &RequestHeader, status: u16) {
    if !req.method.is_safe() && (200..400).contains(&status) {
        cache.purge(&url_of(req), PurgeMode::Hard, "method");
    }
}

/// Every object stored for the request's URL.
fn url_of(req: &RequestHeader) -> PurgeTarget {
    let url = ObjectUrl::of(req);
    PurgeTarget::Url {
        host: Some(url.host),
        path_and_query: url.path_and_query,
    }
}
