//! Client connections and the limits a listener puts on them (`client:`): how long a client
//! may take to send a request head, how long a kept-alive connection may stay idle, and how
//! many connections may be open at once. (The gap allowed inside a request body is Pingora's
//! read timeout, which the proxy sets per request.)
//!
//! Pingora bounds each read of a request head, but not the head as a whole: a client sending
//! a byte every few seconds would hold its connection for ever. So every accepted connection
//! is wrapped: [`ClientStream`] watches the bytes it reads and the proxy tells its
//! [`Connection`] when a request head was complete and when the response was done; [`Guarded`]
//! runs the connection with the deadline that follows and drops it when the deadline passes,
//! after a `408` if a request had begun.
//!
//! On a TLS listener the guard first runs the TLS handshake (`tls::Acceptor`), under the same
//! deadline: the handshake and the first request head must together arrive within
//! `header_timeout` of accept. Pingora then gets the TLS stream, wrapped like any other.

use std::fmt;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::apps::ServerApp;
use pingora::protocols::http::ServerSession;
use pingora::protocols::raw_connect::ProxyDigest;
use pingora::protocols::tls::SslDigest;
use pingora::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl, Stream,
    TimingDigest, UniqueID, UniqueIDType, ALPN,
};
use pingora::server::ShutdownWatch;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::config::{ClientLimits, Listener};
use crate::metrics;
use crate::tls::{self, TlsError};

/// What a client whose request head timed out is told before the connection closes.
const REQUEST_TIMEOUT: &[u8] =
    b"HTTP/1.1 408 Request Timeout\r\nconnection: close\r\ncontent-length: 0\r\n\r\n";
/// The first bytes of a cleartext HTTP/2 connection (prior knowledge).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// An HTTP/2 client has sent its preface and the head of its first frame (its SETTINGS).
const H2_HANDSHAKE_BYTES: usize = H2_PREFACE.len() + 9;

/// Where a connection stands, as far as its deadline goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum Phase {
    /// Waiting for a request head (since accept, or since the request's first byte).
    Head,
    /// A request is being served: its body and response are bounded elsewhere.
    Request,
    /// Kept alive between requests.
    Idle,
    /// HTTP/2: streams and idleness are bounded by the HTTP/2 settings.
    H2,
    /// A TLS listener's handshake, before any request.
    Handshake,
}

/// The state a connection's stream, the proxy and its guard share. They all run in the
/// connection's task; the atomics only make it `Sync`.
pub(crate) struct Connection {
    limits: ClientLimits,
    listener: Arc<str>,
    phase: AtomicU8,
    /// Bytes of the current request head have arrived.
    began: AtomicBool,
    /// An HTTP/2 client got as far as its first frame.
    handshaken: AtomicBool,
    /// When the current phase must end, if it must ([`Deadline`]).
    deadline: AtomicU64,
    /// The guard's deadline passed: the stream answers no more reads.
    expired: AtomicBool,
    /// Nothing was read from the client yet: counted in `unread`.
    fresh: AtomicBool,
    /// The listeners' connections from which nothing was read yet.
    unread: Arc<AtomicUsize>,
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.read_from();
    }
}

impl Connection {
    fn new(
        limits: ClientLimits,
        listener: Arc<str>,
        phase: Phase,
        unread: Arc<AtomicUsize>,
    ) -> Self {
        unread.fetch_add(1, Ordering::Relaxed);
        Connection {
            limits,
            listener,
            phase: AtomicU8::new(phase as u8),
            began: AtomicBool::new(false),
            handshaken: AtomicBool::new(false),
            deadline: AtomicU64::new(Deadline::encode(Some(limits.header_timeout))),
            expired: AtomicBool::new(false),
            fresh: AtomicBool::new(true),
            unread,
        }
    }

    /// The client has sent something: no longer counted as unread.
    fn read_from(&self) {
        if self.fresh.swap(false, Ordering::Relaxed) {
            self.unread.fetch_sub(1, Ordering::Relaxed);
        }
    }

