//! `builtin: echo`: an origin inside the edgeward process, on its own loopback port, so that
//! requests to it still travel the whole proxy path (upstream connection, pooling, cache).
//! It answers every request with 200 and JSON describing what it received.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use sha2::{Digest, Sha256};

use crate::local_http::{reply, LocalServer};

pub(super) struct EchoOrigin(LocalServer);

impl EchoOrigin {
    pub(super) fn bind(name: &str) -> std::io::Result<Self> {
        let upstream: Arc<str> = name.into();
        let handler = Arc::new(move |req| -> crate::local_http::Reply {
            Box::pin(echo(req, upstream.clone()))
        });
        let server = LocalServer::bind(
            format!("builtin origin `{name}`"),
            SocketAddr::from(([127, 0, 0, 1], 0)),
            handler,
        )?;
        Ok(EchoOrigin(server))
    }

    pub(super) fn addr(&self) -> SocketAddr {
        self.0.addr()
    }

    /// The server, for [`LocalServers`](crate::local_http::LocalServers) to serve.
    pub(super) fn into_server(self) -> LocalServer {
        self.0
    }
}

async fn echo(req: Request<Incoming>, upstream: Arc<str>) -> Response<Full<Bytes>> {
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
                let error =
                    serde_json::json!({ "error": "bad_request_body", "message": e.to_string() });
                return reply(400, "application/json", error.to_string());
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
    let description = serde_json::json!({
        "upstream": &*upstream,
        "method": parts.method.as_str(),
        "path": path,
        "headers": headers,
        "body_bytes": body_bytes,
        "body_sha256": hex::encode(hasher.finalize()),
    });
    reply(200, "application/json", description.to_string())
}
