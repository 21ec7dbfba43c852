//! The route's filter chain at each phase, and what its verdicts mean for the response: go
//! on, answer now, answer once the phase allows it, or cut the response short.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use http::{header, HeaderMap, Version};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;

use super::answers::{self, closed_by_filter};
use super::context::RequestCtx;
use super::forwarding::{self, protocol_name, scheme};
use crate::answer::Answer;
use crate::body_length::{DeclaredLength, LengthMismatch};
use crate::config::{ResponsePhase, Route};
use crate::geo::Geo;
use crate::request_buffering::{FilteredBody, HeldBody};
use crate::tls;
use crate::upstream::Upstreams;
use crate::wasm::{FilterChain, FilterFailure, StreamInfo, Verdict};

/// The access log's error code for a body whose length a filter changed under its head.
const LENGTH_CHANGED: &str = "body_length_changed";

/// The request facts the filters' properties expose.
pub(super) fn stream_info(
    session: &Session,
    ctx: &RequestCtx,
    route: &Route,
    geo: Option<&Arc<Geo>>,
    upstreams: &Upstreams,
) -> StreamInfo {
    let client = session.client_addr().and_then(|a| a.as_inet()).copied();
    let server = session.server_addr().and_then(|a| a.as_inet()).copied();
    let tls = session
        .digest()
        .and_then(|digest| digest.ssl_digest.as_ref());
    let effective_address = client.map(|peer| match geo {
        Some(geo) => {
            let forwarded = session.req_header().headers.get_all("x-forwarded-for");
            geo.client_address(peer.ip(), forwarded.iter().filter_map(|v| v.to_str().ok()))
        }
        None => peer.ip(),
    });
    StreamInfo {
        client,
        effective_address,
        geo: geo.cloned(),
        server,
        protocol: protocol_name(session.req_header().version),
        scheme: scheme(session),
        tls_version: tls.map(|ssl| ssl.version.clone()),
        requested_server_name: tls
            .zip(client.zip(server))
            .and_then(|(_, (client, server))| tls::requested_server_name(client, server)),
        request_id: ctx.request_id.to_str().unwrap_or_default().to_string(),
        route: Arc::from(route.name.as_str()),
        route_metadata: route.metadata.clone(),
        route_upstream: Some(route.upstream),
        upstream: Arc::from(upstreams.get(route.upstream).name()),
        started: SystemTime::now() - ctx.started.elapsed(),
        started_at: ctx.started,
        ..StreamInfo::default()
    }
}

/// Runs the request head through `chain`, which the request keeps: `Ok(true)` when the
/// request was answered here.
pub(super) async fn request_headers(
    session: &mut Session,
    ctx: &mut RequestCtx,
    mut chain: FilterChain,
) -> Result<bool> {
    let end_of_stream = session.is_body_empty();
    ctx.filters.request_has_body = !end_of_stream;
    // An upgrade's body belongs to the new protocol, once the upstream agreed.
    let verdict = if end_of_stream || session.is_upgrade_req() {
        chain
            .on_request_headers(session.req_header_mut(), end_of_stream)
            .await
    } else {
        let verdict = request_headers_reading(session, ctx, &mut chain).await;
        match verdict {
            Ok(verdict) => verdict,
            Err(client_failed) => {
                ctx.filters.chain = Some(chain);
                return Err(client_failed);
            }
        }
    };
    // A filter may have chosen another upstream (`route.upstream`).
    if let Some(upstream) = chain.upstream_override() {
        ctx.upstream.chosen = Some(upstream);
    }
    ctx.filters.chain = Some(chain);
    let answer = match verdict {
        Verdict::Continue => return Ok(false),
        Verdict::Respond(response) => Answer::Local(response),
        Verdict::Fail(failure) => Answer::FilterFailed(failure),
        Verdict::Close => return Err(closed_by_filter()),
    };
    send(session, ctx, answer).await.map(|()| true)
}

