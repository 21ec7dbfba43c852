//! Real HTTP clients and constant-memory body helpers for large transfers.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt, Empty};
use hyper::{HeaderMap, Request};
use hyper_util::rt::{TokioExecutor, TokioIo};

use reqwest::redirect::Policy;
use reqwest::{Client, ClientBuilder};
use sha2::{Digest, Sha256};
use tokio::net::TcpStream;

use crate::origin::hex;
use crate::pattern::Pattern;

/// Settings shared by both clients: never route through a proxy from the environment (the
/// proxy under test is the only one), give slow debug builds time, and show redirects to the
/// test instead of following them.
fn builder() -> ClientBuilder {
    Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(60))
        .redirect(Policy::none())
}

/// A reqwest client for HTTP/1.1.
pub fn http1() -> Client {
    builder()
        .http1_only()
        .build()
        .expect("building HTTP/1.1 client")
}

/// A reqwest client for HTTP/1.1 that opens a new connection for every request (none is kept
/// idle for reuse): each request meets the listener afresh.
pub fn http1_connection_per_request() -> Client {
    builder()
        .http1_only()
        .pool_max_idle_per_host(0)
        .build()
        .expect("building HTTP/1.1 client")
}

/// A reqwest client speaking cleartext HTTP/2 with prior knowledge (h2c).
pub fn h2c() -> Client {
    builder()
        .http2_prior_knowledge()
        .build()
        .expect("building h2c client")
}

/// A reqwest client builder for HTTPS (rustls) that trusts only `ca_pem` (a PEM root
/// certificate, such as a test CA's): HTTP/2 or HTTP/1.1 as ALPN negotiates. Point names at
/// the proxy with [`ClientBuilder::resolve`].
pub fn https(ca_pem: &[u8]) -> ClientBuilder {
    let root = reqwest::Certificate::from_pem(ca_pem).expect("a PEM root certificate");
    builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(root)
}

/// A streaming request body of `n` deterministic pseudo-random bytes (the same bytes as the
/// origin's `/bytes/{n}`), generated lazily in 64 KiB chunks so huge uploads use constant
/// memory. Its length is unknown to reqwest, so HTTP/1.1 sends it chunked unless the request
/// also sets `content-length: n`.
pub fn generated_body(n: u64) -> reqwest::Body {
    let chunks = Pattern::new(n).map(Ok::<_, Infallible>);
    reqwest::Body::wrap_stream(futures_util::stream::iter(chunks))
}

/// Streams a response body to the end, returning (byte count, lower-case hex SHA-256).
pub async fn sha256_of_body(mut resp: reqwest::Response) -> (u64, String) {
    let mut hasher = Sha256::new();
    let mut len = 0u64;
    while let Some(chunk) = resp
        .chunk()
        .await
        .unwrap_or_else(|e| panic!("reading response body after {len} bytes: {e}"))
    {
        len += chunk.len() as u64;
        hasher.update(&chunk);
    }
    (len, hex(&hasher.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{expected_bytes_sha256, Origin};

    #[tokio::test]
    async fn generated_body_with_content_length_is_not_chunked() {
        let origin = Origin::start("len").await;
        let resp = http1()
            .put(format!("http://{}/upload", origin.addr()))
            .header("content-length", 70_000)
            .body(generated_body(70_000))
            .send()
            .await
            .unwrap();
        let json: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(json["headers"]["content-length"], "70000");
        assert!(json["headers"].get("transfer-encoding").is_none());
        assert_eq!(json["body_sha256"], expected_bytes_sha256(70_000));
    }
}

/// A response as [`h2c_get_with_trailers`] read it.
#[derive(Debug)]
pub struct TrailedResponse {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// The trailers, when the response had any.
    pub trailers: Option<HeaderMap>,
    /// Why the response ended before its end (a reset stream), if it did.
    pub cut_short: Option<String>,
}

/// `GET path` from `addr` over HTTP/2 with prior knowledge, reading the response's trailers
/// too (reqwest does not show them).
pub async fn h2c_get_with_trailers(addr: SocketAddr, path: &str) -> TrailedResponse {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(connection);
    let request = Request::get(format!("http://{addr}{path}"))
        .body(Empty::<Bytes>::new())
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    let (parts, mut body) = response.into_parts();
    let mut data = BytesMut::new();
    let mut trailers = None;
    let mut cut_short = None;
    while let Some(frame) = body.frame().await {
        let frame = match frame {
            Ok(frame) => frame,
            Err(e) => {
                cut_short = Some(e.to_string());
                break;
            }
        };
        match frame.into_data() {
            Ok(chunk) => data.extend_from_slice(&chunk),
            Err(frame) => trailers = frame.into_trailers().ok(),
        }
    }
    TrailedResponse {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body: data.freeze(),
        trailers,
        cut_short,
    }
}
