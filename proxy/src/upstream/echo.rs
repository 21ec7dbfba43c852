//! `builtin: echo`: an origin inside the edgeward process, on its own loopback port, so that
//! requests to it still travel the whole proxy path (upstream connection, pooling, cache).
//! It answers every request with 200 and JSON describing what it received.

use std::convert::Infallible;
use std::net::{SocketAddr, TcpListener as StdListener};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use sha2::{Digest, Sha256};

pub(super) struct EchoOrigin {
    name: Arc<str>,
    addr: SocketAddr,
    /// Bound at build time so the address is known; served once the runtime is up.
    listener: Mutex<Option<StdListener>>,
}

impl EchoOrigin {
    pub(super) fn bind(name: &str) -> std::io::Result<Self> {
        let listener = StdListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        Ok(EchoOrigin {
            name: name.into(),
            addr: listener.local_addr()?,
            listener: Mutex::new(Some(listener)),
        })
    }

    pub(super) fn addr(&self) -> SocketAddr {
        self.addr
    }

    async fn serve(&self) {
        let Some(std_listener) = self.listener.lock().ok().and_then(|mut l| l.take()) else {
            return;
        };
        let listener = match tokio::net::TcpListener::from_std(std_listener) {
            Ok(l) => l,
            Err(e) => {
                log::error!("builtin origin `{}` cannot listen: {e}", self.name);
                return;
            }
        };
        loop {
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(e) => {
                    log::warn!("builtin origin `{}`: accept failed: {e}", self.name);
                    continue;
                }
            };
            let name = self.name.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req| echo(req, name.clone()));
                // Errors here are the proxy dropping a pooled connection; nothing to report.
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    }
}

/// All echo origins of a configuration, served from one background service.
pub(super) struct EchoOrigins(pub(super) Vec<EchoOrigin>);

#[async_trait::async_trait]
impl BackgroundService for EchoOrigins {
    /// Keeps serving through shutdown: in-flight proxied requests may still need a connection.
    async fn start(&self, _shutdown: ShutdownWatch) {
        futures_util::future::join_all(self.0.iter().map(EchoOrigin::serve)).await;
    }
}

async fn echo(req: Request<Incoming>, name: Arc<str>) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, mut body) = req.into_parts();
    let mut hasher = Sha256::new();
    let mut body_bytes: u64 = 0;
    // Hash while reading so that large uploads take constant memory.
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => {
                if let Some(data) = frame.data_ref() {
                    hasher.update(data);
                    body_bytes += data.len() as u64;
                }
            }
            Err(e) => {
                return Ok(json_response(
                    400,
                    &serde_json::json!({ "error": "bad_request_body", "message": e.to_string() }),
                ))
            }
        }
    }
    let mut headers = serde_json::Map::new();
    for name in parts.headers.keys() {
        let values: Vec<String> = parts
            .headers
            .get_all(name)
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect();
        headers.insert(name.as_str().to_string(), values.join(", ").into());
    }
    let path = parts.uri.path_and_query().map_or_else(
        || parts.uri.path().to_string(),
        |pq| pq.as_str().to_string(),
    );
    Ok(json_response(
        200,
        &serde_json::json!({
            "upstream": &*name,
            "method": parts.method.as_str(),
            "path": path,
            "headers": headers,
            "body_bytes": body_bytes,
            "body_sha256": hex::encode(hasher.finalize()),
        }),
    ))
}

fn json_response(status: u16, body: &serde_json::Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::OK);
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    response
}