/// Runs the head of a request with a body through the chain, which reads the body while a
/// filter holds the head. The head leaves the session meanwhile (its body reader was set up
/// from it already); an error is the client's, met while reading.
async fn request_headers_reading(
    session: &mut Session,
    ctx: &mut RequestCtx,
    chain: &mut FilterChain,
) -> Result<Verdict> {
    let stand_in = RequestHeader::from(http::Request::new(()).into_parts().0);
    let mut req = std::mem::replace(session.req_header_mut(), stand_in);
    let continue_owed = forwarding::expects_continue(&req);
    let mut source = HeldBody::new(session.as_downstream_mut(), continue_owed);
    let verdict = chain
        .on_request_headers_reading(&mut req, &mut source)
        .await;
    ctx.continue_sent = continue_owed && source.continue_sent();
    let (read, failure) = source.finish();
    *session.req_header_mut() = req;
    if let Some(failure) = failure {
        return Err(failure);
    }
    if let Some((data, ended)) = chain.take_early_request_body() {
        ctx.filters.request_body = FilteredBody::read_early(read, data, ended);
    }
    Ok(verdict)
}

/// Writes a filter's answer as the whole response.
pub(super) async fn send(
    session: &mut Session,
    ctx: &mut RequestCtx,
    answer: Answer,
) -> Result<()> {
    ctx.filters.note(&answer);
    answers::send(session, answer.response(&ctx.request_id)?).await
}

/// Runs a request body chunk through the chain. A filter's answer aborts the upstream request
/// (its head already went) and is written by `fail_to_proxy`.
pub(super) async fn request_body(
    session: &mut Session,
    body: &mut Option<Bytes>,
    end_of_stream: bool,
    ctx: &mut RequestCtx,
) -> Result<()> {
    let Some(chain) = ctx
        .filters
        .chain
        .as_mut()
        .filter(|_| ctx.filters.request_has_body)
    else {
        return Ok(());
    };
    let resent = ctx.filters.request_body.take_resent(body);
    let fresh = body.take().unwrap_or_default();
    let fresh_len = fresh.len();
    let (data, verdict) = if ctx.filters.request_body.ended() {
        // Nothing follows the end the chain saw.
        (Bytes::new(), Verdict::Continue)
    } else if fresh.is_empty() && !end_of_stream {
        (fresh, Verdict::Continue)
    } else {
        chain
            .on_request_body(session.req_header_mut(), Some(fresh), end_of_stream)
            .await
    };
    ctx.filters
        .request_body
        .record(fresh_len, data.clone(), end_of_stream);
    let data = match resent {
        Some(resent) if data.is_empty() => resent,
        Some(resent) => [resent, data].concat().into(),
        None => data,
    };
    let length_kept = ctx.filters.request_length.pass(data.len(), end_of_stream);
    // Held-back data is an empty chunk, never `None`, which would end the upstream body.
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
    answer_later(ctx, answer, "a filter answered during the request body")
}

/// Keeps a filter's answer for `fail_to_proxy`, which writes it if the response head has not
/// left yet (else the response is cut short), and fails the phase with its status.
fn answer_later(ctx: &mut RequestCtx, answer: Answer, why: &'static str) -> Result<()> {
    let status = answer.status();
    ctx.filters.note(&answer);
    ctx.filters.pending_answer = Some(answer);
    Error::e_explain(ErrorType::HTTPStatus(status), why)
}

