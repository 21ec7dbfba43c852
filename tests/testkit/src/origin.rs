//! Real HTTP origins, served in-process by hyper on 127.0.0.1: HTTP/1.1 and h2c, or HTTPS
//! (HTTP/2 or HTTP/1.1 by ALPN, optionally requiring a client certificate) with
//! [`Origin::start_tls`].
//!
//! Paths:
//! - `/healthz`: 200 "ok", or 503 after [`Origin::set_healthy`]`(false)`.
//! - `/bytes/{n}`: exactly `n` deterministic pseudo-random bytes, streamed with a
//!   `content-length`; compare with [`expected_bytes_sha256`].
//! - `/trickle/{n}`: as `/bytes/{n}`, but the body only after [`TRICKLE_PAUSE`]: a proxy has
//!   sent the response head on before any of its body arrives.
//! - `/delay/{ms}`: waits `ms` milliseconds before the response headers, then echoes.
//! - `/status/{code}`: that status with a small body.
//! - `/trailers/...?t=Name:Value`: the body `trailed body\n`, then the trailers the query
//!   lists (repeatable; sent over HTTP/2, and over HTTP/1.1 to clients that accept them).
//! - `/cache/{name}?...`: a response shaped by the query, for cache tests (see
//!   [`Origin::hits_for`]): `h=Name:Value` adds a response header (repeatable), `status=N`,
//!   `size=N` sends `N` pattern bytes (as `/bytes`; `chunked=1` without a length) instead of
//!   the JSON body `{"origin", "path", "n" (this path's hit count), "headers"}`, `etag=V`
//!   sends `ETag: "V"` and answers `304` to an `If-None-Match` listing it, `nm=Name:Value` sets a
//!   header on such `304`s only (replacing an `h=` one of that name), `delay=MS` waits
//!   first. [`Origin::set_failure`] makes these answer an error status instead, and
//!   [`Origin::set_hang_up`] makes them close the connection without any answer.
//! - anything else: a JSON echo of the request (see [`Origin::start`]).
//!
//! Every response carries `x-origin: <name>` so tests can see which origin answered.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_LENGTH, CONTENT_TYPE};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::TlsAcceptor;

use crate::pattern::Pattern;

const HEALTH_PATH: &str = "/healthz";
/// How long `/trickle/{n}` holds its body back after the head.
pub const TRICKLE_PAUSE: Duration = Duration::from_millis(300);

type Body = BoxBody<Bytes, Infallible>;

/// An HTTP origin on 127.0.0.1:<ephemeral>. Dropping it stops the server, including
/// connections already open (so a proxy's pooled keep-alive connections die with it).
pub struct Origin {
    addr: SocketAddr,
    state: Arc<State>,
    server: JoinHandle<()>,
}

/// What the origin has seen, shared between the handle and the request handlers.
struct State {
    name: String,
    name_header: HeaderValue,
    requests: AtomicUsize,
    hits: AtomicUsize,
    healthy: AtomicBool,
    last_request_headers: Mutex<BTreeMap<String, String>>,
    hits_by_path: PathHits,
    /// Status `/cache/...` answers with instead of its response.
    failure: Mutex<Option<u16>>,
    /// `/cache/...` closes the connection instead of answering.
    hang_up: AtomicBool,
}

/// Marks a response that is not sent: the connection is closed instead.
#[derive(Clone, Copy)]
struct HangUp;

/// What a connection closed for [`HangUp`] reports to hyper.
#[derive(Debug)]
struct HungUp;

impl std::fmt::Display for HungUp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the origin hangs up on purpose")
    }
}

impl std::error::Error for HungUp {}

impl Origin {
    /// Starts an origin named `name` on 127.0.0.1:<ephemeral>. Must be called inside a tokio
    /// runtime.
    ///
    /// The default route answers 200 `application/json`:
    /// `{"origin", "method", "path" (with query), "headers" (lower-case names, repeated values
    /// joined with ", "), "body_bytes", "body_sha256", "received_at_unix_ns"}`. The request
    /// body is hashed as it streams in, so uploads of any size use constant memory.
    /// `received_at_unix_ns` is when the request's head reached the origin (the system
    /// clock, in nanoseconds since the Unix epoch; before the wait of `/delay/{ms}`);
    /// `"version"` is the HTTP version the request came in (`HTTP/1.1`, `HTTP/2.0`).
    pub async fn start(name: &str) -> Origin {
        Origin::start_with(name, None).await
    }

