//! A client connection after its TLS handshake, as Pingora sees a connection: its IO traits.
//! Reads and writes go through rustls; Pingora learns the TLS facts through `Ssl` (the ALPN
//! protocol, which makes it serve HTTP/2, and the digest, whose presence turns h2c off) and
//! everything else from the TCP stream underneath.
//!
//! Pingora's digest has no place for the name the client asked for (SNI), and a request sees
//! no more of its connection than the digests; so each connection's name is kept here by its
//! two addresses while it is open ([`requested_server_name`]).

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, LazyLock, Mutex};
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
    /// The connection's addresses and SNI, while it is in [`SERVED_NAMES`].
    named: Option<(Ends, Arc<str>)>,
}

/// A connection's (client, local) addresses.
type Ends = (SocketAddr, SocketAddr);

/// The SNI of each open TLS connection, by its addresses.
static SERVED_NAMES: LazyLock<Mutex<HashMap<Ends, Arc<str>>>> = LazyLock::new(Mutex::default);

/// The name (SNI) the client of the open TLS connection between `client` and `local` asked
/// for, if it sent one.
pub(crate) fn requested_server_name(client: SocketAddr, local: SocketAddr) -> Option<Arc<str>> {
    crate::sync::lock(&SERVED_NAMES)
        .get(&(client, local))
        .cloned()
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
        let mut stream = TlsStream {
            inner,
            digest,
            alpn,
            named: None,
        };
        stream.named = stream.remember_server_name();
        stream
    }

    /// Keeps the client's SNI for the requests of this connection.
    fn remember_server_name(&self) -> Option<(Ends, Arc<str>)> {
        let name: Arc<str> = Arc::from(self.connection().server_name()?);
        let socket = self.tcp().get_socket_digest()?;
        let key = (
            *socket.peer_addr()?.as_inet()?,
            *socket.local_addr()?.as_inet()?,
        );
        crate::sync::lock(&SERVED_NAMES).insert(key, name.clone());
        Some((key, name))
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

impl Drop for TlsStream {
    fn drop(&mut self) {
        if let Some((key, name)) = self.named.take() {
            let mut names = crate::sync::lock(&SERVED_NAMES);
            // A newer connection between the same addresses keeps its own entry.
            if names.get(&key).is_some_and(|kept| Arc::ptr_eq(kept, &name)) {
                names.remove(&key);
            }
        }
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
