//! The admin listener: `/metrics` (Prometheus), `/healthz` (the process answers), `/ready`
//! (fit to take traffic: not shutting down, and every filter able to start instances),
//! `/config` (the configuration generation in use), `POST /config/reload` and
//! `POST /cache/purge`. It listens on its own address, loopback by default, never on a proxy
//! listener.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::Method;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use crate::cache::{Cache, PurgeMode, PurgeTarget};
use crate::causes;
use crate::config::AdminToken;
use crate::local_http::{reply, ClientAddr, Handler, LocalServer, Reply};
use crate::metrics;
use crate::runtime::{Generation, Generations, Reloaded};

/// Purge requests are a few hundred bytes; anything much larger is a mistake.
const MAX_PURGE_REQUEST: usize = 64 << 10;

/// What `/ready` reports on.
pub(crate) struct Readiness {
    /// Set when a shutdown started: load balancers should stop sending traffic.
    pub draining: Arc<AtomicBool>,
    /// The filters of the generation serving now: which cannot start instances (crash
    /// back-off).
    pub generations: Arc<Generations>,
}

/// The listener, and what closes it before the process ends (a hand-over to a new process).
pub(crate) struct AdminServer(LocalServer, Arc<tokio::sync::Notify>);

impl AdminServer {
    pub(crate) fn bind(
        addr: SocketAddr,
        readiness: Arc<Readiness>,
        generations: Arc<Generations>,
        cache: Option<Arc<Cache>>,
        token: Option<AdminToken>,
    ) -> std::io::Result<Self> {
        let token = Arc::new(token);
        let handler: Handler = Arc::new(move |req| -> Reply {
            let readiness = readiness.clone();
            let generations = generations.clone();
            let cache = cache.clone();
            let token = token.clone();
            Box::pin(async move {
                let path = req.uri().path();
                if matches!(path, "/cache/purge" | "/config/reload") {
                    if let Some(refusal) = unauthorized(&req, token.as_ref().as_ref()) {
                        return refusal;
                    }
                }
                match req.uri().path() {
                    "/cache/purge" => purge(req, cache.as_deref()).await,
                    "/config/reload" => reload(req, &generations).await,
                    "/config" if req.method() == Method::GET => {
                        config_in_use(&generations.current())
                    }
                    path => route(req.method(), path, &readiness),
                }
            })
        });
        Ok(AdminServer(
            LocalServer::bind("admin listener", addr, handler)?,
            Arc::new(tokio::sync::Notify::new()),
        ))
    }

    /// Notified, it closes the listener (its port is free for another process to bind).
    pub(crate) fn closer(&self) -> Arc<tokio::sync::Notify> {
        self.1.clone()
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
            let unavailable = readiness.generations.current().filters.unavailable();
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
        (_, "/metrics" | "/healthz" | "/ready" | "/config") => {
            reply(405, "text/plain", "method not allowed\n")
        }
        _ => reply(
            404,
            "text/plain",
            "not found: try /metrics, /healthz, /ready, /config, POST /config/reload or POST /cache/purge\n",
        ),
    }
}