    /// As [`Origin::start`], but serving HTTPS only, with `tls`.
    pub async fn start_tls(name: &str, tls: &OriginTls) -> Origin {
        Origin::start_with(name, Some(tls.acceptor())).await
    }

    async fn start_with(name: &str, tls: Option<TlsAcceptor>) -> Origin {
        let name_header = HeaderValue::from_str(name)
            .unwrap_or_else(|e| panic!("origin name {name:?} is not a valid header value: {e}"));
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("origin {name}: cannot bind 127.0.0.1:0: {e}"));
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(State {
            name: name.to_owned(),
            name_header,
            requests: AtomicUsize::new(0),
            hits: AtomicUsize::new(0),
            healthy: AtomicBool::new(true),
            last_request_headers: Mutex::new(BTreeMap::new()),
            hits_by_path: PathHits::default(),
            failure: Mutex::new(None),
            hang_up: AtomicBool::new(false),
        });
        let server = serve(listener, tls, {
            let state = state.clone();
            move |request| handle(state.clone(), request)
        });
        Origin {
            addr,
            state,
            server,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn name(&self) -> &str {
        &self.state.name
    }

    /// Number of requests received so far (all paths, including /healthz).
    pub fn requests(&self) -> usize {
        self.state.requests.load(Ordering::SeqCst)
    }

    /// Number of requests received so far excluding the health path /healthz, i.e. the
    /// traffic the proxy routed here as opposed to its health checks.
    pub fn hits(&self) -> usize {
        self.state.hits.load(Ordering::SeqCst)
    }

    /// Make /healthz answer 503 (false) or 200 (true). Default healthy.
    pub fn set_healthy(&self, healthy: bool) {
        self.state.healthy.store(healthy, Ordering::SeqCst);
    }

    /// Requests received for `path` (without the query).
    pub fn hits_for(&self, path: &str) -> usize {
        self.state.hits_by_path.of(path)
    }

    /// Makes `/cache/...` answer with `status` (Some) or behave normally again (None).
    pub fn set_failure(&self, status: Option<u16>) {
        *self.state.failure.lock().unwrap() = status;
    }

    /// Makes `/cache/...` close the connection without answering (true), as an origin that
    /// crashes mid-request, or answer normally again (false).
    pub fn set_hang_up(&self, hang_up: bool) {
        self.state.hang_up.store(hang_up, Ordering::SeqCst);
    }

    /// Headers of the last non-/healthz request received (lower-case names; repeated values
    /// joined with ", ").
    pub fn last_request_headers(&self) -> BTreeMap<String, String> {
        self.state.last_request_headers.lock().unwrap().clone()
    }
}

impl Drop for Origin {
    fn drop(&mut self) {
        // The connection tasks live in a JoinSet owned by the server task, so aborting it
        // closes the listener and every open connection.
        self.server.abort();
    }
}

/// How an HTTPS origin serves: its certificate chain and key (PEM), and the root its
/// clients' certificates must chain to, when it requires one.
pub struct OriginTls {
    pub chain_pem: String,
    pub key_pem: String,
    pub client_ca_pem: Option<String>,
    /// ALPN protocols offered, most preferred first (`h2`, `http/1.1`).
    pub alpn: Vec<&'static str>,
}

impl OriginTls {
    fn acceptor(&self) -> TlsAcceptor {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let chain = rustls::pki_types::CertificateDer::pem_slice_iter(self.chain_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .expect("origin certificate chain PEM");
        let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes())
            .expect("origin key PEM");
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .expect("TLS versions");
        let builder = match &self.client_ca_pem {
            None => builder.with_no_client_auth(),
            Some(ca) => {
                let mut roots = rustls::RootCertStore::empty();
                for der in rustls::pki_types::CertificateDer::pem_slice_iter(ca.as_bytes()) {
                    roots.add(der.expect("client CA PEM")).expect("client CA");
                }
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots),
                    provider,
                )
                .build()
                .expect("client verifier");
                builder.with_client_cert_verifier(verifier)
            }
        };
        let mut config = builder
            .with_single_cert(chain, key)
            .expect("origin certificate and key");
        config.alpn_protocols = self.alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
        TlsAcceptor::from(Arc::new(config))
    }
}