    fn phase(&self) -> Phase {
        match self.phase.load(Ordering::Relaxed) {
            0 => Phase::Head,
            1 => Phase::Request,
            2 => Phase::Idle,
            3 => Phase::H2,
            _ => Phase::Handshake,
        }
    }

    /// A new phase under the same deadline.
    fn set_phase(&self, phase: Phase) {
        self.phase.store(phase as u8, Ordering::Relaxed);
    }

    fn enter(&self, phase: Phase, deadline: Option<Duration>) {
        self.phase.store(phase as u8, Ordering::Relaxed);
        self.deadline
            .store(Deadline::encode(deadline), Ordering::Relaxed);
    }

    fn deadline(&self) -> Option<Instant> {
        Deadline::decode(self.deadline.load(Ordering::Relaxed))
    }

    /// The request head is complete: from now on the request's own timeouts apply.
    pub(crate) fn head_complete(&self) {
        self.began.store(false, Ordering::Relaxed);
        self.enter(Phase::Request, None);
    }

    /// The response is done; the connection may wait for the next request.
    pub(crate) fn response_done(&self) {
        self.enter(Phase::Idle, Some(self.limits.idle_timeout));
    }

    /// Bytes arrived: the first of a request starts its header timeout.
    fn received(&self, bytes: &[u8], total: usize) {
        if bytes.is_empty() {
            return;
        }
        self.read_from();
        match self.phase() {
            Phase::Idle => {
                self.began.store(true, Ordering::Relaxed);
                self.enter(Phase::Head, Some(self.limits.header_timeout));
            }
            Phase::Head => self.began.store(true, Ordering::Relaxed),
            // The client's SETTINGS have begun: the handshake is the HTTP/2 layer's now.
            Phase::H2
                if total >= H2_HANDSHAKE_BYTES
                    && !self.handshaken.swap(true, Ordering::Relaxed) =>
            {
                self.enter(Phase::H2, None)
            }
            Phase::Request | Phase::H2 | Phase::Handshake => {}
        }
    }
}

/// Deadlines as nanoseconds after the process's first, so that they fit an atomic; 0 is none.
struct Deadline;

static EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);

impl Deadline {
    /// The deadline `after` from now, encoded.
    fn encode(after: Option<Duration>) -> u64 {
        after.map_or(0, |after| {
            let at = Instant::now() + after;
            u64::try_from(at.saturating_duration_since(*EPOCH).as_nanos())
                .unwrap_or(u64::MAX)
                .max(1)
        })
    }

    fn decode(encoded: u64) -> Option<Instant> {
        (encoded != 0).then(|| *EPOCH + Duration::from_nanos(encoded))
    }
}

/// A client connection's stream: reads and writes pass through, watched for the deadline.
pub(crate) struct ClientStream {
    inner: Stream,
    connection: Arc<Connection>,
    /// Bytes `try_peek` read ahead, served to the next reads.
    peeked: Vec<u8>,
    /// Bytes read so far (counted up to the HTTP/2 handshake).
    total: usize,
    /// The `408` was offered to the socket (once).
    answered: bool,
}

impl ClientStream {
    /// The connection of a downstream stream, if edgeward's listener accepted it.
    pub(crate) fn connection_of(stream: &Stream) -> Option<&Arc<Connection>> {
        stream
            .as_any()
            .downcast_ref::<ClientStream>()
            .map(|s| &s.connection)
    }

    /// `inner`, watched for `connection`'s deadline.
    fn wrap(inner: Stream, connection: Arc<Connection>) -> Stream {
        Box::new(ClientStream {
            inner,
            connection,
            peeked: Vec::new(),
            total: 0,
            answered: false,
        })
    }

    /// Once the deadline passed: offers the `408` (when a request began) and reads nothing
    /// more; the guard closes the connection.
    fn poll_expired(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if !self.answered {
            self.answered = true;
            if self.connection.began.load(Ordering::Relaxed) {
                // Best effort: a socket that cannot take a few bytes now gets none.
                let _ = Pin::new(&mut self.inner).poll_write(cx, REQUEST_TIMEOUT);
                let _ = Pin::new(&mut self.inner).poll_flush(cx);
            }
        }
        Poll::Pending
    }
}

