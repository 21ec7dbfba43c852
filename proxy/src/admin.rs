//! The admin listener: `/metrics` (Prometheus), `/healthz` (the process answers) and `/ready`
//! (fit to take traffic: not shutting down, and every filter able to start instances). It
//! listens on its own address, loopback by default, never on a proxy listener.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use http::Method;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use crate::local_http::{reply, Handler, LocalServer, Reply};
use crate::metrics;

/// What `/ready` reports on.
pub struct Readiness {
    /// Set when a shutdown started: load balancers should stop sending traffic.
    pub draining: AtomicBool,
    /// Names of filters that cannot start instances now (crash back-off).
    pub unavailable_filters: Box<dyn Fn() -> Vec<String> + Send + Sync>,
}

pub struct AdminServer(LocalServer);

impl AdminServer {
    pub fn bind(addr: SocketAddr, readiness: Arc<Readiness>) -> std::io::Result<Self> {
        let handler: Handler = Arc::new(move |req| -> Reply {
            let readiness = readiness.clone();
            Box::pin(async move { route(req.method(), req.uri().path(), &readiness) })
        });
        Ok(AdminServer(LocalServer::bind(
            "admin listener",
            addr,
            handler,
        )?))
    }
}

fn route(
    method: &Method,
    path: &str,
    readiness: &Readiness,
) -> hyper::Response<http_body_util::Full<bytes::Bytes>> {
    match (method, path) {
        (&Method::GET, "/metrics") => {
            reply(200, "text/plain; version=0.0.4", metrics::global().render())
        }
        (&Method::GET, "/healthz") => reply(200, "text/plain", "ok\n"),
        (&Method::GET, "/ready") => {
            let draining = readiness.draining.load(Ordering::Acquire);
            let unavailable = (readiness.unavailable_filters)();
            let ready = !draining && unavailable.is_empty();
            let body = serde_json::json!({
                "ready": ready,
                "draining": draining,
                "unavailable_filters": unavailable,
            });
            reply(
                if ready { 200 } else { 503 },
                "application/json",
                body.to_string(),
            )
        }
        (_, "/metrics" | "/healthz" | "/ready") => reply(405, "text/plain", "method not allowed\n"),
        _ => reply(
            404,
            "text/plain",
            "not found: try /metrics, /healthz or /ready\n",
        ),
    }
}

#[async_trait::async_trait]
impl BackgroundService for AdminServer {
    async fn start(&self, _shutdown: ShutdownWatch) {
        self.0.serve().await
    }
}
