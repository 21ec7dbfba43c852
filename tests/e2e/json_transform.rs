//! The `json-transform` filter through the real proxy: an API's JSON responses filtered at the
//! edge (fields kept, removed, renamed and set, also inside arrays), request bodies rewritten
//! before the origin sees them, bodies it cannot transform passed on or refused, and cache
//! hits transformed while the cache keeps the origin's body.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use edgeward_testkit::{client, filters, reqwest, serve_http, Origin, PathHits, Proxy};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper::Response;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::support::{config, metrics_showing, refused_by_validate, start_proxy};

/// The origin's order, as an API would answer it (prices written with their cents).
const ORDER: &str = r#"{"id":42,"status":"shipped",
  "customer":{"name":"Ann","email":"ann@example.com","password_hash":"$2b$10$x"},
  "items":[{"sku":"A-1","qty":2,"price":19.90,"secret":"cost=7"},
           {"sku":"B-2","qty":1,"price":5.00,"secret":"cost=1"}],
  "internal":{"trace":"abc"}}"#;

/// The filter's configuration for the order: what a public API shows of it.
const PUBLIC_ORDER: &str = r#"
      response:
        keep: [/id, /status, /customer/name, /items]
        remove: [/items/*/secret]
        rename: {/items/*/qty: /items/*/quantity}
        set: {/edge/request_id: "${request.id}", /edge/served_by: edgeward}"#;

/// [`ORDER`] as [`PUBLIC_ORDER`] makes it, for the request id `id`.
fn public_order(id: &str) -> String {
    format!(
        r#"{{"id":42,"status":"shipped","customer":{{"name":"Ann"}},"items":[{{"sku":"A-1","price":19.90,"quantity":2}},{{"sku":"B-2","price":5.00,"quantity":1}}],"edge":{{"request_id":"{id}","served_by":"edgeward"}}}}"#
    )
}

/// A body nested far deeper than the filter parses (serde_json's limit is 128).
fn deep_json() -> String {
    format!("{}{}", "[".repeat(200), "]".repeat(200))
}

/// A valid JSON body of 4 KiB, with a secret to remove.
fn large_json() -> String {
    format!(r#"{{"secret":"s","padding":"{}"}}"#, "x".repeat(4096))
}

/// An origin answering chosen bodies, counting requests per path:
/// - `/order`: [`ORDER`], `application/json` with a `Content-Length`;
/// - `/order/chunked`: the same in three chunks, without a length (chunks come
///   [`CHUNK_PAUSE`] apart, so that the proxy reads them one by one);
/// - `/order/cached`: the same, fresh for a minute;
/// - `/order/text`: the same, as `text/plain`;
/// - `/order/gzip`: the same bytes, but saying `Content-Encoding: gzip`;
/// - `/invalid`: `{"secret": "s", "a":` (truncated), `application/json`;
/// - `/deep`: [`deep_json`], `application/problem+json`;
/// - `/large`: [`large_json`] with a `Content-Length`; `/large/chunked`: the same in 1 KiB
///   chunks without one, [`CHUNK_PAUSE`] apart.
struct JsonOrigin {
    addr: SocketAddr,
    hits: PathHits,
    server: JoinHandle<()>,
}

impl JsonOrigin {
    async fn start() -> JsonOrigin {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hits = PathHits::default();
        let server = serve_http(listener, {
            let hits = hits.clone();
            move |request: hyper::Request<hyper::body::Incoming>| {
                let path = request.uri().path().to_owned();
                hits.count(&path);
                async move { answer(&path) }
            }
        });
        JsonOrigin { addr, hits, server }
    }

    fn hits(&self, path: &str) -> usize {
        self.hits.of(path)
    }
}

impl Drop for JsonOrigin {
    fn drop(&mut self) {
        self.server.abort();
    }
}

type Body = BoxBody<Bytes, Infallible>;

/// The time between the chunks of a chunked answer.
const CHUNK_PAUSE: Duration = Duration::from_millis(50);

fn answer(path: &str) -> Response<Body> {
    let json = "application/json";
    let (content_type, body, chunk) = match path {
        "/order" | "/order/cached" | "/order/gzip" => (json, ORDER.to_owned(), None),
        "/order/chunked" => (json, ORDER.to_owned(), Some(ORDER.len() / 3 + 1)),
        "/order/text" => ("text/plain", ORDER.to_owned(), None),
        "/invalid" => (json, r#"{"secret": "s", "a":"#.to_owned(), None),
        "/deep" => ("application/problem+json", deep_json(), None),
        "/large" => (json, large_json(), None),
        "/large/chunked" => (json, large_json(), Some(1024)),
        _ => {
            return Response::builder()
                .status(404)
                .body(Full::new(Bytes::new()).boxed())
                .unwrap()
        }
    };
    let mut response = Response::builder().header("content-type", content_type);
    if path == "/order/cached" {
        response = response.header("cache-control", "max-age=60");
    }
    if path == "/order/gzip" {
        response = response.header("content-encoding", "gzip");
    }
    let body = match chunk {
        None => Full::new(Bytes::from(body)).boxed(),
        Some(size) => {
            let chunks: Vec<Bytes> = body
                .as_bytes()
                .chunks(size)
                .map(Bytes::copy_from_slice)
                .collect();
            let trickle = futures_util::StreamExt::then(
                futures_util::stream::iter(chunks),
                |chunk| async move {
                    tokio::time::sleep(CHUNK_PAUSE).await;
                    Ok::<_, Infallible>(Frame::data(chunk))
                },
            );
            StreamBody::new(trickle).boxed()
        }
    };
    response.body(body).unwrap()
}

/// What came back: status, headers, body text.
struct Answer {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

async fn send(request: reqwest::RequestBuilder) -> Answer {
    let response = request.send().await.expect("a response through the proxy");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response.text().await.expect("the response body");
    Answer {
        status,
        headers,
        body,
    }
}

async fn get(proxy: &Proxy, path: &str, headers: &[(&str, &str)]) -> Answer {
    let mut request = client::http1().get(proxy.url(path));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    send(request).await
}

/// A proxy in front of `origin` (upstream `origin`) with filter `json` configured by
/// `filter_config` (YAML continuing `config:`) and `routes` (YAML list items).
async fn proxy_with(origin: SocketAddr, filter_config: &str, routes: &str) -> Proxy {
    start_proxy(&config(
        r#"
listeners: [{address: "{{listen}}"}]
admin: {address: "{{admin}}"}
upstreams:
  origin: {endpoints: ["$origin"]}
filters:
  json:
    module: $module
    config:$config
routes:
$routes
"#,
        &[
            ("origin", origin.to_string()),
            ("module", filters::JSON_TRANSFORM.to_string()),
            ("config", filter_config.to_string()),
            ("routes", routes.to_string()),
        ],
    ))
    .await
}

const ONE_ROUTE: &str = "  - {upstream: origin, filters: [json]}";

#[tokio::test]
async fn an_api_response_is_filtered_at_the_edge() {
    let origin = JsonOrigin::start().await;
    let proxy = proxy_with(origin.addr, PUBLIC_ORDER, ONE_ROUTE).await;

    // With a Content-Length, or chunked; over HTTP/1.1 and HTTP/2: the same public order.
    for path in ["/order", "/order/chunked"] {
        let answer = get(&proxy, path, &[("x-request-id", "order-1")]).await;
        assert_eq!(answer.status, 200, "{path}: {}", answer.body);
        assert_eq!(answer.body, public_order("order-1"), "{path}");
        assert_eq!(answer.header("content-type"), Some("application/json"));
        // The origin's length no longer holds: it was removed, and the body sent chunked.
        assert_eq!(answer.header("content-length"), None, "{path}");
        assert_eq!(
            answer.header("transfer-encoding"),
            Some("chunked"),
            "{path}"
        );
    }
    let h2 = send(
        client::h2c()
            .get(proxy.url("/order"))
            .header("x-request-id", "order-2"),
    )
    .await;
    assert_eq!(h2.body, public_order("order-2"));

    // Not JSON by its type: untouched, its length kept.
    let text = get(&proxy, "/order/text", &[]).await;
    assert_eq!(text.body, ORDER);
    assert_eq!(
        text.header("content-length"),
        Some(ORDER.len().to_string().as_str())
    );

    metrics_showing(
        &proxy,
        &[(
            r#"wasmcustom_json_transform_bodies{filter="json",direction="response",outcome="transformed"}"#,
            3.0,
        )],
    )
    .await;
}

#[tokio::test]
async fn bodies_it_cannot_transform_go_on_unchanged() {
    let origin = JsonOrigin::start().await;
    let filter = r#"
      response: {remove: [/secret, /items/*/secret]}
      max_body: 1KiB"#;
    let proxy = proxy_with(origin.addr, filter, ONE_ROUTE).await;

    let order_text = || ORDER.to_owned();
    for (path, origin_body) in [
        (
            "/invalid",
            (|| r#"{"secret": "s", "a":"#.to_owned()) as fn() -> String,
        ),
        ("/deep", deep_json),
        ("/large", large_json),
        ("/large/chunked", large_json),
        ("/order/gzip", order_text),
    ] {
        let answer = get(&proxy, path, &[]).await;
        assert_eq!(answer.status, 200, "{path}");
        assert_eq!(answer.body, origin_body(), "{path}");
    }
    metrics_showing(
        &proxy,
        &[(
            r#"wasmcustom_json_transform_bodies{filter="json",direction="response",outcome="passed"}"#,
            5.0,
        )],
    )
    .await;
}