/// Requests a server received, by path (without the query): [`Origin`]'s, and those of
/// servers made with [`serve_http`]. Clones count together.
#[derive(Clone, Default)]
pub struct PathHits(Arc<Mutex<BTreeMap<String, usize>>>);

impl PathHits {
    pub fn count(&self, path: &str) {
        *self.0.lock().unwrap().entry(path.to_owned()).or_default() += 1;
    }

    /// Requests received for `path`.
    pub fn of(&self, path: &str) -> usize {
        self.0.lock().unwrap().get(path).copied().unwrap_or(0)
    }
}

/// Serves HTTP/1.1 and h2c on `listener` with `handle` until the returned task is aborted;
/// aborting it also closes every open connection (they live in the task's `JoinSet`).
/// For tests that need a server with behaviour an [`Origin`] does not have.
pub fn serve_http<H, Fut, B>(listener: TcpListener, handle: H) -> JoinHandle<()>
where
    H: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<B>> + Send + 'static,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    serve(listener, None, handle)
}

/// A connection, plain or TLS.
trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Io for T {}

/// [`serve_http`], over TLS when `tls` is given (a failed handshake closes that connection).
fn serve<H, Fut, B>(listener: TcpListener, tls: Option<TlsAcceptor>, handle: H) -> JoinHandle<()>
where
    H: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<B>> + Send + 'static,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    tokio::spawn(async move {
        let mut connections = JoinSet::new();
        loop {
            tokio::select! {
                accepted = listener.accept() => {
                    let Ok((stream, _)) = accepted else { continue };
                    let handle = handle.clone();
                    let tls = tls.clone();
                    connections.spawn(async move {
                        let service = service_fn(move |request| {
                            let answer = handle(request);
                            async move {
                                let response = answer.await;
                                // hyper closes the connection, unanswered, on a service error.
                                match response.extensions().get::<HangUp>() {
                                    Some(_) => Err(HungUp),
                                    None => Ok(response),
                                }
                            }
                        });
                        let stream: Box<dyn Io> = match tls {
                            None => Box::new(stream),
                            Some(acceptor) => match acceptor.accept(stream).await {
                                Ok(stream) => Box::new(stream),
                                Err(_) => return,
                            },
                        };
                        // Errors here are clients going away mid-request; nothing to report.
                        let _ = auto::Builder::new(TokioExecutor::new())
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    });
                }
                // Reap finished connections so the set does not grow over a long test.
                Some(_) = connections.join_next() => {}
            }
        }
    })
}

async fn handle(state: Arc<State>, req: Request<Incoming>) -> Response<Body> {
    let received = SystemTime::now();
    state.requests.fetch_add(1, Ordering::SeqCst);
    let path = req.uri().path().to_owned();
    let mut response = if path == HEALTH_PATH {
        health(&state)
    } else {
        state.hits.fetch_add(1, Ordering::SeqCst);
        state.hits_by_path.count(&path);
        *state.last_request_headers.lock().unwrap() = header_map(req.headers());
        route(&state, &path, req, received).await
    };
    response
        .headers_mut()
        .insert("x-origin", state.name_header.clone());
    response
}

fn health(state: &State) -> Response<Body> {
    if state.healthy.load(Ordering::SeqCst) {
        text(StatusCode::OK, "ok")
    } else {
        text(StatusCode::SERVICE_UNAVAILABLE, "unhealthy")
    }
}

