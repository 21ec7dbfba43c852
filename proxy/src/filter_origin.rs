//! `builtin: filters`: origins inside edgeward whose answers filters make. Each such upstream
//! gets a loopback server, as `builtin: echo` does, that runs its filters' request phases on
//! every request it receives and answers with the local response one of them makes, built as
//! the proxy builds a filter's answer. The answer then travels back as any origin's: through
//! the route's response filters, its cache, the access log. What makes a filter that answers
//! by itself (API composition) cacheable: the route caches, the filter is its origin.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::HeaderValue;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Request, Response};
use pingora::http::RequestHeader;

use crate::answer::{error_body, json, Answer, REQUEST_ID};
use crate::config::{Builtin, Config, FilterId, Origin};
use crate::local_http::{ClientAddr, LocalServer, LocalServers, Reply};
use crate::sync::Task;
use crate::wasm::{FilterHost, StreamInfo, Verdict, WholeBody};

/// The largest request body such an origin reads (its filters see it whole).
const MAX_BODY: usize = 1 << 20;

/// How long its filters may hold a request: the proxy's own wait for the origin (the
/// upstream's `read_timeout`) ends it sooner when shorter.
const TIMEOUT: Duration = Duration::from_secs(30);

/// Binds an origin on loopback for each `builtin: filters` upstream of `config`, answering
/// with `host`'s filters: their addresses by upstream name, and the task that serves them until
/// the runtime generation they belong to is retired.
pub(crate) fn bind(
    config: &Config,
    host: &FilterHost,
) -> std::io::Result<(HashMap<String, SocketAddr>, Option<Task>)> {
    let mut addresses = HashMap::new();
    let mut servers = Vec::new();
    for upstream in &config.upstreams {
        let Origin::Builtin(Builtin::Filters(filters)) = &upstream.origin else {
            continue;
        };
        let origin = Arc::new(FilterOrigin {
            name: Arc::from(upstream.name.as_str()),
            filters: filters.clone(),
            host: host.clone(),
        });
        let handler = Arc::new(move |req| -> Reply { Box::pin(origin.clone().answer(req)) });
        let server = LocalServer::bind(
            format!("builtin origin `{}`", upstream.name),
            SocketAddr::from(([127, 0, 0, 1], 0)),
            handler,
        )?;
        addresses.insert(upstream.name.clone(), server.addr());
        servers.push(server);
    }
    let task = (!servers.is_empty()).then(|| Task {
        work: Arc::new(LocalServers(servers)),
        until: None,
    });
    Ok((addresses, task))
}

/// One `builtin: filters` upstream: its name and its filters.
struct FilterOrigin {
    name: Arc<str>,
    filters: Vec<FilterId>,
    host: FilterHost,
}

impl FilterOrigin {
    async fn answer(self: Arc<Self>, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let client = req.extensions().get::<ClientAddr>().map(|c| c.0);
        let (parts, body) = req.into_parts();
        let request_id = parts
            .headers
            .get(REQUEST_ID)
            .cloned()
            .unwrap_or_else(|| HeaderValue::from_static("none"));
        let refuse = |status: u16, code: &str, message: String| {
            let body = error_body(code, status, &message, &request_id);
            to_response(json(status, &body, &request_id))
        };
        let body = match Limited::new(body, MAX_BODY).collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(e) => {
                return refuse(
                    413,
                    "body_too_large",
                    format!(
                        "builtin origin `{}` reads at most {MAX_BODY} bytes: {e}",
                        self.name
                    ),
                )
            }
        };
        let target = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
        let mut req = match head(&parts, target) {
            Ok(req) => req,
            Err(e) => return refuse(400, "bad_request", e.to_string()),
        };
        let info = || StreamInfo {
            client,
            request_id: request_id.to_str().unwrap_or_default().to_string(),
            route: self.name.clone(),
            upstream: self.name.clone(),
            started: SystemTime::now(),
            request_body_bytes: body.len() as u64,
            ..StreamInfo::default()
        };
        let Some(mut chain) = self
            .host
            .chain_of(&self.filters, info, Instant::now() + TIMEOUT)
        else {
            return refuse(
                502,
                "no_answer",
                format!("builtin origin `{}` has no filters", self.name),
            );
        };
        let verdict = if body.is_empty() {
            chain.on_request_headers(&mut req, true).await
        } else {
            let verdict = chain
                .on_request_headers_reading(&mut req, &mut WholeBody(Some(body.clone())))
                .await;
            match (verdict, chain.take_early_request_body()) {
                // The body went by while a filter held the headers.
                (Verdict::Continue, None) => {
                    chain.on_request_body(&mut req, Some(body), true).await.1
                }
                (verdict, _) => verdict,
            }
        };
        let answer = match verdict {
            Verdict::Respond(local) => Answer::Local(local),
            Verdict::Fail(failure) => Answer::FilterFailed(failure),
            Verdict::Continue | Verdict::Close => {
                chain.finish(&mut req, None);
                let message = format!(
                    "the filters of builtin origin `{}` let the request through without answering it",
                    self.name
                );
                return refuse(502, "no_answer", message);
            }
        };
        let answered = answer.response(&request_id);
        chain.finish(
            &mut req,
            answered.as_ref().ok().map(|(head, _)| head.clone()),
        );
        to_response(answered)
    }
}

/// The request head the filters see, as it came.
fn head(parts: &http::request::Parts, target: &str) -> pingora::Result<RequestHeader> {
    let mut req = RequestHeader::build(
        parts.method.clone(),
        target.as_bytes(),
        Some(parts.headers.len()),
    )?;
    for (name, value) in &parts.headers {
        req.append_header(name.clone(), value.clone())?;
    }
    Ok(req)
}

/// A head and body as hyper's response; a head that cannot be built is a `500`.
fn to_response(
    answer: pingora::Result<(pingora::http::ResponseHeader, Bytes)>,
) -> Response<Full<Bytes>> {
    match answer {
        Ok((head, body)) => {
            let mut response = Response::new(Full::new(body));
            *response.status_mut() = head.status;
            *response.headers_mut() = head.headers.clone();
            response
        }
        Err(e) => crate::local_http::reply(500, "text/plain", format!("{e}\n")),
    }
}
