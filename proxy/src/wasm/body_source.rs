//! Where the request body comes from while a filter holds the request headers: the client's
//! connection in the proxy, a file in a test (see `stream`'s held requests).

use std::future::Future;

use bytes::{Bytes, BytesMut};

/// A piece of the request body, and whether it is the last.
#[derive(Debug, Clone, Default)]
pub struct BodyPiece {
    pub data: Bytes,
    pub end: bool,
}

/// Where a held request's body comes from: the client's connection in the proxy, a file in a
/// test. The chain reads it only while a filter holds the request headers.
pub trait RequestBodySource: Send {
    /// The next piece of the body; never called again after the last.
    fn read(&mut self) -> impl Future<Output = Result<BodyPiece, BodyUnavailable>> + Send;
}

/// Why a held request gets no more of its body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyUnavailable {
    /// The proxy holds `limit` bytes at most before the request goes upstream.
    Full { limit: u64 },
    /// The client's side failed (a malformed body, a timeout, a closed connection): the
    /// source keeps the reason, and the chain ends the request.
    Failed,
}

/// A body all there already, in one piece (`filter test`'s, a `builtin: filters` origin's).
pub(crate) struct WholeBody(pub(crate) Option<Bytes>);

impl RequestBodySource for WholeBody {
    async fn read(&mut self) -> Result<BodyPiece, BodyUnavailable> {
        Ok(BodyPiece {
            data: self.0.take().unwrap_or_default(),
            end: true,
        })
    }
}

/// A body that cannot be read while the headers are held: the filter that paused waits for
/// its resumption alone.
pub(crate) struct Unreadable;

impl RequestBodySource for Unreadable {
    fn read(&mut self) -> impl Future<Output = Result<BodyPiece, BodyUnavailable>> + Send {
        std::future::pending()
    }
}

/// The request body read while the headers were held, as far as it went through the chain:
/// past the filters whose headers passed (and, once the headers pass them all, past the chain).
#[derive(Debug, Default)]
pub(crate) struct EarlyBody {
    pub data: BytesMut,
    /// The body ended: no more is read, and the end follows `data`.
    pub end: bool,
    /// Some body was read.
    pub read: bool,
}