async fn route(
    state: &State,
    path: &str,
    req: Request<Incoming>,
    received: SystemTime,
) -> Response<Body> {
    if let Some(n) = path.strip_prefix("/bytes/") {
        let Ok(n) = n.parse::<u64>() else {
            return text(StatusCode::BAD_REQUEST, "bad byte count");
        };
        let chunks = Pattern::new(n).map(|chunk| Ok(Frame::data(chunk)));
        let body = StreamBody::new(futures_util::stream::iter(chunks));
        return Response::builder()
            .header(CONTENT_LENGTH, n)
            .header(CONTENT_TYPE, "application/octet-stream")
            .body(BodyExt::boxed(body))
            .unwrap();
    }
    if let Some(n) = path.strip_prefix("/trickle/") {
        let Ok(n) = n.parse::<u64>() else {
            return text(StatusCode::BAD_REQUEST, "bad byte count");
        };
        let mut chunks = Some(Pattern::new(n).map(|chunk| Ok(Frame::data(chunk))));
        let body = futures_util::stream::once(tokio::time::sleep(TRICKLE_PAUSE))
            .flat_map(move |()| futures_util::stream::iter(chunks.take().into_iter().flatten()));
        return Response::builder()
            .header(CONTENT_LENGTH, n)
            .header(CONTENT_TYPE, "application/octet-stream")
            .body(BodyExt::boxed(StreamBody::new(body)))
            .unwrap();
    }
    if let Some(ms) = path.strip_prefix("/delay/") {
        let Ok(ms) = ms.parse::<u64>() else {
            return text(StatusCode::BAD_REQUEST, "bad delay");
        };
        tokio::time::sleep(Duration::from_millis(ms)).await;
        return echo(state, req, received).await;
    }
    if path.starts_with("/cache/") {
        return shaped(state, path, req).await;
    }
    if path.starts_with("/trailers/") {
        return trailed(&req);
    }
    if let Some(code) = path.strip_prefix("/status/") {
        return match code.parse::<u16>().map(StatusCode::from_u16) {
            Ok(Ok(status)) => text(status, &format!("status {}\n", status.as_u16())),
            _ => text(StatusCode::BAD_REQUEST, "bad status code"),
        };
    }
    echo(state, req, received).await
}

/// A short body followed by the trailers the query lists (see the module docs).
fn trailed(req: &Request<Incoming>) -> Response<Body> {
    let query = req.uri().query().unwrap_or("");
    let mut trailers = HeaderMap::new();
    for (key, value) in form_urlencoded::parse(query.as_bytes()) {
        let Some((name, value)) = value.split_once(':').filter(|_| key == "t") else {
            continue;
        };
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) else {
            return text(StatusCode::BAD_REQUEST, "bad trailer");
        };
        trailers.append(name, value);
    }
    let frames = [
        Frame::data(Bytes::from_static(b"trailed body\n")),
        Frame::trailers(trailers),
    ];
    let body = StreamBody::new(futures_util::stream::iter(frames.map(Ok)));
    Response::builder()
        .header(CONTENT_TYPE, "text/plain")
        .body(BodyExt::boxed(body))
        .unwrap()
}

