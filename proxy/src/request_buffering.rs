//! Small request bodies go upstream whole, in one write.
//!
//! Pingora sends the upstream request head, then each body chunk as it is read from the client:
//! a small POST that arrives in several reads leaves in as many sends, each waking the origin.
//! nginx buffers request bodies (`proxy_request_buffering on`) and sends them at once. A body
//! whose `Content-Length` is at most [`WHOLE_UP_TO`] is held here until it is complete, so it
//! costs one send and the filters see it in one body callback; chunked and larger bodies stream
//! as they come, so that uploads are not held in memory.

use bytes::{Bytes, BytesMut};
use http::header::{HeaderMap, CONTENT_LENGTH};

/// The largest announced body held until complete: memory per request stays small.
pub(crate) const WHOLE_UP_TO: u64 = 64 * 1024;

/// What is held of one request's body; empty for a body that streams.
#[derive(Debug, Default)]
pub(crate) struct RequestBuffer {
    held: Option<BytesMut>,
}

impl RequestBuffer {
    /// Holds the body of a request whose head announces 1 to [`WHOLE_UP_TO`] bytes.
    pub(crate) fn for_request(headers: &HeaderMap) -> Self {
        let announced = headers
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        let small = announced.is_some_and(|len| (1..=WHOLE_UP_TO).contains(&len));
        RequestBuffer {
            held: small.then(BytesMut::new),
        }
    }

    /// Takes the next chunk read from the client; returns what goes on now: an empty chunk
    /// (never `None`, which would end the body) until the body ends, then all of it.
    pub(crate) fn pass(&mut self, chunk: Option<Bytes>, end_of_stream: bool) -> Option<Bytes> {
        let Some(held) = &mut self.held else {
            return chunk;
        };
        if end_of_stream && held.is_empty() {
            // The whole body came in one read: no copy.
            return chunk;
        }
        if let Some(chunk) = chunk {
            held.extend_from_slice(&chunk);
        }
        if end_of_stream {
            Some(held.split().freeze())
        } else {
            Some(Bytes::new())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn announcing(length: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_LENGTH, HeaderValue::from_str(length).unwrap());
        headers
    }

    #[test]
    fn a_small_body_goes_on_whole_at_its_end() {
        let mut buffer = RequestBuffer::for_request(&announcing("10"));
        assert_eq!(
            buffer.pass(Some(Bytes::from_static(b"hello")), false),
            Some(Bytes::new())
        );
        assert_eq!(buffer.pass(None, false), Some(Bytes::new()));
        assert_eq!(
            buffer.pass(Some(Bytes::from_static(b"world")), true),
            Some(Bytes::from_static(b"helloworld"))
        );
    }

    #[test]
    fn a_body_read_at_once_passes_untouched() {
        let mut buffer = RequestBuffer::for_request(&announcing("5"));
        let chunk = Bytes::from_static(b"hello");
        assert_eq!(buffer.pass(Some(chunk.clone()), true), Some(chunk));
    }

    #[test]
    fn large_chunked_and_empty_bodies_stream() {
        for headers in [
            announcing(&(WHOLE_UP_TO + 1).to_string()),
            announcing("0"),
            announcing("not a number"),
            HeaderMap::new(),
        ] {
            let mut buffer = RequestBuffer::for_request(&headers);
            let chunk = Bytes::from_static(b"part");
            assert_eq!(buffer.pass(Some(chunk.clone()), false), Some(chunk));
            assert_eq!(buffer.pass(None, true), None);
        }
    }
}