/// Why a request to an endpoint that changes state is refused: with a token configured, it
/// must carry it (`Authorization: Bearer …`); without one, it must come from this host.
fn unauthorized<B>(
    req: &hyper::Request<B>,
    token: Option<&AdminToken>,
) -> Option<hyper::Response<Full<Bytes>>> {
    let error = |status: u16, message: &str| {
        let body = serde_json::json!({"error": message});
        reply(status, "application/json", body.to_string())
    };
    match token {
        Some(token) => {
            let offered = req
                .headers()
                .get(http::header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .map(str::trim);
            if offered.is_some_and(|offered| same_secret(offered, &token.0)) {
                return None;
            }
            let mut refusal = error(401, "send the admin token as `Authorization: Bearer TOKEN`");
            refusal.headers_mut().insert(
                http::header::WWW_AUTHENTICATE,
                http::HeaderValue::from_static("Bearer"),
            );
            Some(refusal)
        }
        None => {
            let local = req
                .extensions()
                .get::<ClientAddr>()
                .is_some_and(|client| client.0.ip().is_loopback());
            (!local).then(|| {
                error(
                    403,
                    "only this host may reload or purge; set `admin.token` to allow others",
                )
            })
        }
    }
}

/// Compares without stopping at the first difference, so that the time taken does not tell
/// how much of a guess was right.
fn same_secret(offered: &str, secret: &str) -> bool {
    offered.len() == secret.len()
        && offered
            .bytes()
            .zip(secret.bytes())
            .fold(0u8, |difference, (a, b)| difference | (a ^ b))
            == 0
}

/// `GET /config`: the generation serving new requests.
fn config_in_use(generation: &Generation) -> hyper::Response<Full<Bytes>> {
    let loaded_at = generation
        .loaded_at
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    let body = serde_json::json!({
        "generation": generation.number,
        "loaded_at_unix": loaded_at,
        "source_sha256": generation.source_sha256,
        "config": generation.summary,
    });
    reply(200, "application/json", body.to_string())
}

/// `POST /config/reload`: reloads the configuration file and answers how it went: the new
/// generation, or the problems (as `edgeward validate` prints them), the one in use unchanged.
async fn reload(
    req: hyper::Request<Incoming>,
    generations: &Generations,
) -> hyper::Response<Full<Bytes>> {
    if req.method() != Method::POST {
        let body = serde_json::json!({"error": "use POST"});
        return reply(405, "application/json", body.to_string());
    }
    if let Some((status, why)) = cross_site_refusal(req.headers(), false) {
        let body = serde_json::json!({"error": why});
        return reply(status, "application/json", body.to_string());
    }
    match generations.reload().await {
        Ok(Reloaded::Generation(number)) => {
            let body = serde_json::json!({"reloaded": true, "generation": number});
            reply(200, "application/json", body.to_string())
        }
        Ok(Reloaded::HandedOver(pid)) => {
            let body = serde_json::json!({"reloaded": true, "handed_over_to": pid});
            reply(200, "application/json", body.to_string())
        }
        Err(e) => {
            let problems: Vec<String> = causes::describe(&e).lines().map(str::to_string).collect();
            let body = serde_json::json!({
                "reloaded": false,
                "generation": generations.current().number,
                "problems": problems,
            });
            reply(422, "application/json", body.to_string())
        }
    }
}

/// `POST /cache/purge` with `{"url": "https://host/path?query"}` (or a bare path for every
/// host) or `{"surrogate_key": "key"}`, and `"soft": true` to mark stale instead of removing.
async fn purge(
    req: hyper::Request<Incoming>,
    cache: Option<&Cache>,
) -> hyper::Response<Full<Bytes>> {
    let error = |status: u16, message: &str| {
        let body = serde_json::json!({"error": message});
        reply(status, "application/json", body.to_string())
    };
    if req.method() != Method::POST {
        return error(405, "use POST");
    }
    if let Some((status, why)) = cross_site_refusal(req.headers(), true) {
        return error(status, why);
    }
    let Some(cache) = cache else {
        return error(404, "the cache is not configured");
    };
    let body = match Limited::new(req.into_body(), MAX_PURGE_REQUEST)
        .collect()
        .await
    {
        Ok(body) => body.to_bytes(),
        Err(e) => return error(400, &format!("cannot read the request: {e}")),
    };
    let request: PurgeRequest = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(e) => {
            return error(
                400,
                &format!("expected {{\"url\": ...}} or {{\"surrogate_key\": ...}}: {e}"),
            )
        }
    };
    let (target, how) = match (request.url, request.surrogate_key) {
        (Some(url), None) => match url_target(&url) {
            Some(target) => (target, "url"),
            None => return error(400, &format!("`{url}` is not a URL or a path")),
        },
        (None, Some(key)) if !key.is_empty() => (PurgeTarget::SurrogateKey(key), "surrogate_key"),
        _ => return error(400, "give exactly one of `url` and `surrogate_key`"),
    };
    let mode = if request.soft {
        PurgeMode::Soft
    } else {
        PurgeMode::Hard
    };
    let purged = cache.purge(&target, mode, how);
    let body = serde_json::json!({"purged": purged, "mode": mode.as_str()});
    reply(200, "application/json", body.to_string())
}

