//! Routing: host, wildcard host, path prefix/exact/regex, method and header matches; prefix
//! stripping and host rewriting; the headers a proxy adds; no route → 404.

use edgeward_testkit::{client, Origin};

use crate::support::{config, get_json, start_proxy};

const ROUTES: &str = r#"
listeners: [{address: "{{listen}}"}]
upstreams:
  a: {endpoints: ["$a"]}
  b: {endpoints: ["$b"]}
  echo: {builtin: echo}
routes:
  - {name: api-host, match: {host: api.example.com}, upstream: a}
  - {name: wildcard, match: {host: "*.example.com"}, upstream: b}
  - {name: exact, match: {path: /exact}, upstream: a}
  - {name: regex, match: {path_regex: "/items/[0-9]+"}, upstream: b}
  - {name: writes, match: {path_prefix: /write/, methods: [POST, PUT]}, upstream: a}
  - {name: canary, match: {headers: {x-canary: "1"}}, upstream: b}
  - name: service
    match: {path_prefix: /svc/}
    upstream: a
    strip_prefix: true
    host_rewrite: origin.internal
  - {name: fallback, match: {path_prefix: /}, upstream: echo}
"#;

/// Which origin answered: test origins say `origin`, the builtin echo says `upstream`.
fn answered_by(body: &serde_json::Value) -> String {
    body.get("origin")
        .or_else(|| body.get("upstream"))
        .and_then(|v| v.as_str())
        .unwrap_or("?")
        .to_string()
}

#[tokio::test]
async fn requests_reach_the_first_matching_route() {
    let a = Origin::start("a").await;
    let b = Origin::start("b").await;
    let proxy = start_proxy(&config(
        ROUTES,
        &[("a", a.addr().to_string()), ("b", b.addr().to_string())],
    ))
    .await;

    // (method, path, request headers, origin expected to answer)
    type Case = (
        &'static str,
        &'static str,
        &'static [(&'static str, &'static str)],
        &'static str,
    );
    let cases: &[Case] = &[
        ("GET", "/anything", &[("host", "api.example.com")], "a"),
        ("GET", "/anything", &[("host", "API.example.com:8443")], "a"),
        ("GET", "/anything", &[("host", "shop.example.com")], "b"),
        (
            "GET",
            "/anything",
            &[("host", "deep.shop.example.com")],
            "b",
        ),
        ("GET", "/anything", &[("host", "example.com")], "echo"),
        ("GET", "/exact", &[], "a"),
        ("GET", "/exact/not", &[], "echo"),
        ("GET", "/items/42", &[], "b"),
        ("GET", "/items/42/reviews", &[], "echo"),
        ("POST", "/write/x", &[], "a"),
        ("PUT", "/write/x", &[], "a"),
        ("GET", "/write/x", &[], "echo"),
        ("GET", "/x", &[("x-canary", "1")], "b"),
        ("GET", "/x", &[("x-canary", "2")], "echo"),
    ];
    for (method, path, headers, expected) in cases {
        let mut request = client::http1().request(method.parse().unwrap(), proxy.url(path));
        for (name, value) in *headers {
            request = request.header(*name, *value);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 200, "{method} {path} {headers:?}");
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(
            answered_by(&body),
            *expected,
            "{method} {path} {headers:?}: {body}"
        );
    }
}

#[tokio::test]
async fn prefix_is_stripped_and_host_rewritten() {
    let a = Origin::start("a").await;
    let b = Origin::start("b").await;
    let proxy = start_proxy(&config(
        ROUTES,
        &[("a", a.addr().to_string()), ("b", b.addr().to_string())],
    ))
    .await;

    let (status, body) = get_json(&proxy, "/svc/users/7?fields=name", &[]).await;
    assert_eq!(status, 200);
    assert_eq!(body["origin"], "a");
    assert_eq!(body["path"], "/users/7?fields=name");
    assert_eq!(body["headers"]["host"], "origin.internal");
    assert_eq!(
        body["headers"]["x-forwarded-host"],
        proxy.addr().to_string()
    );
}

#[tokio::test]
async fn forwarding_headers_are_added_and_hop_by_hop_removed() {
    let proxy = start_proxy(
        r#"
listeners: [{address: "{{listen}}"}]
upstreams: {demo: {builtin: echo}}
routes: [{upstream: demo}]
"#,
    )
    .await;
    let (status, body) = get_json(
        &proxy,
        "/hello",
        &[
            ("x-forwarded-for", "203.0.113.9"),
            ("connection", "x-private-hop"),
            ("x-private-hop", "secret"),
            ("x-request-id", "trace-123"),
        ],
    )
    .await;
    assert_eq!(status, 200);
    let headers = &body["headers"];
    assert_eq!(headers["x-forwarded-for"], "203.0.113.9, 127.0.0.1");
    assert_eq!(headers["x-forwarded-proto"], "http");
    assert_eq!(headers["x-forwarded-host"], proxy.addr().to_string());
    assert_eq!(headers["via"], "1.1 edgeward");
    assert_eq!(
        headers["x-request-id"], "trace-123",
        "a client's request id is kept"
    );
    assert!(
        headers.get("x-private-hop").is_none(),
        "connection-nominated header leaked: {body}"
    );

    // Without one, edgeward makes a request id.
    let (_, body) = get_json(&proxy, "/hello", &[]).await;
    assert_eq!(body["headers"]["x-request-id"].as_str().unwrap().len(), 32);
}

#[tokio::test]
async fn unmatched_requests_get_a_json_404() {
    let proxy = start_proxy(
        r#"
listeners: [{address: "{{listen}}"}]
upstreams: {demo: {builtin: echo}}
routes: [{match: {path_prefix: /api/}, upstream: demo}]
"#,
    )
    .await;
    let (status, body) = get_json(&proxy, "/elsewhere", &[]).await;
    assert_eq!(status, 404);
    assert_eq!(body["error"], "no_route");
    assert!(
        body["message"].as_str().unwrap().contains("/elsewhere"),
        "{body}"
    );
    // And the proxy keeps serving.
    let (status, _) = get_json(&proxy, "/api/x", &[]).await;
    assert_eq!(status, 200);
}