impl fmt::Debug for ClientStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientStream")
            .field("inner", &self.inner)
            .finish()
    }
}

impl AsyncRead for ClientStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.connection.expired.load(Ordering::Relaxed) {
            return this.poll_expired(cx);
        }
        if !this.peeked.is_empty() {
            let n = this.peeked.len().min(buf.remaining());
            buf.put_slice(&this.peeked[..n]);
            this.peeked.drain(..n);
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let read = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = read {
            let fresh = &buf.filled()[before..];
            this.total = this.total.saturating_add(fresh.len());
            this.connection.received(fresh, this.total);
        }
        read
    }
}

impl AsyncWrite for ClientStream {
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

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[async_trait]
impl Shutdown for ClientStream {
    async fn shutdown(&mut self) {
        self.inner.shutdown().await
    }
}

impl UniqueID for ClientStream {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for ClientStream {
    fn get_ssl(&self) -> Option<&pingora::protocols::tls::TlsRef> {
        self.inner.get_ssl()
    }

    fn get_ssl_digest(&self) -> Option<Arc<SslDigest>> {
        self.inner.get_ssl_digest()
    }

    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl GetTimingDigest for ClientStream {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.inner.get_timing_digest()
    }

    fn get_read_pending_time(&self) -> Duration {
        self.inner.get_read_pending_time()
    }

    fn get_write_pending_time(&self) -> Duration {
        self.inner.get_write_pending_time()
    }
}

impl GetProxyDigest for ClientStream {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.inner.get_proxy_digest()
    }

    fn set_proxy_digest(&mut self, digest: ProxyDigest) {
        self.inner.set_proxy_digest(digest)
    }
}

impl GetSocketDigest for ClientStream {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.get_socket_digest()
    }

    fn set_socket_digest(&mut self, digest: SocketDigest) {
        self.inner.set_socket_digest(digest)
    }
}

/// Pingora peeks at a connection's first bytes to tell HTTP/2 (its preface) from HTTP/1.x.
/// The bytes are read here, through the deadline, and served again to the reads that follow;
/// the peek ends as soon as they cannot be the preface, because a whole HTTP/1 request can
/// be shorter than it (`GET / HTTP/1.0` and a blank line) and would wait for ever.
#[async_trait]
impl Peek for ClientStream {
    async fn try_peek(&mut self, buf: &mut [u8]) -> io::Result<bool> {
        use tokio::io::AsyncReadExt;
        let mut peeked = std::mem::take(&mut self.peeked);
        let mut chunk = [0; 64];
        while peeked.len() < buf.len() && H2_PREFACE.starts_with(&peeked) {
            let n = self.read(&mut chunk).await?;
            if n == 0 {
                break;
            }
            peeked.extend_from_slice(&chunk[..n]);
        }
        let n = peeked.len().min(buf.len());
        buf[..n].copy_from_slice(&peeked[..n]);
        if peeked.starts_with(H2_PREFACE) {
            self.connection
                .enter(Phase::H2, Some(self.connection.limits.header_timeout));
        }
        self.peeked = peeked;
        Ok(true)
    }
}

/// The proxy read a request head: the request's own timeout applies now (the gap allowed in
/// its body), and requests pipelined behind it are served in order (RFC 9112 §9.3.2).
pub(crate) fn request_started(session: &mut ServerSession) {
    let ServerSession::H1(h1) = session else {
        return;
    };
    let Some(limits) = ClientStream::connection_of(h1.stream()).map(|connection| {
        connection.head_complete();
        connection.limits
    }) else {
        return;
    };
    h1.set_read_timeout(Some(limits.body_timeout));
    // The guard bounds the wait for the next request (`idle_timeout`, then `header_timeout`);
    // Pingora's keep-alive timeout would arm a timer on every read of it besides.
    if h1.get_keepalive_timeout().is_some() {
        h1.set_server_keepalive(Some(0));
    }
    h1.set_pipelining_enabled(true);
}