/// A response shaped by the request's query (see the module docs).
async fn shaped(state: &State, path: &str, req: Request<Incoming>) -> Response<Body> {
    let query = req.uri().query().unwrap_or("").to_owned();
    let params: Vec<(String, String)> = form_urlencoded::parse(query.as_bytes())
        .into_owned()
        .collect();
    let param = |name: &str| {
        params
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    };
    if let Some(ms) = param("delay").and_then(|ms| ms.parse().ok()) {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    if state.hang_up.load(Ordering::SeqCst) {
        let mut response = text(StatusCode::INTERNAL_SERVER_ERROR, "never sent\n");
        response.extensions_mut().insert(HangUp);
        return response;
    }
    if let Some(status) = *state.failure.lock().unwrap() {
        return text(
            StatusCode::from_u16(status).unwrap(),
            "failing on purpose\n",
        );
    }
    let mut builder = Response::builder();
    for (_, header) in params.iter().filter(|(n, _)| n == "h") {
        let (name, value) = header
            .split_once(':')
            .unwrap_or_else(|| panic!("h={header} is not Name:Value"));
        builder = builder.header(name.trim(), value.trim());
    }
    if let Some(etag) = param("etag") {
        let quoted = format!("\"{etag}\"");
        // Any tag of the list, compared weakly.
        let matches = req
            .headers()
            .get_all(hyper::header::IF_NONE_MATCH)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|tag| tag.trim().trim_start_matches("W/") == quoted);
        builder = builder.header(hyper::header::ETAG, quoted);
        if matches {
            if let Some(headers) = builder.headers_mut() {
                for (_, header) in params.iter().filter(|(n, _)| n == "nm") {
                    let (name, value) = header
                        .split_once(':')
                        .unwrap_or_else(|| panic!("nm={header} is not Name:Value"));
                    headers.insert(
                        hyper::header::HeaderName::from_bytes(name.trim().as_bytes()).unwrap(),
                        HeaderValue::from_str(value.trim()).unwrap(),
                    );
                }
            }
            return builder
                .status(StatusCode::NOT_MODIFIED)
                .body(full(String::new()))
                .unwrap();
        }
    }
    let status = param("status").map_or(200, |s| s.parse().unwrap());
    builder = builder.status(status);
    if let Some(size) = param("size").map(|s| s.parse::<u64>().unwrap()) {
        let chunks = Pattern::new(size).map(|chunk| Ok::<_, Infallible>(Frame::data(chunk)));
        let body = StreamBody::new(futures_util::stream::iter(chunks));
        if param("chunked") != Some("1") {
            builder = builder.header(CONTENT_LENGTH, size);
        }
        return builder
            .header(CONTENT_TYPE, "application/octet-stream")
            .body(BodyExt::boxed(body))
            .unwrap();
    }
    let json = serde_json::json!({
        "origin": state.name,
        "path": req.uri().path_and_query().map_or("/", |p| p.as_str()),
        "n": state.hits_by_path.of(path),
        "headers": header_map(req.headers()),
    });
    builder
        .header(CONTENT_TYPE, "application/json")
        .body(full(json.to_string()))
        .unwrap()
}

/// Describes the request back as JSON, hashing the body as it streams in.
async fn echo(state: &State, req: Request<Incoming>, received: SystemTime) -> Response<Body> {
    let (parts, mut body) = req.into_parts();
    let mut hasher = Sha256::new();
    let mut body_bytes = 0u64;
    while let Some(frame) = body.frame().await {
        let frame = match frame {
            Ok(frame) => frame,
            Err(e) => return text(StatusCode::BAD_REQUEST, &format!("reading body: {e}")),
        };
        if let Some(data) = frame.data_ref() {
            body_bytes += data.len() as u64;
            hasher.update(data);
        }
    }
    let json = serde_json::json!({
        "origin": state.name,
        "method": parts.method.as_str(),
        "path": parts.uri.path_and_query().map_or("/", |p| p.as_str()),
        "headers": header_map(&parts.headers),
        "body_bytes": body_bytes,
        "body_sha256": hex(&hasher.finalize()),
        "received_at_unix_ns": unix_nanos(received),
        "version": format!("{:?}", parts.version),
    });
    Response::builder()
        .header(CONTENT_TYPE, "application/json")
        .body(full(json.to_string()))
        .unwrap()
}

/// Nanoseconds since the Unix epoch (0 for a clock set before it).
pub fn unix_nanos(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH).map_or(0, |since| {
        u64::try_from(since.as_nanos()).unwrap_or(u64::MAX)
    })
}

fn text(status: StatusCode, body: &str) -> Response<Body> {
    Response::builder()
        .status(status)
        .header(CONTENT_TYPE, "text/plain")
        .body(full(body.to_owned()))
        .unwrap()
}

fn full(body: String) -> Body {
    Full::new(Bytes::from(body)).boxed()
}

