//! A client connection after its TLS handshake, as Pingora sees a connection: its IO traits.
//! Reads and writes go through rustls; Pingora learns the TLS facts through `Ssl` (the ALPN
//! protocol, which makes it serve HTTP/2, and the digest, whose presence turns h2c off) and
//! everything else from the TCP stream underneath.

use std::fmt;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use pingora::protocols::raw_connect::ProxyDigest;
use pingora::protocols::tls::SslDigest;
use pingora::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl, Stream,
    TimingDigest, UniqueID, UniqueIDType, ALPN,
};
use rustls::server::ServerConnection;
use rustls::{HandshakeKind, ProtocolVersion};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};

/// A TLS version's name in digests, metrics and logs.
pub(crate) fn version_name(version: Option<ProtocolVersion>) -> &'static str {
    match version {
        Some(ProtocolVersion::TLSv1_3) => "TLSv1.3",
        Some(ProtocolVersion::TLSv1_2) => "TLSv1.2",
        _ => "unknown",
    }
}

pub(crate) struct TlsStream {
    inner: tokio_rustls::server::TlsStream<Stream>,
    digest: Arc<SslDigest>,
    alpn: Option<ALPN>,
}

impl TlsStream {
    pub(crate) fn new(inner: tokio_rustls::server::TlsStream<Stream>) -> Self {
        let connection = inner.get_ref().1;
        let cipher = connection
            .negotiated_cipher_suite()
            .and_then(|suite| suite.suite().as_str())
            .unwrap_or("unknown");
        let digest = Arc::new(SslDigest::new(
            cipher,
            version_name(connection.protocol_version()),
            None,
            None,
            Vec::new(),
        ));
        let alpn = match connection.alpn_protocol() {
            Some(b"h2") => Some(ALPN::H2),
            Some(b"http/1.1") => Some(ALPN::H1),
            _ => None,
        };
        TlsStream {
            inner,
            digest,
            alpn,
        }
    }

    pub(crate) fn connection(&self) -> &ServerConnection {
        self.inner.get_ref().1
    }

    /// Whether this connection resumed an earlier session.
    pub(crate) fn resumed(&self) -> bool {
        self.connection().handshake_kind() == Some(HandshakeKind::Resumed)
    }

    fn tcp(&self) -> &Stream {
        self.inner.get_ref().0
    }
}

impl fmt::Debug for TlsStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsStream")
            .field("tcp", self.tcp())
            .field("version", &self.digest.version)
            .field("alpn", &self.alpn)
            .finish()
    }
}

impl AsyncRead for TlsStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    /// Sends `close_notify`, then closes the TCP stream's sending side.
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[async_trait]
impl Shutdown for TlsStream {
    async fn shutdown(&mut self) {
        if let Err(e) = AsyncWriteExt::shutdown(&mut self.inner).await {
            log::debug!("closing a TLS connection: {e}");
        }
    }
}

impl UniqueID for TlsStream {
    fn id(&self) -> UniqueIDType {
        self.tcp().id()
    }
}

impl Ssl for TlsStream {
    fn get_ssl_digest(&self) -> Option<Arc<SslDigest>> {
        Some(self.digest.clone())
    }

    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.alpn.clone()
    }
}

impl GetTimingDigest for TlsStream {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.tcp().get_timing_digest()
    }

    fn get_read_pending_time(&self) -> Duration {
        self.tcp().get_read_pending_time()
    }

    fn get_write_pending_time(&self) -> Duration {
        self.tcp().get_write_pending_time()
    }
}

impl GetProxyDigest for TlsStream {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.tcp().get_proxy_digest()
    }

    fn set_proxy_digest(&mut self, digest: ProxyDigest) {
        self.inner.get_mut().0.set_proxy_digest(digest)
    }
}

impl GetSocketDigest for TlsStream {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.tcp().get_socket_digest()
    }

    fn set_socket_digest(&mut self, digest: SocketDigest) {
        self.inner.get_mut().0.set_socket_digest(digest)
    }
}

/// Pingora peeks only at cleartext connections (for the h2c preface); a TLS connection's
/// protocol comes from ALPN.
impl Peek for TlsStream {}