/// Why a request that changes state is refused as one a browser could have been made to send
/// from another site: a browser sends `text/plain` and form bodies across sites without asking,
/// but not JSON; and it names the page's site in `Origin`. A request without a body (`has_body`
/// false) may leave out `Content-Type`, but a form or text body is refused all the same.
fn cross_site_refusal(headers: &http::HeaderMap, has_body: bool) -> Option<(u16, &'static str)> {
    let content_type = headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(str::trim);
    let acceptable = match content_type {
        Some(kind) => kind.eq_ignore_ascii_case("application/json"),
        None => !has_body,
    };
    if !acceptable {
        return Some((415, "send the body as `Content-Type: application/json`"));
    }
    let origin = headers.get(http::header::ORIGIN).map(|v| v.as_bytes());
    let host = headers.get(http::header::HOST).map(|v| v.as_bytes());
    let same_site = match (origin, host) {
        (None, _) => true,
        (Some(origin), Some(host)) => origin
            .strip_prefix(b"http://")
            .is_some_and(|origin_host| origin_host.eq_ignore_ascii_case(host)),
        (Some(_), None) => false,
    };
    (!same_site).then_some((
        403,
        "cross-site requests are refused (`Origin` is another site)",
    ))
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct PurgeRequest {
    url: Option<String>,
    surrogate_key: Option<String>,
    #[serde(default)]
    soft: bool,
}

/// `https://Example.com/a?b` → that host's `/a?b`; `/a?b` → `/a?b` on any host.
fn url_target(url: &str) -> Option<PurgeTarget> {
    let uri: http::Uri = url.trim().parse().ok()?;
    let path_and_query = uri.path_and_query()?.as_str().to_string();
    if !path_and_query.starts_with('/') {
        return None;
    }
    Some(PurgeTarget::Url {
        host: uri.host().map(|h| h.to_ascii_lowercase()),
        path_and_query,
    })
}

#[async_trait::async_trait]
impl BackgroundService for AdminServer {
    async fn start(&self, _shutdown: ShutdownWatch) {
        tokio::select! {
            () = self.0.serve() => {}
            () = self.1.notified() => log::info!("admin listener closed for the new process"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(from: &str, authorization: Option<&str>) -> hyper::Request<()> {
        let mut builder = hyper::Request::post("/config/reload");
        if let Some(value) = authorization {
            builder = builder.header("authorization", value);
        }
        let mut req = builder.body(()).unwrap();
        req.extensions_mut()
            .insert(ClientAddr(from.parse().unwrap()));
        req
    }

    #[test]
    fn without_a_token_only_this_host_may_change_state() {
        assert!(unauthorized(&request("127.0.0.1:5000", None), None).is_none());
        assert!(unauthorized(&request("[::1]:5000", None), None).is_none());
        let refused = unauthorized(&request("10.1.2.3:5000", None), None).unwrap();
        assert_eq!(refused.status(), 403);
    }

    #[test]
    fn with_a_token_every_client_must_send_it() {
        let token = AdminToken("0123456789abcdef-secret".into());
        let allowed = request("10.1.2.3:5000", Some("Bearer 0123456789abcdef-secret"));
        assert!(unauthorized(&allowed, Some(&token)).is_none());
        for offered in [None, Some("Bearer wrong"), Some("0123456789abcdef-secret")] {
            let refused = unauthorized(&request("127.0.0.1:5000", offered), Some(&token)).unwrap();
            assert_eq!(refused.status(), 401, "{offered:?}");
            assert_eq!(refused.headers()["www-authenticate"], "Bearer");
        }
        assert!(!format!("{token:?}").contains("secret"));
    }
}
