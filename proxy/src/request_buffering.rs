//! Small request bodies are read whole before the request goes upstream. The upstream then
//! never gets the head of a request whose body turns out malformed (a bad chunk, a length the
//! body does not keep) or never finishes; the body leaves in one send and reaches the filters
//! in one callback, as with nginx's request buffering. Pingora keeps what was read (its retry
//! buffer, which holds 64 KiB) and sends it upstream before reading on. Bodies announced larger,
//! and chunked ones that do not end within their first read, stream as they come, so that
//! uploads are never held in memory.
//!
//! A filter that holds the request headers reads the body ahead too ([`HeldBody`]); whatever
//! was read ahead, Pingora sends from its retry buffer, and the part the filters saw already
//! goes as they made it ([`FilteredBody`]).

use bytes::Bytes;
use http::header::CONTENT_LENGTH;
use pingora::prelude::*;
use pingora::protocols::http::ServerSession;

use crate::wasm::{BodyPiece, BodyUnavailable, RequestBodySource};

/// The largest announced body read whole: Pingora's retry buffer holds this much.
const WHOLE_UP_TO: u64 = RETRY_BUFFER as u64;

/// Reads the request's body ahead when it is small (see the module's text). An error is the
/// client's (a malformed body, a pause past `client.body_timeout`, a closed connection).
pub(crate) async fn read_small_body(session: &mut Session) -> Result<()> {
    let announced = session
        .req_header()
        .headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if announced.is_some_and(|length| length > WHOLE_UP_TO) {
        return Ok(());
    }
    // An upgrade (WebSocket) has no body to read ahead: what follows its head is the new
    // protocol's, after the upstream agreed.
    if session.is_upgrade_req() {
        return Ok(());
    }
    let downstream = session.as_downstream_mut();
    if downstream.is_body_done() {
        return Ok(());
    }
    downstream.enable_retry_buffering();
    loop {
        let chunk = downstream.read_request_body().await.map_err(|mut e| {
            e.as_down();
            e
        })?;
        // Read to the end, where a body that breaks its length is found; a body of unknown
        // length is read once unless it ended: more could overflow the retry buffer.
        if chunk.is_none() || (announced.is_none() && !downstream.is_body_done()) {
            return Ok(());
        }
    }
}

/// What Pingora's retry buffer holds: the body it sends first on each attempt, while the
/// body read so far fits.
const RETRY_BUFFER: usize = 64 * 1024;

/// The client's body as the filter chain reads it while a filter holds the request headers.
/// What is read lands in Pingora's retry buffer too, which Pingora sends upstream first:
/// [`FilteredBody`] puts what the chain made of it in its place.
pub(crate) struct HeldBody<'a> {
    downstream: &'a mut ServerSession,
    /// The client waits for `100 Continue` before it sends the body.
    continue_owed: bool,
    read: u64,
    failure: Option<Box<Error>>,
}

impl<'a> HeldBody<'a> {
    pub(crate) fn new(downstream: &'a mut ServerSession, continue_owed: bool) -> Self {
        HeldBody {
            downstream,
            continue_owed,
            read: 0,
            failure: None,
        }
    }

    /// Whether the client was told to send its body (`100 Continue`).
    pub(crate) fn continue_sent(&self) -> bool {
        !self.continue_owed
    }

    /// The bytes read, and the client's failure if reading failed.
    pub(crate) fn finish(self) -> (u64, Option<Box<Error>>) {
        (self.read, self.failure)
    }
}

impl RequestBodySource for HeldBody<'_> {
    async fn read(&mut self) -> Result<BodyPiece, BodyUnavailable> {
        if std::mem::take(&mut self.continue_owed) {
            // A filter wants the body: the request is being processed (RFC 9110 §10.1.1).
            if let Err(e) = self.downstream.write_continue_response().await {
                self.failure = Some(e);
                return Err(BodyUnavailable::Failed);
            }
        }
        self.downstream.enable_retry_buffering();
        match self.downstream.read_request_body().await {
            Ok(data) => {
                if self.downstream.retry_buffer_truncated() {
                    return Err(BodyUnavailable::Full {
                        limit: RETRY_BUFFER as u64,
                    });
                }
                let data = data.unwrap_or_default();
                self.read += data.len() as u64;
                let end = self.downstream.is_body_done();
                Ok(BodyPiece { data, end })
            }
            Err(mut e) => {
                e.as_down();
                self.failure = Some(e);
                Err(BodyUnavailable::Failed)
            }
        }
    }
}

/// The request body as the chain let it go, for what Pingora sends again: on every attempt
/// it first sends its retry buffer, the body read so far, and the part of it the chain saw
/// (read while a filter held the headers, or sent on an attempt that failed) must go as the
/// chain made it rather than through the filters twice.
#[derive(Default)]
pub(crate) struct FilteredBody {
    /// The client's bytes the chain saw.
    seen: usize,
    /// What the chain let go of them, kept while they fit the retry buffer.
    sent: Vec<Bytes>,
    /// The chain saw the body's end.
    ended: bool,
    /// The next body Pingora hands over starts with its retry buffer.
    resend_next: bool,
}

impl FilteredBody {
    /// The body the chain saw while a filter held the headers: `read` client bytes became
    /// `data`, and the chain saw the end if `ended`.
    pub(crate) fn read_early(read: u64, data: Bytes, ended: bool) -> Self {
        let mut body = FilteredBody::default();
        body.record(usize::try_from(read).unwrap_or(usize::MAX), data, ended);
        body
    }

    /// A new attempt starts: Pingora sends its retry buffer first unless it overflowed.
    pub(crate) fn attempt_starts(&mut self, downstream: &ServerSession) {
        self.resend_next = self.seen > 0 && !downstream.retry_buffer_truncated();
    }

    /// Takes the part of `body` the chain saw already and returns what the chain made of
    /// it; `body` keeps the rest, for the chain.
    pub(crate) fn take_resent(&mut self, body: &mut Option<Bytes>) -> Option<Bytes> {
        if !std::mem::take(&mut self.resend_next) {
            return None;
        }
        let mut raw = body.take().unwrap_or_default();
        *body = Some(raw.split_off(self.seen.min(raw.len())));
        Some(match self.sent.as_slice() {
            [one] => one.clone(),
            parts => parts.concat().into(),
        })
    }

    /// Whether the chain saw the body's end.
    pub(crate) fn ended(&self) -> bool {
        self.ended
    }

    /// The chain saw `raw` more client bytes and let `data` go.
    pub(crate) fn record(&mut self, raw: usize, data: Bytes, end: bool) {
        self.seen = self.seen.saturating_add(raw);
        self.ended |= end;
        if self.seen <= RETRY_BUFFER {
            if !data.is_empty() {
                self.sent.push(data);
            }
        } else {
            // Pingora cannot resend a body its buffer could not keep.
            self.sent = Vec::new();
        }
    }
}
