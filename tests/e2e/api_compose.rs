//! The `api-compose` filter through the real proxy: a route answered with one JSON document
//! merged from three upstreams called in parallel (proved by origins that answer only once
//! all three requests have arrived), values from the request's path, query and headers
//! substituted and percent-encoded, failed and timed-out parts (`null` and `errors`), required
//! parts failing the request, hostile path segments, configurations `validate` refuses, and
//! the document cached by a caching route in front of the composing one.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use edgeward_testkit::{client, filters, reqwest, serve_http, Origin, Proxy};
use http_body_util::Full;
use hyper::Response;
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Barrier;
use tokio::task::JoinHandle;

use crate::support::{
    config, read_until_closed, refused_by_validate, start_proxy, use_built_binary,
};

/// An origin whose every answer waits until `parties` requests have arrived: parts called one
/// after the other would never all arrive, so each would time out instead. Answers
/// `{"path": <path and query as received>, "request_id": <x-request-id>}`.
struct Rendezvous {
    addr: String,
    server: JoinHandle<()>,
}

impl Rendezvous {
    async fn start(parties: usize) -> Rendezvous {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let barrier = Arc::new(Barrier::new(parties));
        let server = serve_http(listener, move |request: hyper::Request<_>| {
            let barrier = barrier.clone();
            async move {
                barrier.wait().await;
                let header = |name: &str| {
                    request
                        .headers()
                        .get(name)
                        .map(|v| v.to_str().unwrap().to_owned())
                };
                let body = json!({
                    "path": request.uri().path_and_query().unwrap().as_str(),
                    "request_id": header("x-request-id"),
                    "host": header("host"),
                });
                Response::builder()
                    .header("content-type", "application/json")
                    .body(Full::new(Bytes::from(body.to_string())))
                    .unwrap()
            }
        });
        Rendezvous { addr, server }
    }
}