/// Runs a response head through the filters of `phase`. A filter's answer replaces the head
/// here, and the body in the same phase.
pub(super) async fn response_head(
    session: &mut Session,
    resp: &mut ResponseHeader,
    ctx: &mut RequestCtx,
    phase: ResponsePhase,
) -> Result<()> {
    let Some(chain) = ctx.filters.chain_in(phase) else {
        return Ok(());
    };
    let end_of_stream = !response_has_body(session.req_header(), resp);
    let verdict = chain
        .on_response_headers(phase, session.req_header_mut(), resp, end_of_stream)
        .await;
    let body = match phase {
        ResponsePhase::BeforeCache => &mut ctx.filters.before_cache,
        ResponsePhase::AfterCache => &mut ctx.filters.after_cache,
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
    let (head, replacement) = answer.response(&ctx.request_id)?;
    *resp = head;
    body.replaced = true;
    body.replacement = Some(replacement);
    ctx.filters.note(&answer);
    Ok(())
}

/// Runs a response body chunk through the filters of `phase`.
pub(super) fn response_body(
    session: &mut Session,
    body: &mut Option<Bytes>,
    end_of_stream: bool,
    ctx: &mut RequestCtx,
    phase: ResponsePhase,
) -> Result<()> {
    let state = match phase {
        ResponsePhase::BeforeCache => &mut ctx.filters.before_cache,
        ResponsePhase::AfterCache => &mut ctx.filters.after_cache,
    };
    if state.replaced {
        // A filter's answer replaced the response: its body once, never the upstream's.
        *body = Some(state.replacement.take().unwrap_or_default());
        return Ok(());
    }
    let Some(chain) = ctx
        .filters
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
    let answer = match verdict {
        Verdict::Continue => match length_kept {
            Ok(()) => return Ok(()),
            Err(mismatch) => Answer::FilterFailed(length_changed(ctx, &mismatch, "response")),
        },
        // The head is gone: the only honest ending is to cut the response short.
        Verdict::Close => return Err(closed_by_filter()),
        Verdict::Respond(response) => Answer::Local(response),
        Verdict::Fail(failure) => Answer::FilterFailed(failure),
    };
    // Pingora writes a response head together with the body chunks read with it, so the
    // head may not have left yet.
    answer_later(ctx, answer, "a filter answered during the response body")
}

/// Runs the response trailers through the filters of the after-cache phase (a pause waits).
/// Pingora sends trailers even when this hook fails: a filter that answers, fails or closes
/// the stream here ends the response without its trailers.
pub(super) async fn response_trailers(
    session: &mut Session,
    trailers: &mut HeaderMap,
    ctx: &mut RequestCtx,
) {
    let phase = ResponsePhase::AfterCache;
    let Some(chain) = ctx.filters.chain_in(phase) else {
        return;
    };
    let verdict = chain
        .on_response_trailers(phase, session.req_header_mut(), trailers)
        .await;
    let answer = match verdict {
        Verdict::Continue => return,
        Verdict::Close => None,
        Verdict::Respond(response) => Some(Answer::Local(response)),
        Verdict::Fail(failure) => Some(Answer::FilterFailed(failure)),
    };
    log::warn!(
        "route `{}`: a filter ended the response at its trailers; they are dropped",
        ctx.route_name()
    );
    if let Some(answer) = answer {
        ctx.filters.note(&answer);
    }
    trailers.clear();
}

/// Runs the response trailers through the filters of the before-cache phase, whose hook
/// cannot wait. The response is cut short when a filter answers, fails or closes the stream
/// here, or still holds some of the body.
pub(super) fn response_trailers_now(
    session: &mut Session,
    trailers: &mut HeaderMap,
    ctx: &mut RequestCtx,
) -> Result<()> {
    let Some(chain) = ctx.filters.chain.as_mut() else {
        return Ok(());
    };
    let phase = ResponsePhase::BeforeCache;
    let answer = match chain.on_response_trailers_now(phase, session.req_header_mut(), trailers) {
        Verdict::Continue => return Ok(()),
        Verdict::Close => return Err(closed_by_filter()),
        Verdict::Respond(response) => Answer::Local(response),
        Verdict::Fail(failure) => Answer::FilterFailed(failure),
    };
    answer_later(ctx, answer, "a filter ended the response at its trailers")
}

/// `on_log`, `on_done` and `on_delete` for the filters that saw the request.
pub(super) fn finish(session: &mut Session, ctx: &mut RequestCtx) {
    if let Some(chain) = ctx.filters.chain.as_mut() {
        let sent = chain
            .needs_sent_response()
            .then(|| session.response_written().cloned())
            .flatten();
        // Who answered: a filter, edgeward itself (its refusal's code); none said means the
        // upstream (`via_upstream`).
        let details = match (ctx.filters.code_details.take(), ctx.refusal) {
            (Some(details), _) => Some(Cow::Owned(details)),
            (None, Some(refusal)) => Some(Cow::Borrowed(refusal.code())),
            (None, None) => None,
        };
        let cache_hit = ctx
            .cache
            .outcome
            .is_some_and(|outcome| outcome.served_from_cache());
        chain.set_outcome(details, answers::response_flags(ctx.refusal, cache_hit));
        chain.finish(session.req_header_mut(), sent);
    }
}

/// Logs and explains a filtered body that broke its head's `Content-Length`: the message
/// cannot be finished honestly, so it ends (with a 500 if its head has not left yet).
fn length_changed(ctx: &RequestCtx, mismatch: &LengthMismatch, direction: &str) -> FilterFailure {
    let filters = ctx
        .filters
        .chain
        .as_ref()
        .map(FilterChain::filter_names)
        .unwrap_or_default();
    log::warn!(
        "route `{}` (filters {filters}): the {direction} is cut off: {mismatch}",
        ctx.route_name()
    );
    FilterFailure {
        filter: filters,
        status: 500,
        code: LENGTH_CHANGED,
        message: format!("the {direction} body: {mismatch}"),
    }
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
