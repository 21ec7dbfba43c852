//! What a request that failed gets: the answer a filter decided but could not write in its
//! phase, or the refusal the error means (counted against the upstream when it failed).

use pingora::prelude::*;
use pingora::proxy::FailToProxy;

use super::answers::{self, Refusal};
use super::context::RequestCtx;
use super::filtering;
use crate::connections;
use crate::metrics;

/// Answers the failed request unless its response has started; `upstream` names the
/// upstream it was sent to, if any.
pub(super) async fn answer(
    session: &mut Session,
    e: &Error,
    ctx: &mut RequestCtx,
    upstream: Option<&str>,
) -> FailToProxy {
    let unanswered = session.response_written().is_none();
    let error_code = match ctx.filters.pending_answer.take() {
        Some(answer) => {
            let status = answer.status();
            if unanswered {
                if let Err(write_error) = filtering::send(session, ctx, answer).await {
                    log::debug!("cannot send the filter's answer: {write_error}");
                }
            } else {
                log::warn!(
                    "route `{}`: a filter answered {status} after the response head was sent; the response is cut short",
                    ctx.route_name()
                );
            }
            status
        }
        None => match ctx.refusal.or_else(|| Refusal::from_error(e)) {
            Some(refusal) => {
                if refusal == Refusal::RequestTimeout {
                    connections::body_timed_out(session.as_downstream());
                }
                refuse(session, ctx, refusal, e, upstream, unanswered).await;
                refusal.status()
            }
            // The client went away: there is nobody to answer, and nothing went wrong here.
            None => {
                metrics::global()
                    .client_aborts
                    .with_label_values(&[ctx.route_name()])
                    .inc();
                log::debug!("the client went away: {e}");
                0
            }
        },
    };
    FailToProxy {
        error_code,
        can_reuse_downstream: false,
    }
}

/// Counts an upstream's failure and answers it, unless a response has started already.
async fn refuse(
    session: &mut Session,
    ctx: &mut RequestCtx,
    refusal: Refusal,
    e: &Error,
    upstream: Option<&str>,
    unanswered: bool,
) {
    ctx.refusal = Some(refusal);
    if refusal.is_upstream_failure() {
        ctx.upstream.failure = Some(e.to_string());
    }
    if let (true, Some(upstream)) = (refusal.is_upstream_failure(), upstream) {
        metrics::global()
            .upstream_failures
            .with_label_values(&[upstream, refusal.code()])
            .inc();
    }
    if unanswered {
        let message = refusal.message(upstream.unwrap_or_default(), e);
        if let Err(write_error) = answers::refuse(session, &ctx.request_id, refusal, &message).await
        {
            log::debug!("cannot send the error response: {write_error}");
        }
    }
}
