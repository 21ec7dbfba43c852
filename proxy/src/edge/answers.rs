//! The answers edgeward writes itself: a refusal (no route, no healthy endpoint, an upstream
//! failure), a redirect to HTTPS, and a filter's answer ([`crate::answer`]). Every JSON
//! answer is made by [`json`], with the same headers.

use bytes::Bytes;
use http::{header, HeaderValue};
use pingora::http::ResponseHeader;
use pingora::prelude::*;
use pingora::{ErrorSource, ErrorType};

use crate::answer::{error_body, json, REQUEST_ID};

/// Why edgeward answered a request itself. Each maps to one status and one JSON error code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    NoRoute,
    PurgeForbidden,
    NoHealthyEndpoint,
    UpstreamTimeout,
    UpstreamUnavailable,
    /// The TLS handshake with the upstream failed: most often its certificate did not verify.
    UpstreamTls,
    BadRequest,
    /// The client paused inside its request body for longer than `client.body_timeout`.
    RequestTimeout,
    Internal,
}

/// Envoy's response flag for a response from its cache filter (`ResponseFromCacheFilter`).
const FLAG_FROM_CACHE: u64 = 0x10_0000;

/// Envoy's `response.flags` for how a request ended: its refusal's flag, and whether the
/// cache served it.
pub(crate) fn response_flags(refusal: Option<Refusal>, from_cache: bool) -> u64 {
    let cache = if from_cache { FLAG_FROM_CACHE } else { 0 };
    refusal.map_or(0, Refusal::envoy_flag) | cache
}

impl Refusal {
    /// The bit of Envoy's response flags (`envoy/stream_info/stream_info.h`) that says the
    /// same; 0 where Envoy has none.
    fn envoy_flag(self) -> u64 {
        match self {
            Refusal::NoHealthyEndpoint => 0x2, // NoHealthyUpstream (UH)
            Refusal::UpstreamTimeout => 0x4,   // UpstreamRequestTimeout (UT)
            Refusal::UpstreamUnavailable | Refusal::UpstreamTls => 0x20, // UpstreamConnectionFailure (UF)
            Refusal::NoRoute => 0x100,                                   // NoRouteFound (NR)
            Refusal::RequestTimeout => 0x1_0000,                         // StreamIdleTimeout (SI)
            Refusal::BadRequest => 0x4_0000, // DownstreamProtocolError (DPE)
            Refusal::PurgeForbidden | Refusal::Internal => 0,
        }
    }

    pub(crate) fn status(self) -> u16 {
        match self {
            Refusal::NoRoute => 404,
            Refusal::PurgeForbidden => 403,
            Refusal::NoHealthyEndpoint | Refusal::UpstreamUnavailable | Refusal::UpstreamTls => 502,
            Refusal::UpstreamTimeout => 504,
            Refusal::BadRequest => 400,
            Refusal::RequestTimeout => 408,
            Refusal::Internal => 500,
        }
    }