/// Lower-case names (as `http` stores them), repeated values joined with ", ".
fn header_map(headers: &HeaderMap) -> BTreeMap<String, String> {
    let mut map = BTreeMap::new();
    for name in headers.keys() {
        let values: Vec<_> = headers
            .get_all(name)
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect();
        map.insert(name.as_str().to_owned(), values.join(", "));
    }
    map
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Lower-case hex SHA-256 of what `/bytes/{n}` (and [`crate::client::generated_body`]) sends,
/// computed chunk by chunk without holding the whole sequence.
pub fn expected_bytes_sha256(n: u64) -> String {
    let mut hasher = Sha256::new();
    Pattern::new(n).for_each(|chunk| hasher.update(&chunk));
    hex(&hasher.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::{generated_body, h2c, http1, sha256_of_body};

    #[tokio::test]
    async fn bytes_are_streamed_with_exact_length_and_hash() {
        let origin = Origin::start("alpha").await;
        let resp = http1()
            .get(format!("http://{}/bytes/1000000", origin.addr()))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["x-origin"], "alpha");
        assert_eq!(resp.headers()["content-length"], "1000000");
        assert_eq!(
            sha256_of_body(resp).await,
            (1_000_000, expected_bytes_sha256(1_000_000))
        );
        assert_eq!((origin.requests(), origin.hits()), (1, 1));
    }

    #[tokio::test]
    async fn echo_hashes_streamed_upload_and_reports_request() {
        let origin = Origin::start("beta").await;
        let resp = http1()
            .post(format!("http://{}/anything?x=1", origin.addr()))
            .header("x-test", "a")
            .header("x-test", "b")
            .body(generated_body(3_000_000))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["content-type"], "application/json");
        let json: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(json["origin"], "beta");
        assert_eq!(json["method"], "POST");
        assert_eq!(json["path"], "/anything?x=1");
        assert_eq!(json["headers"]["x-test"], "a, b");
        assert_eq!(json["body_bytes"], 3_000_000);
        assert_eq!(json["body_sha256"], expected_bytes_sha256(3_000_000));
        assert_eq!(origin.last_request_headers()["x-test"], "a, b");
    }

    #[tokio::test]
    async fn delay_waits_then_echoes() {
        let origin = Origin::start("slow").await;
        let started = std::time::Instant::now();
        let resp = http1()
            .get(format!("http://{}/delay/50", origin.addr()))
            .send()
            .await
            .unwrap();
        assert!(started.elapsed() >= Duration::from_millis(50));
        let json: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(json["path"], "/delay/50");
    }

    #[tokio::test]
    async fn echo_says_when_the_request_arrived_before_any_delay() {
        let origin = Origin::start("clock").await;
        let sent = unix_nanos(SystemTime::now());
        let resp = http1()
            .get(format!("http://{}/delay/200", origin.addr()))
            .send()
            .await
            .unwrap();
        let answered = unix_nanos(SystemTime::now());
        let json: serde_json::Value = resp.json().await.unwrap();
        let received = json["received_at_unix_ns"].as_u64().unwrap();
        assert!(sent <= received, "sent at {sent}, received at {received}");
        assert!(
            received + 200_000_000 <= answered,
            "received at {received}, answered at {answered}, after a 200 ms delay"
        );
    }

    #[tokio::test]
    async fn status_answers_with_that_code() {
        let origin = Origin::start("gamma").await;
        let resp = http1()
            .get(format!("http://{}/status/503", origin.addr()))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 503);
        assert_eq!(resp.headers()["x-origin"], "gamma");
    }

    #[tokio::test]
    async fn healthz_follows_set_healthy_and_is_not_a_hit() {
        let origin = Origin::start("delta").await;
        let url = format!("http://{}/healthz", origin.addr());
        let client = http1();
        assert_eq!(client.get(&url).send().await.unwrap().status(), 200);
        origin.set_healthy(false);
        assert_eq!(client.get(&url).send().await.unwrap().status(), 503);
        origin.set_healthy(true);
        assert_eq!(client.get(&url).send().await.unwrap().status(), 200);
        assert_eq!((origin.requests(), origin.hits()), (3, 0));
        assert!(origin.last_request_headers().is_empty());
    }

    #[tokio::test]
    async fn h2c_is_served() {
        let origin = Origin::start("h2").await;
        let resp = h2c()
            .get(format!("http://{}/bytes/100000", origin.addr()))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.version(), reqwest::Version::HTTP_2);
        assert_eq!(
            sha256_of_body(resp).await,
            (100_000, expected_bytes_sha256(100_000))
        );
    }

    #[tokio::test]
    async fn dropping_the_origin_closes_open_connections() {
        let origin = Origin::start("gone").await;
        let url = format!("http://{}/", origin.addr());
        let client = http1();
        client.get(&url).send().await.unwrap();
        drop(origin);
        tokio::task::yield_now().await;
        assert!(client.get(&url).send().await.is_err());
    }
}