/// The request ended because its body stopped arriving for `client.body_timeout`.
pub(crate) fn body_timed_out(session: &ServerSession) {
    if let ServerSession::H1(h1) = session {
        if let Some(connection) = ClientStream::connection_of(h1.stream()) {
            metrics::global()
                .client_timeouts
                .with_label_values(&[&connection.listener, "body"])
                .inc();
        }
    }
}

/// The response is done: a kept-alive connection waits for its next request.
pub(crate) fn response_done(session: &ServerSession) {
    if let ServerSession::H1(h1) = session {
        if let Some(connection) = ClientStream::connection_of(h1.stream()) {
            connection.response_done();
        }
    }
}

/// The connections of one listener: how many are open, against its limit.
struct ListenerSlots {
    address: SocketAddr,
    name: Arc<str>,
    limits: ClientLimits,
    open: AtomicUsize,
    /// The handshakes of a TLS listener.
    tls: Option<tls::Acceptor>,
}

/// Of `listeners` (each with its `address`), the one that accepts connections to `local`: the
/// listener of that address, or else one on an unspecified address (`0.0.0.0`, `::`), which
/// accepts for every address of its port.
pub(crate) fn listener_at<T>(
    listeners: &[T],
    address: impl Fn(&T) -> SocketAddr,
    local: SocketAddr,
) -> Option<&T> {
    listeners.iter().find(|l| address(l) == local).or_else(|| {
        listeners.iter().find(|l| {
            let address = address(l);
            address.port() == local.port() && address.ip().is_unspecified()
        })
    })
}

/// Counts a connection as open on its listener for as long as it lives.
struct Slot<'a>(&'a ListenerSlots);

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
        metrics::global()
            .client_connections
            .with_label_values(&[&self.0.name])
            .dec();
    }
}

/// A server application whose connections get the listeners' client limits.
pub(crate) struct Guarded<A> {
    app: Arc<A>,
    listeners: Vec<ListenerSlots>,
    /// Connections from which nothing was read yet (see `cleanup`).
    unread: Arc<AtomicUsize>,
}

/// How long a stop waits, at most, for the first bytes of connections accepted just before
/// the listeners closed.
const FIRST_REQUEST_GRACE: Duration = Duration::from_secs(2);

impl<A> Guarded<A> {
    /// The TLS listeners' certificates go to `rotation` to be watched.
    pub(crate) fn new(
        app: A,
        listeners: &[Listener],
        rotation: &mut tls::Rotation,
    ) -> Result<Self, TlsError> {
        let listeners = listeners
            .iter()
            .map(|l| {
                let name: Arc<str> = Arc::from(l.address.to_string());
                let tls = match &l.tls {
                    Some(settings) => {
                        let acceptor = tls::Acceptor::new(l.address, name.clone(), settings)?;
                        rotation.watch(name.clone(), settings, acceptor.certificates().clone());
                        Some(acceptor)
                    }
                    None => None,
                };
                Ok(ListenerSlots {
                    address: l.address,
                    name,
                    limits: l.client,
                    open: AtomicUsize::new(0),
                    tls,
                })
            })
            .collect::<Result<_, TlsError>>()?;
        Ok(Guarded {
            app: Arc::new(app),
            listeners,
            unread: Arc::new(AtomicUsize::new(0)),
        })
    }

    /// The listener that accepted a connection to `local`.
    fn listener(&self, local: Option<SocketAddr>) -> Option<&ListenerSlots> {
        listener_at(&self.listeners, |l| l.address, local?)
    }

