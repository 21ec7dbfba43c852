//! Small request bodies are read whole before the request goes upstream. The upstream then
//! never gets the head of a request whose body turns out malformed (a bad chunk, a length the
//! body does not keep) or never finishes; the body leaves in one send and reaches the filters
//! in one callback, as with nginx's request buffering. Pingora keeps what was read (its retry
//! buffer, which holds 64 KiB) and sends it upstream before reading on. Bodies announced larger,
//! and chunked ones that do not end within their first read, stream as they come, so that
//! uploads are never held in memory.

use http::header::CONTENT_LENGTH;
use pingora::prelude::*;

/// The largest announced body read whole: Pingora's retry buffer holds this much.
const WHOLE_UP_TO: u64 = 64 * 1024;

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
