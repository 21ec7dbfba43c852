//! Small HTTP/1.1 servers edgeward runs itself (the builtin origins, the admin listener): a
//! listener bound at start-up, so its address is known and a conflict is an error before
//! serving starts, and a handler answering each request.

use std::convert::Infallible;
use std::future::Future;
use std::net::{SocketAddr, TcpListener as StdListener};
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;

pub(crate) type Reply = Pin<Box<dyn Future<Output = Response<Full<Bytes>>> + Send>>;
pub(crate) type Handler = Arc<dyn Fn(Request<Incoming>) -> Reply + Send + Sync>;

pub(crate) struct LocalServer {
    name: String,
    addr: SocketAddr,
    listener: Mutex<Option<StdListener>>,
    handler: Handler,
}

impl LocalServer {
    pub(crate) fn bind(
        name: impl Into<String>,
        addr: SocketAddr,
        handler: Handler,
    ) -> std::io::Result<Self> {
        let listener = StdListener::bind(addr)?;
        listener.set_nonblocking(true)?;
        Ok(LocalServer {
            name: name.into(),
            addr: listener.local_addr()?,
            listener: Mutex::new(Some(listener)),
            handler,
        })
    }

    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves until the process ends (in-flight proxied requests may need these servers
    /// while a shutdown drains).
    pub(crate) async fn serve(&self) {
        let Some(std_listener) = self.listener.lock().ok().and_then(|mut l| l.take()) else {
            return;
        };
        let listener = match tokio::net::TcpListener::from_std(std_listener) {
            Ok(listener) => listener,
            Err(e) => {
                log::error!("{} cannot listen on {}: {e}", self.name, self.addr);
                return;
            }
        };
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    log::warn!("{}: accept failed: {e}", self.name);
                    continue;
                }
            };
            let handler = self.handler.clone();
            tokio::spawn(async move {
                let service = service_fn(move |mut req: Request<Incoming>| {
                    req.extensions_mut().insert(ClientAddr(peer));
                    let reply = handler(req);
                    async move { Ok::<_, Infallible>(reply.await) }
                });
                // Errors here are clients going away; nothing to report.
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    }
}

/// Several servers served from one background service until `shutdown`, which comes when the
/// runtime generation they belong to is retired (not when the process drains: requests in
/// flight still need them): a configuration's builtin origins.
pub(crate) struct LocalServers(pub(crate) Vec<LocalServer>);

#[async_trait::async_trait]
impl pingora::services::background::BackgroundService for LocalServers {
    async fn start(&self, mut shutdown: pingora::server::ShutdownWatch) {
        let serving = futures_util::future::join_all(self.0.iter().map(LocalServer::serve));
        tokio::select! {
            _ = serving => {}
            _ = shutdown.changed() => {}
        }
    }
}

/// The address a request came from, in its extensions.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ClientAddr(pub(crate) SocketAddr);

/// A response with `body` of `content_type`.
pub(crate) fn reply(
    status: u16,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() =
        hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(content_type),
    );
    response
}