    /// A place for a new connection, or `None` when its listener is full.
    fn admit<'a>(&'a self, listener: &'a ListenerSlots) -> Option<Slot<'a>> {
        let open = listener.open.fetch_add(1, Ordering::Relaxed);
        let slot = Slot(listener);
        let metrics = metrics::global();
        metrics
            .client_connections
            .with_label_values(&[&listener.name])
            .inc();
        if open >= listener.limits.max_connections {
            metrics
                .client_refusals
                .with_label_values(&[&listener.name])
                .inc();
            return None;
        }
        Some(slot)
    }
}

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> ServerApp for Guarded<A> {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let local = stream
            .get_socket_digest()
            .and_then(|digest| digest.local_addr().and_then(|a| a.as_inet().copied()));
        let Some(listener) = self.listener(local) else {
            // Not one of ours (cannot happen with TCP listeners): served without limits.
            return self.app.process_new(stream, shutdown).await;
        };
        let _slot = self.admit(listener)?;
        let Some(tls) = &listener.tls else {
            let connection = Arc::new(Connection::new(
                listener.limits,
                listener.name.clone(),
                Phase::Head,
                self.unread.clone(),
            ));
            let stream = ClientStream::wrap(stream, connection.clone());
            return guard(&connection, None, self.app.process_new(stream, shutdown)).await;
        };
        let connection = Arc::new(Connection::new(
            listener.limits,
            listener.name.clone(),
            Phase::Handshake,
            self.unread.clone(),
        ));
        // Boxed: inline, the handshake's state (a rustls connection) would make every
        // connection's future about 9 KB instead of 200 bytes, plaintext ones included.
        let serve = Box::pin(async {
            let stream = tls.accept(stream).await?;
            // Pingora serves HTTP/2 when ALPN chose it; its preface is held to the deadline
            // that bounded the handshake.
            connection.set_phase(match stream.selected_alpn_proto() {
                Some(ALPN::H2) => Phase::H2,
                _ => Phase::Head,
            });
            let stream = ClientStream::wrap(Box::new(stream), connection.clone());
            self.app.process_new(stream, shutdown).await
        });
        guard(&connection, Some(tls), serve).await
    }

    /// Called once the listeners have stopped accepting (a stop, or a hand-over to a new
    /// process). Pingora then drops every connection still waiting for a request, which
    /// would drop one accepted a moment before whose request is on its way: such
    /// connections get a short grace to send their first bytes.
    async fn cleanup(&self) {
        let until = Instant::now() + FIRST_REQUEST_GRACE;
        while self.unread.load(Ordering::Relaxed) > 0 && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.app.cleanup().await
    }
}

/// Runs a connection (`serve`) until it ends or its deadline passes; then the connection is
/// closed, after the `408` a begun request gets. A TLS listener's `tls` counts the handshakes
/// that time out.
async fn guard(
    connection: &Connection,
    tls: Option<&tls::Acceptor>,
    serve: impl Future<Output = Option<Stream>>,
) -> Option<Stream> {
    let mut serve = std::pin::pin!(serve);
    let mut timer = Box::pin(tokio::time::sleep(Duration::ZERO));
    let mut armed = None;
    std::future::poll_fn(|cx| {
        if let Poll::Ready(out) = serve.as_mut().poll(cx) {
            return Poll::Ready(out);
        }
        // The proxy moves the deadline as requests come and go. The timer is re-armed at
        // once only for an earlier deadline; a later one is taken up when the timer fires,
        // which keeps timer updates off the path of every request.
        loop {
            let Some(deadline) = connection.deadline() else {
                return Poll::Pending;
            };
            if armed.is_none_or(|at| deadline < at) {
                armed = Some(deadline);
                timer.as_mut().reset(deadline.into());
            }
            if timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            match armed {
                Some(at) if deadline > at => {
                    armed = Some(deadline);
                    timer.as_mut().reset(deadline.into());
                }
                _ => break,
            }
        }
        let kind = match connection.phase() {
            Phase::Idle => "idle",
            Phase::Handshake => {
                if let Some(tls) = tls {
                    tls.timed_out();
                }
                "header"
            }
            Phase::Head | Phase::H2 | Phase::Request => "header",
        };
        metrics::global()
            .client_timeouts
            .with_label_values(&[&connection.listener, kind])
            .inc();
        log::debug!(
            "closing a client connection on {}: {kind} timeout",
            connection.listener
        );
        // One more turn lets a reader waiting for the head offer its `408`.
        connection.expired.store(true, Ordering::Relaxed);
        let _ = serve.as_mut().poll(cx);
        Poll::Ready(None)
    })
    .await
}