#[tokio::test]
async fn with_fail_closed_bodies_it_cannot_transform_are_refused() {
    let origin = JsonOrigin::start().await;
    let filter = r#"
      response: {remove: [/secret, /items/*/secret]}
      max_body: 1KiB
      fail_closed: true"#;
    let proxy = proxy_with(origin.addr, filter, ONE_ROUTE).await;

    // Refused from the head: the filter's answer, always.
    for (path, error) in [
        ("/large", "body_too_large"),
        ("/order/gzip", "unsupported_content_encoding"),
    ] {
        let answer = get(&proxy, path, &[]).await;
        assert_eq!(answer.status, 502, "{path}: {}", answer.body);
        assert_eq!(answer.json()["error"], error, "{path}: {}", answer.body);
    }
    // Refused from the body: the filter's answer if the head had not left yet (the body came
    // with it), else the response is cut short. Either way the client never gets the body.
    for (path, error) in [
        ("/invalid", "invalid_json"),
        ("/deep", "json_too_deep"),
        ("/large/chunked", "body_too_large"),
    ] {
        let mut response = client::http1().get(proxy.url(path)).send().await.unwrap();
        let status = response.status().as_u16();
        let mut body = Vec::new();
        let ending = loop {
            match response.chunk().await {
                Ok(Some(chunk)) => body.extend_from_slice(&chunk),
                Ok(None) => break Ok(()),
                Err(err) => break Err(err),
            }
        };
        let body = String::from_utf8_lossy(&body);
        match ending {
            Ok(()) => {
                assert_eq!(status, 502, "{path}: {body}");
                let answer: Value = serde_json::from_str(&body).unwrap();
                assert_eq!(answer["error"], error, "{path}: {body}");
            }
            Err(cut_short) => {
                assert_eq!(status, 200, "{path}: {cut_short}");
                assert_eq!(body, "", "{path}: {cut_short}");
            }
        }
    }
    // What it can transform still is.
    let fine = get(&proxy, "/order", &[]).await;
    assert_eq!(fine.status, 200);
    assert!(!fine.body.contains("secret"), "{}", fine.body);
    // Not JSON by its type: not the filter's business, even failing closed.
    assert_eq!(get(&proxy, "/order/text", &[]).await.body, ORDER);
}

#[tokio::test]
async fn request_bodies_are_transformed_only_when_configured() {
    let origin = Origin::start("echo").await;
    let filter = r#"
      request:
        remove: [/role, /users/*/admin]
        set: {/client/id: "${request.headers.x-client}"}
      max_body: 1KiB
      fail_closed: true"#;
    let proxy = proxy_with(origin.addr(), filter, ONE_ROUTE).await;
    let post = |body: String, content_type: &'static str| {
        send(
            client::http1()
                .post(proxy.url("/signup"))
                .header("content-type", content_type)
                .header("x-client", "app-7")
                .body(body),
        )
    };

    // What reaches the origin: the body as the filter made it (the echo reports its digest).
    let signup = post(
        r#"{"name":"eve","role":"admin","users":[{"n":1,"admin":true},{"n":2}]}"#.to_owned(),
        "application/json",
    )
    .await;
    assert_eq!(signup.status, 200, "{}", signup.body);
    let expected = r#"{"name":"eve","users":[{"n":1},{"n":2}],"client":{"id":"app-7"}}"#;
    let echoed = signup.json();
    assert_eq!(echoed["body_bytes"], expected.len(), "{echoed}");
    assert_eq!(echoed["body_sha256"], sha256_hex(expected), "{echoed}");
    assert_eq!(echoed["headers"]["content-length"], Value::Null, "{echoed}");
    // The echo's own JSON answer is not touched: responses are not configured.
    assert!(echoed["origin"] == "echo", "{echoed}");

    // A form is not JSON: it goes as it is, even failing closed.
    let form = post("role=admin".to_owned(), "application/x-www-form-urlencoded").await;
    assert_eq!(form.json()["body_sha256"], sha256_hex("role=admin"));

    // Invalid JSON, failing closed: the client gets 400 (the upstream request, whose head
    // had left, is aborted without the body).
    let invalid = post(r#"{"role":"admin""#.to_owned(), "application/json").await;
    assert_eq!(invalid.status, 400, "{}", invalid.body);
    assert_eq!(invalid.json()["error"], "invalid_json");

    // Announced larger than max_body, failing closed: 413 from the head, before any upstream
    // request.
    let before = origin.hits();
    let large = post(large_json(), "application/json").await;
    assert_eq!(large.status, 413, "{}", large.body);
    assert_eq!(large.json()["error"], "body_too_large");
    assert_eq!(origin.hits(), before);
}

#[tokio::test]
async fn cache_hits_are_transformed_and_the_cache_keeps_the_origins_body() {
    let origin = JsonOrigin::start().await;
    // Both routes cache, with the same key (host, path, query, upstream): `raw` shows what
    // the cache holds, the other one runs the filter after the cache (the default).
    let routes = r#"
  - {name: raw, match: {headers: {x-raw: "1"}}, upstream: origin, cache: {enabled: true}}
  - {name: api, upstream: origin, filters: [json], cache: {enabled: true}}"#;
    let proxy = proxy_with(origin.addr, PUBLIC_ORDER, routes).await;

    let miss = get(&proxy, "/order/cached", &[("x-request-id", "first")]).await;
    assert!(
        miss.header("cache-status")
            .unwrap_or("")
            .contains("fwd=miss"),
        "{:?}",
        miss.header("cache-status")
    );
    assert_eq!(miss.body, public_order("first"));

    let hit = get(&proxy, "/order/cached", &[("x-request-id", "second")]).await;
    let status = hit.header("cache-status").unwrap_or("");
    assert!(status.starts_with("edgeward; hit"), "{status}");
    // Transformed on the hit, for this request.
    assert_eq!(hit.body, public_order("second"));
    assert_eq!(hit.header("content-length"), None);

    // The cache holds the origin's body, untouched.
    let stored = get(&proxy, "/order/cached", &[("x-raw", "1")]).await;
    assert!(
        stored
            .header("cache-status")
            .unwrap_or("")
            .starts_with("edgeward; hit"),
        "{:?}",
        stored.header("cache-status")
    );
    assert_eq!(stored.body, ORDER);
    assert_eq!(origin.hits("/order/cached"), 1);
}

#[tokio::test]
async fn an_invalid_configuration_is_refused_naming_the_key() {
    let yaml = format!(
        r#"
listeners: [{{address: "127.0.0.1:0"}}]
upstreams: {{origin: {{endpoints: ["127.0.0.1:9"]}}}}
filters:
  json:
    module: {}
    config: {{response: {{remove: [/ok, "items/*/secret"]}}}}
routes: [{{upstream: origin, filters: [json]}}]
"#,
        filters::JSON_TRANSFORM
    );
    let stderr = refused_by_validate(&yaml);
    assert!(
        stderr.contains("on_configure returned false")
            && stderr.contains(
                "json-transform: invalid configuration: response.remove[1]: `items/*/secret` is not a JSON pointer"
            ),
        "{stderr}"
    );
}

fn sha256_hex(text: &str) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(text.as_bytes()))
}