impl Drop for Rendezvous {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// GETs `path` with `headers`: the status, the response's headers and its JSON body.
async fn get(
    proxy: &Proxy,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, reqwest::header::HeaderMap, Value) {
    let mut request = client::http1().get(proxy.url(path));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let head = response.headers().clone();
    let text = response.text().await.unwrap();
    let body = serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"));
    (status, head, body)
}

/// The body of a raw HTTP/1.1 GET of `target`, sent byte for byte (clients normalize `..`).
async fn raw_get(proxy: &Proxy, target: &str) -> Value {
    let mut stream = TcpStream::connect(proxy.addr()).await.unwrap();
    let request = format!("GET {target} HTTP/1.1\r\nHost: shop\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let (received, _) = read_until_closed(&mut stream, Duration::from_secs(60)).await;
    let text = String::from_utf8(received).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{target}: {head}");
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{target}: not JSON ({e}): {body}"))
}

#[tokio::test]
async fn three_parts_are_called_at_once_and_merged_into_one_document() {
    let rendezvous = Rendezvous::start(3).await;
    let route_origin = Origin::start("route-origin").await;
    let proxy = start_proxy(&config(
        r#"
listeners: [{address: "{{listen}}"}]
upstreams:
  users: {endpoints: ["$meet"]}
  orders: {endpoints: ["$meet"]}
  prefs: {endpoints: ["$meet"]}
  origin: {endpoints: ["$origin"]}
filters:
  compose:
    module: $module
    callouts: [users, orders, prefs]
    config:
      timeout: 20s
      parts:
        user:
          from: users
          path: "/users/{path.2}"
          headers: {x-request-id: "{header.x-request-id}"}
        orders: {from: orders, path: "/orders?user={path.2}&status={query.status}&limit={query.limit:-10}"}
        prefs: {from: prefs, path: "/prefs/{header.x-tenant}/{property.route_name}", authority: prefs.internal}
routes:
  - name: account
    match: {path_prefix: /account/}
    upstream: origin
    filters: [compose]
"#,
        &[
            ("meet", rendezvous.addr.clone()),
            ("origin", route_origin.addr().to_string()),
            ("module", filters::API_COMPOSE.to_string()),
        ],
    ))
    .await;

    let (status, head, document) = get(
        &proxy,
        "/account/7?status=open%20now",
        &[("x-tenant", "acme/eu?x=1"), ("x-request-id", "compose-1")],
    )
    .await;
    assert_eq!(status, 200, "{document}");
    assert_eq!(
        document,
        json!({
            "orders": {"path": "/orders?user=7&status=open%20now&limit=10", "request_id": null, "host": "orders"},
            "prefs": {"path": "/prefs/acme%2Feu%3Fx%3D1/account", "request_id": null, "host": "prefs.internal"},
            "user": {"path": "/users/7", "request_id": "compose-1", "host": "users"},
        }),
        "no `errors`: every part arrived within its timeout, so all three were in flight together"
    );
    assert_eq!(head["content-type"], "application/json");
    assert!(head.get("cache-control").is_none(), "{head:?}");
    assert_eq!(
        route_origin.requests(),
        0,
        "the route's upstream is never asked"
    );
}

#[tokio::test]
async fn failed_parts_are_null_and_listed_in_errors() {
    let origin = Origin::start("origin").await;
    let proxy = start_proxy(&config(
        r#"
listeners: [{address: "{{listen}}"}]
upstreams:
  origin: {endpoints: ["$origin"]}
filters:
  compose:
    module: $module
    callouts: [origin]
    config:
      cache_control: "public, max-age=60"
      parts:
        user: {from: origin, path: "/users/{path.2}"}
        broken: {from: origin, path: "/status/503"}
        slow: {from: origin, path: "/delay/60000", timeout: 300ms}
        binary: {from: origin, path: "/bytes/64"}
        search: {from: origin, path: "/search?q={query.q}"}
routes: [{upstream: origin, filters: [compose]}]
"#,
        &[
            ("origin", origin.addr().to_string()),
            ("module", filters::API_COMPOSE.to_string()),
        ],
    ))
    .await;

    let (status, head, document) = get(&proxy, "/account/7", &[]).await;
    assert_eq!(status, 200, "{document}");
    assert_eq!(
        head["cache-control"], "no-store",
        "a document with a hole is not cached"
    );
    assert_eq!(document["user"]["path"], "/users/7");
    assert_eq!(document["user"]["origin"], "origin");
    for part in ["broken", "slow", "binary", "search"] {
        assert_eq!(document[part], Value::Null, "{part}: {document}");
    }
    assert_eq!(
        document["errors"],
        json!([
            {"part": "binary", "reason": "the answer is not JSON"},
            {"part": "broken", "reason": "upstream answered 503"},
            {"part": "search", "reason": "no value for {query.q}"},
            {"part": "slow", "reason": "timed out"},
        ])
    );
}

#[tokio::test]
async fn a_required_part_that_fails_fails_the_request() {
    let origin = Origin::start("origin").await;
    let proxy = start_proxy(&config(
        r#"
listeners: [{address: "{{listen}}"}]
upstreams:
  origin: {endpoints: ["$origin"]}
filters:
  failing:
    module: $module
    callouts: [origin]
    config:
      parts:
        user: {from: origin, path: "/users/1"}
        orders: {from: origin, path: "/status/500", required: true}
  timing-out:
    module: $module
    callouts: [origin]
    config:
      parts:
        user: {from: origin, path: "/users/1"}
        orders: {from: origin, path: "/delay/60000", timeout: 300ms, required: true}
  needing-a-value:
    module: $module
    callouts: [origin]
    config:
      parts:
        user: {from: origin, path: "/users/{path.2}", required: true}
        orders: {from: origin, path: "/orders"}
routes:
  - {match: {path_prefix: /failing/}, upstream: origin, filters: [failing]}
  - {match: {path_prefix: /timing-out/}, upstream: origin, filters: [timing-out]}
  - {match: {path_prefix: /needing-a-value}, upstream: origin, filters: [needing-a-value]}
"#,
        &[
            ("origin", origin.addr().to_string()),
            ("module", filters::API_COMPOSE.to_string()),
        ],
    ))
    .await;

    for (path, status, error, reason) in [
        ("/failing/1", 502, "part_failed", "upstream answered 500"),
        ("/timing-out/1", 504, "part_timeout", "timed out"),
        (
            "/needing-a-value",
            400,
            "bad_request",
            "no value for {path.2}",
        ),
    ] {
        let (got, head, body) = get(&proxy, path, &[("x-request-id", "req-42")]).await;
        assert_eq!(got, status, "{path}: {body}");
        assert_eq!(head["content-type"], "application/json", "{path}");
        assert_eq!(head["cache-control"], "no-store", "{path}");
        let part = if path == "/needing-a-value" {
            "user"
        } else {
            "orders"
        };
        assert_eq!(
            body,
            json!({"error": error, "status": status, "part": part, "reason": reason, "request_id": "req-42"}),
            "{path}"
        );
    }
    assert_eq!(
        origin.hits_for("/orders"),
        0,
        "a required part without its value asks no other part"
    );
}

#[tokio::test]
async fn hostile_values_stay_inside_their_segment() {
    let origin = Origin::start("origin").await;
    let proxy = start_proxy(&config(
        r#"
listeners: [{address: "{{listen}}"}]
upstreams:
  origin: {endpoints: ["$origin"]}
filters:
  compose:
    module: $module
    callouts: [origin]
    config:
      parts:
        user: {from: origin, path: "/users/{path.2}/profile?view={query.view:-full}"}
routes: [{upstream: origin, filters: [compose]}]
"#,
        &[
            ("origin", origin.addr().to_string()),
            ("module", filters::API_COMPOSE.to_string()),
        ],
    ))
    .await;

    for (target, sent) in [
        // Slashes, a query and a fragment of the client's stay one encoded segment.
        (
            "/account/..%2F..%2Fadmin%3Fx=1%23top",
            "/users/..%2F..%2Fadmin%3Fx%3D1%23top/profile?view=full",
        ),
        // A query value cannot add parameters.
        (
            "/account/7?view=brief%26admin%3Dtrue",
            "/users/7/profile?view=brief%26admin%3Dtrue",
        ),
        // Percent-decoded, then encoded again: one encoding, never two.
        ("/account/a%20b%25", "/users/a%20b%25/profile?view=full"),
    ] {
        let document = raw_get(&proxy, target).await;
        assert_eq!(document["user"]["path"], sent, "{target}: {document}");
    }
    // A segment that is `..` (sent as is, or encoded) would climb out of `/users/`.
    for target in ["/account/..", "/account/%2e%2E", "/account/./x"] {
        let document = raw_get(&proxy, target).await;
        assert_eq!(
            document,
            json!({"user": null, "errors": [{"part": "user", "reason": "a value makes a `.` or `..` path segment"}]}),
            "{target}"
        );
    }
    assert_eq!(
        origin.hits(),
        3,
        "only the three safe requests reached the origin"
    );
}

#[test]
fn validate_refuses_unknown_upstreams_and_bad_placeholders() {
    use_built_binary();
    let yaml = config(
        r#"
listeners: [{address: "127.0.0.1:8080"}]
upstreams:
  users: {builtin: echo}
  orders: {builtin: echo}
filters:
  not-allowed:
    module: $module
    callouts: [users]
    config:
      parts:
        user: {from: users, path: "/users/{path.2}"}
        orders: {from: orders, path: "/orders"}
  bad-placeholder:
    module: $module
    callouts: [users]
    config:
      parts:
        user: {from: users, path: "/users/{path.0}"}
routes: [{upstream: users, filters: [not-allowed, bad-placeholder]}]
"#,
        &[("module", filters::API_COMPOSE.to_string())],
    );
    let stderr = refused_by_validate(&yaml);
    for expected in [
        "filter `not-allowed`",
        "api-compose: invalid configuration: parts.orders.from: upstream `orders` is not in the filter's `callouts` (users)",
        "filter `bad-placeholder`",
        "api-compose: invalid configuration: parts.user.path: `{path.0}`: the segment number must be 1 to 64",
    ] {
        assert!(stderr.contains(expected), "missing {expected:?} in:\n{stderr}");
    }
}

#[tokio::test]
async fn the_route_caches_the_document_when_the_filter_is_its_origin() {
    let origin = Origin::start("origin").await;
    // The filter answers as a `builtin: filters` upstream: its document comes back through
    // the proxy like an origin's, so the caching route stores it; on the route itself a
    // filter's answer would go out before the cache is looked at. `silent`'s filter answers
    // nothing.
    let proxy = start_proxy(&config(
        r#"
listeners: [{address: "{{listen}}"}]
upstreams:
  origin: {endpoints: ["$origin"]}
  accounts: {builtin: filters, filters: [compose]}
  silent: {builtin: filters, filters: [rewriter]}
filters:
  compose:
    module: $module
    callouts: [origin]
    config:
      cache_control: "public, max-age=60"
      parts:
        user: {from: origin, path: "/users/{path.2}"}
        orders: {from: origin, path: "/orders/{path.2}"}
  rewriter: {module: $rewriter}
routes:
  - match: {path_prefix: /account/}
    upstream: accounts
    cache: {}
  - upstream: silent
"#,
        &[
            ("origin", origin.addr().to_string()),
            ("module", filters::API_COMPOSE.to_string()),
            ("rewriter", filters::HEADER_REWRITER.to_string()),
        ],
    ))
    .await;

    let mut documents = Vec::new();
    for expected in ["fwd=miss", "hit"] {
        let (status, head, document) = get(&proxy, "/account/7", &[]).await;
        assert_eq!(status, 200, "{document}");
        let cache_status = head["cache-status"].to_str().unwrap();
        assert!(cache_status.contains(expected), "{cache_status}");
        assert_eq!(document["user"]["path"], "/users/7");
        assert_eq!(document["orders"]["path"], "/orders/7");
        documents.push(document);
    }
    assert_eq!(documents[0], documents[1]);
    assert_eq!(origin.hits_for("/users/7"), 1, "the hit asked no part");
    assert_eq!(origin.hits_for("/orders/7"), 1);

    // Filters that let the request through answer nothing: the origin says so.
    let (status, _, answer) = get(&proxy, "/elsewhere", &[]).await;
    assert_eq!(status, 502, "{answer}");
    assert_eq!(answer["error"], "no_answer", "{answer}");
}