    pub(crate) fn code(self) -> &'static str {
        match self {
            Refusal::NoRoute => "no_route",
            Refusal::PurgeForbidden => "purge_forbidden",
            Refusal::NoHealthyEndpoint => "no_healthy_endpoint",
            Refusal::UpstreamTimeout => "upstream_timeout",
            Refusal::UpstreamUnavailable => "upstream_unavailable",
            Refusal::UpstreamTls => "upstream_tls",
            Refusal::BadRequest => "bad_request",
            Refusal::RequestTimeout => "request_timeout",
            Refusal::Internal => "internal_error",
        }
    }

    /// Whether the upstream failed (counted per upstream).
    pub(crate) fn is_upstream_failure(self) -> bool {
        matches!(
            self,
            Refusal::NoHealthyEndpoint
                | Refusal::UpstreamTimeout
                | Refusal::UpstreamUnavailable
                | Refusal::UpstreamTls
        )
    }

    /// What a proxying error means for the client; `None` when the client went away.
    pub(crate) fn from_error(e: &Error) -> Option<Refusal> {
        use ErrorType::*;
        Some(match (e.esource(), e.etype()) {
            (
                ErrorSource::Upstream | ErrorSource::Unset,
                ConnectTimedout | ReadTimedout | WriteTimedout,
            ) => Refusal::UpstreamTimeout,
            (ErrorSource::Upstream | ErrorSource::Unset, TLSHandshakeFailure | InvalidCert) => {
                Refusal::UpstreamTls
            }
            (ErrorSource::Upstream, _) => Refusal::UpstreamUnavailable,
            (_, ConnectRefused | ConnectNoRoute | ConnectError | ConnectProxyFailure) => {
                Refusal::UpstreamUnavailable
            }
            // The client went away: there is nobody to answer.
            (ErrorSource::Downstream, ReadError | WriteError | ConnectionClosed) => return None,
            (ErrorSource::Downstream, ReadTimedout) => Refusal::RequestTimeout,
            (ErrorSource::Downstream, _) => Refusal::BadRequest,
            _ => Refusal::Internal,
        })
    }

    /// The message for a refusal that a proxying error `e` caused on `upstream`.
    pub(crate) fn message(self, upstream: &str, e: &Error) -> String {
        match self {
            Refusal::NoHealthyEndpoint => format!("upstream `{upstream}` has no healthy endpoint"),
            Refusal::UpstreamTimeout => format!("upstream `{upstream}` did not answer in time"),
            Refusal::UpstreamUnavailable => {
                format!("upstream `{upstream}` failed: {}", e.etype().as_str())
            }
            Refusal::UpstreamTls => {
                format!("upstream `{upstream}` failed the TLS handshake (see the access log)")
            }
            Refusal::BadRequest => format!("bad request: {}", e.etype().as_str()),
            Refusal::RequestTimeout => "the request body stopped arriving".to_string(),
            Refusal::NoRoute | Refusal::PurgeForbidden | Refusal::Internal => {
                "internal error".to_string()
            }
        }
    }
}

/// Answers with a refusal's JSON error.
pub(super) async fn refuse(
    session: &mut Session,
    request_id: &HeaderValue,
    refusal: Refusal,
    message: &str,
) -> Result<()> {
    let body = error_body(refusal.code(), refusal.status(), message, request_id);
    send(session, json(refusal.status(), &body, request_id)?).await
}

/// `308 Permanent Redirect` to the request's URL on HTTPS (`port`), for listeners with
/// `redirect_https`; `400` when the request names no usable host.
pub(super) async fn redirect_to_https(
    session: &mut Session,
    request_id: &HeaderValue,
    port: u16,
) -> Result<()> {
    let local = session
        .server_addr()
        .and_then(|a| a.as_inet())
        .map(|a| a.ip());
    let Some(location) = super::forwarding::https_location(session.req_header(), port, local)
    else {
        session.set_keepalive(None);
        let message = "the request names no host to redirect to";
        return refuse(session, request_id, Refusal::BadRequest, message).await;
    };
    let mut head = ResponseHeader::build(308, Some(3))?;
    head.insert_header(header::LOCATION, location)?;
    head.insert_header(REQUEST_ID, request_id.clone())?;
    head.set_content_length(0)?;
    send(session, (head, Bytes::new())).await
}

/// Writes a whole answer, then reads what the client is still sending.
pub(super) async fn send(
    session: &mut Session,
    (head, body): (ResponseHeader, Bytes),
) -> Result<()> {
    session.write_response_header(Box::new(head), false).await?;
    session.write_response_body(Some(body), true).await?;
    drain_unread_body(session).await;
    Ok(())
}

/// Reads (and drops) what the client is still sending after it was answered early, for a
/// bounded time: closing with unread data makes the kernel reset the connection, and the
/// client would never see the answer.
async fn drain_unread_body(session: &mut Session) {
    const DRAIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
    // A client still waiting for `100 Continue` sends no body after a final answer (or may,
    // and then finds the connection closed).
    if super::forwarding::expects_continue(session.req_header()) {
        session.set_keepalive(None);
        return;
    }
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

/// The error that drops the connection without an answer, as a filter asked.
pub(super) fn closed_by_filter() -> Box<Error> {
    Error::explain(ErrorType::ConnectionClosed, "a filter closed the stream").into_down()
}
