//! proxy-wasm filters through the real proxy: every phase, bodies, local responses,
//! pause/resume, properties, isolation modes, and hostile filters that must be contained.
//! The filters are real modules built from `tests/filters/` with the `proxy-wasm` SDK.

use std::time::{Duration, Instant, SystemTime};

use edgeward_testkit::origin::unix_nanos;
use edgeward_testkit::{
    client, expected_bytes_sha256, filters, reqwest, run_edgeward, DeadEndpoint, Origin, Proxy,
};
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::support::{
    access_log_entry, admin_json, config, eventually, metric, metrics_showing, start_proxy,
    use_built_binary, wait_for_log, within,
};

/// A proxy with one route to `origin` through `chain`, the filters defined by `filters_yaml`,
/// and an admin listener.
async fn proxy_with(origin: &Origin, filters_yaml: &str, chain: &str, extra: &str) -> Proxy {
    start_proxy(&config(
        &format!(
            r#"
listeners: [{{address: "{{{{listen}}}}"}}]
admin: {{address: "{{{{admin}}}}"}}
workers: 1
upstreams:
  origin: {{endpoints: ["$origin"]}}
filters:
{filters_yaml}
routes:
  - {{upstream: origin, filters: [{chain}]{extra}}}
"#
        ),
        &[("origin", origin.addr().to_string())],
    ))
    .await
}

fn header_values(response: &reqwest::Response, name: &str) -> Vec<String> {
    response
        .headers()
        .get_all(name)
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn filters_rewrite_headers_in_both_directions_in_chain_order() {
    let origin = Origin::start("origin").await;
    let yaml = config(
        r#"
  first:
    module: $rewriter
    config:
      name: first
      request: {set: {x-edge: "1", ":path": /rewritten?by=first}, remove: [x-secret]}
      response: {set: {x-served-by: edgeward}, remove: [x-origin]}
  second:
    module: $rewriter
    config: {name: second, request: {set: {x-second: "2"}}}
"#,
        &[("rewriter", filters::HEADER_REWRITER.to_string())],
    );
    let proxy = proxy_with(&origin, &yaml, "first, second", "").await;

    let response = client::http1()
        .get(proxy.url("/original"))
        .header("x-secret", "hush")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    // Response phase runs in reverse: second, then first.
    assert_eq!(header_values(&response, "x-chain"), vec!["second", "first"]);
    assert_eq!(header_values(&response, "x-served-by"), vec!["edgeward"]);
    assert!(
        response.headers().get("x-origin").is_none(),
        "first removed x-origin"
    );
    // Request headers stay readable in the response phase; they show first's :path rewrite.
    assert_eq!(
        header_values(&response, "x-seen-request-path"),
        vec!["/rewritten?by=first"]
    );
    assert_eq!(header_values(&response, "x-seen-status"), vec!["200"]);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["path"], "/rewritten?by=first");
    let seen = origin.last_request_headers();
    assert_eq!(
        seen.get("x-chain").map(String::as_str),
        Some("first, second")
    );
    assert_eq!(seen.get("x-edge").map(String::as_str), Some("1"));
    assert_eq!(seen.get("x-second").map(String::as_str), Some("2"));
    assert!(!seen.contains_key("x-secret"));
}

#[tokio::test]
async fn bodies_are_buffered_and_replaced_both_ways() {
    let origin = Origin::start("origin").await;
    let yaml = config(
        r#"
  rewrite:
    module: $body
    config:
      request: {find: secret, replace: "[redacted]"}
      response: {find: '"POST"', replace: '"REWRITTEN"'}
"#,
        &[("body", filters::BODY_REWRITER.to_string())],
    );
    let proxy = proxy_with(&origin, &yaml, "rewrite", "").await;

    // Sent in several chunks, so the filter buffers before it sees the whole body.
    let chunks: Vec<Result<&'static str, std::io::Error>> =
        vec![Ok("a secret, "), Ok("another sec"), Ok("ret!")];
    let response = client::http1()
        .post(proxy.url("/upload"))
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            chunks,
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(
        response.headers().get("content-length").is_none(),
        "length changed: no stale Content-Length"
    );
    let text = response.text().await.unwrap();
    let body: serde_json::Value = serde_json::from_str(&text).unwrap();
    let expected = "a [redacted], another [redacted]!";
    assert_eq!(body["body_bytes"], expected.len());
    assert_eq!(body["body_sha256"], hex::encode(Sha256::digest(expected)));
    assert_eq!(
        body["method"], "REWRITTEN",
        "response body rewritten: {text}"
    );

    // Over HTTP/2 the changed body is framed correctly too.
    let response = client::h2c()
        .post(proxy.url("/h2"))
        .body("one secret")
        .send()
        .await
        .unwrap();
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(
        body["body_sha256"],
        hex::encode(Sha256::digest("one [redacted]"))
    );
}

#[tokio::test]
async fn heads_keep_their_length_and_a_careless_rewrite_is_cut_off_not_misframed() {
    let origin = Origin::start("origin").await;
    let yaml = config(
        r#"
  headers:
    module: $rewriter
    config: {response: {set: {x-seen: "1"}}}
  careless:
    module: $body
    config:
      keep_length: true
      request: {find: secret, replace: "[redacted]"}
      response: {find: '"POST"', replace: '"REWRITTEN"'}
"#,
        &[
            ("rewriter", filters::HEADER_REWRITER.to_string()),
            ("body", filters::BODY_REWRITER.to_string()),
        ],
    );
    let proxy = proxy_with(&origin, &yaml, "headers", "").await;
    // A filter that leaves bodies alone leaves their framing alone.
    let response = client::http1()
        .get(proxy.url("/bytes/1000"))
        .send()
        .await
        .unwrap();
    assert_eq!(header_values(&response, "content-length"), ["1000"]);
    assert!(response.headers().get("transfer-encoding").is_none());
    assert_eq!(response.bytes().await.unwrap().len(), 1000);
    drop(proxy);

    // A filter that changes a length it left in the head: the request never reaches the
    // origin whole, the response is cut off instead of framed wrong, and both say why.
    let proxy = proxy_with(&origin, &yaml, "careless", "").await;
    let before = origin.hits();
    let response = client::http1()
        .post(proxy.url("/upload"))
        .body("a secret")
        .send()
        .await
        .unwrap();
    assert_length_changed(response).await;
    for client in [client::http1(), client::h2c()] {
        let response = client
            .post(proxy.url("/upload"))
            .body("plain")
            .send()
            .await
            .unwrap();
        match response.status().as_u16() {
            // The head had not left when the body was rewritten.
            500 => assert_length_changed(response).await,
            // It had: the body is cut off.
            200 => assert!(
                response.bytes().await.is_err(),
                "the body must not complete"
            ),
            other => panic!("unexpected status {other}"),
        }
    }
    // The proxy goes on serving, on the same connection pool.
    let response = client::http1()
        .get(proxy.url("/fine"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(origin.hits() > before);
}

/// A 500 that names a body length changed under its Content-Length.
async fn assert_length_changed(response: reqwest::Response) {
    assert_eq!(response.status(), 500);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"], "body_length_changed", "{body}");
    let message = body["message"].as_str().unwrap();
    assert!(message.contains("content-length"), "{body}");
}

#[tokio::test]
async fn bodies_stream_through_filters_that_do_not_pause_in_constant_memory() {
    let origin = Origin::start("origin").await;
    let yaml = config(
        "  pass:\n    module: $rewriter\n    config: {name: pass}\n",
        &[("rewriter", filters::HEADER_REWRITER.to_string())],
    );
    let proxy = proxy_with(&origin, &yaml, "pass", "").await;
    let size: u64 = 100 << 20;
    let response = client::http1()
        .post(proxy.url("/upload"))
        .body(client::generated_body(size))
        .send()
        .await
        .unwrap();
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["body_sha256"], expected_bytes_sha256(size));
    let response = client::http1()
        .get(proxy.url(&format!("/bytes/{size}")))
        .send()
        .await
        .unwrap();
    assert_eq!(
        client::sha256_of_body(response).await,
        (size, expected_bytes_sha256(size))
    );
    let peak = proxy.peak_rss_bytes();
    assert!(
        peak < 100 << 20,
        "peak RSS {} MiB after 200 MiB through a filter",
        peak >> 20
    );
}

#[tokio::test]
async fn a_request_header_written_in_the_response_phase_is_accepted_as_envoy_does() {
    let origin = Origin::start("origin").await;
    let yaml = config(
        r#"
  late:
    module: $rewriter
    config: {name: late, late_request: {x-late: "1", ":path": /elsewhere}}
"#,
        &[("rewriter", filters::HEADER_REWRITER.to_string())],
    );
    let proxy = proxy_with(&origin, &yaml, "late", "").await;
    let response = client::http1()
        .get(proxy.url("/original"))
        .header("x-request-id", "late-write")
        .send()
        .await
        .unwrap();
    // The SDK traps on any answer but OK: a 200 with the filter's headers says it got OK.
    assert_eq!(response.status(), 200);
    assert_eq!(header_values(&response, "x-chain"), vec!["late"]);
    // Read back in the same callback: the request line as it went upstream.
    assert_eq!(
        header_values(&response, "x-seen-request-path"),
        vec!["/original"]
    );
    // The request had gone upstream without it.
    assert!(!origin.last_request_headers().contains_key("x-late"));
    let entry = access_log_entry(&proxy, "late-write").await;
    assert_eq!(entry["path"], "/original", "{entry}");
}

async fn local_responder(origin: &Origin, phase: &str) -> Proxy {
    let yaml = config(
        &format!(
            r#"
  answer:
    module: $local
    config: {{phase: {phase}, status: 418, body: "short and stout", headers: {{x-local: "1"}}}}
"#
        ),
        &[("local", filters::LOCAL_RESPONDER.to_string())],
    );
    proxy_with(origin, &yaml, "answer", "").await
}

#[tokio::test]
async fn local_responses_from_request_headers_request_body_and_response_headers() {
    for phase in ["request_headers", "request_body", "response_headers"] {
        let origin = Origin::start("origin").await;
        let proxy = local_responder(&origin, phase).await;
        let response = client::http1()
            .post(proxy.url("/teapot"))
            .body("some body")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 418, "{phase}");
        assert_eq!(header_values(&response, "x-local"), vec!["1"], "{phase}");
        assert_eq!(response.text().await.unwrap(), "short and stout", "{phase}");
        if phase == "request_headers" {
            assert_eq!(
                origin.hits(),
                0,
                "the origin must not see a request answered at its headers"
            );
        }
        // The filter steps aside on request, and the proxy keeps serving.
        let response = client::http1()
            .get(proxy.url("/fine"))
            .header("x-skip-local", "1")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{phase}");
    }
}

/// Sends `GET path` with the request id `id` over `client`: the response head, which must be
/// `200`, and whether its body then came whole (`Ok`, its length) or was cut short (`Err`).
async fn head_then_body(
    client: &reqwest::Client,
    proxy: &Proxy,
    path: &str,
    id: &str,
) -> (reqwest::header::HeaderMap, Result<usize, reqwest::Error>) {
    let response = client
        .get(proxy.url(path))
        .header("x-request-id", id)
        .send()
        .await
        .unwrap_or_else(|e| panic!("{id}: no response head: {e}"));
    let headers = response.headers().clone();
    let status = response.status();
    let body = response.bytes().await.map(|body| body.len());
    assert_eq!(status, 200, "{id}: the origin's head, got {body:?}");
    (headers, body)
}

#[tokio::test]
async fn a_local_response_in_the_response_body_replaces_the_response_until_its_head_has_left() {
    let origin = Origin::start("origin").await;
    let proxy = local_responder(&origin, "response_body").await;
    // The filter answers at the end of the body. `/trickle/` sends its head well before its
    // body, so the head is on its way to the client when the filter answers: the client gets
    // that head and a body cut short (HTTP/1.1: the connection closes; HTTP/2: the stream is
    // reset), never the filter's answer.
    let mut cut = 0;
    for (protocol, client) in [("h1", client::http1()), ("h2", client::h2c())] {
        for attempt in 0..3 {
            let id = format!("late-answer-{protocol}-{attempt}");
            let (headers, body) = head_then_body(&client, &proxy, "/trickle/100000", &id).await;
            assert!(headers.get("x-local").is_none(), "{id}: the filter's head");
            assert!(body.is_err(), "{id}: the body came whole: {body:?}");
            cut += 1;
            // The access log has the status the client got; the filter's late answer is not
            // a bug in edgeward (`internal_error`, docs/configuration.md).
            let entry = access_log_entry(&proxy, &id).await;
            assert_eq!(entry["status"], 200, "{entry}");
            assert!(entry["error"].is_null(), "{entry}");
        }
    }
    wait_for_log(
        &proxy,
        "a filter answered 418 after the response head was sent",
    )
    .await;
    metrics_showing(
        &proxy,
        &[(
            "edgeward_requests_total{route=\"route-1\",status=\"200\"}",
            f64::from(cut),
        )],
    )
    .await;
    // A body that comes with its head: Pingora hands both to the filters before it writes the
    // head, and then the filter's answer replaces the response. Either way the client gets
    // one of the two whole outcomes, never a mix and never an error of edgeward's.
    for attempt in 0..5 {
        let id = format!("early-answer-{attempt}");
        let response = client::http1()
            .get(proxy.url("/bytes/1000"))
            .header("x-request-id", id.as_str())
            .send()
            .await
            .unwrap();
        let status = response.status();
        let local = header_values(&response, "x-local");
        let body = response.bytes().await;
        let entry = access_log_entry(&proxy, &id).await;
        if status == 418 {
            assert_eq!(local, ["1"], "{id}");
            assert_eq!(body.unwrap(), "short and stout", "{id}");
            assert_eq!(entry["status"], 418, "{entry}");
        } else {
            assert_eq!(status, 200, "{id}");
            assert!(local.is_empty(), "{id}");
            assert!(body.is_err(), "{id}: the body came whole");
            assert_eq!(entry["status"], 200, "{entry}");
        }
        assert!(entry["error"].is_null(), "{entry}");
    }
    let response = client::http1()
        .get(proxy.url("/fine"))
        .header("x-skip-local", "1")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn a_response_body_over_the_filters_body_limit_is_cut_short() {
    let origin = Origin::start("origin").await;
    let yaml = config(
        r#"
  rewrite:
    module: $body
    limits: {body: 64KiB}
    config: {response: {find: '"GET"', replace: '"REWRITTEN"'}}
"#,
        &[("body", filters::BODY_REWRITER.to_string())],
    );
    let proxy = proxy_with(&origin, &yaml, "rewrite", "").await;
    // The filter buffers the response body to rewrite it; `/trickle/` sends its head well
    // before its body, so past 64 KiB the head is out and the response is cut short
    // (docs/filters.md, Failures and limits).
    let mut cut = 0;
    for (protocol, client) in [("h1", client::http1()), ("h2", client::h2c())] {
        for attempt in 0..3 {
            let id = format!("too-large-{protocol}-{attempt}");
            let (_, body) = head_then_body(&client, &proxy, "/trickle/1048576", &id).await;
            assert!(body.is_err(), "{id}: the body came whole: {body:?}");
            cut += 1;
            let entry = access_log_entry(&proxy, &id).await;
            assert_eq!(entry["status"], 200, "{entry}");
            assert_eq!(entry["error"], "body_too_large", "{entry}");
        }
    }
    metrics_showing(
        &proxy,
        &[(
            "edgeward_filter_limit_hits_total{filter=\"rewrite\",limit=\"body\"}",
            f64::from(cut),
        )],
    )
    .await;
    // Under the limit, the same filter rewrites the whole body.
    let response = client::http1()
        .get(proxy.url("/small"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["method"], "REWRITTEN");
}

/// The Unix time (ns) at which `pauser` logged that it resumed `path` in `phase` after
/// `ticks` ticks.
async fn resumed_at(proxy: &Proxy, path: &str, phase: &str, ticks: u32) -> u64 {
    let needle = format!("pauser: resuming {path} at its {phase} after {ticks} ticks at ");
    let line = wait_for_log(proxy, &needle).await;
    line.split(&needle)
        .nth(1)
        .and_then(|rest| rest.strip_suffix(" ns"))
        .and_then(|nanos| nanos.parse().ok())
        .unwrap_or_else(|| panic!("no time in {line:?}"))
}

#[tokio::test]
async fn a_paused_request_resumes_on_proxy_continue_stream() {
    let origin = Origin::start("origin").await;
    let yaml = config(
        "  pause:\n    module: $pauser\n    config: {tick_ms: 50, resume_after_ticks: 3}\n",
        &[("pauser", filters::PAUSER.to_string())],
    );
    let proxy = proxy_with(&origin, &yaml, "pause", "").await;
    for i in 0..3 {
        let path = format!("/paused/{i}");
        let started = Instant::now();
        let response = client::http1().get(proxy.url(&path)).send().await.unwrap();
        let elapsed = started.elapsed();
        assert_eq!(response.status(), 200, "{path}");
        // Resumed by the filter's third tick after the pause (ticks are 50 ms apart) ...
        assert_eq!(
            header_values(&response, "x-resumed-after-ticks"),
            ["3"],
            "{path}"
        );
        assert!(elapsed >= Duration::from_millis(100), "{path}: {elapsed:?}");
        // ... and only then sent upstream, with the header the filter added before pausing.
        let echo: serde_json::Value = response.json().await.unwrap();
        assert_eq!(echo["headers"]["x-paused"], "1", "{echo}");
        let resumed = resumed_at(&proxy, &path, "request headers", 3).await;
        let received = echo["received_at_unix_ns"].as_u64().unwrap();
        assert!(
            received >= resumed,
            "the origin got {path} at {received} ns, before the filter resumed it at {resumed} ns"
        );
    }
}

#[tokio::test]
async fn a_response_paused_at_its_headers_resumes_on_proxy_continue_stream() {
    let origin = Origin::start("origin").await;
    let yaml = config(
        r#"
  pause:
    module: $pauser
    config: {tick_ms: 50, resume_after_ticks: 3, phase: response_headers}
"#,
        &[("pauser", filters::PAUSER.to_string())],
    );
    let proxy = proxy_with(&origin, &yaml, "pause", "").await;
    for (protocol, client) in [("h1", client::http1()), ("h2", client::h2c())] {
        let path = format!("/held-response/{protocol}");
        let started = Instant::now();
        let response = client.get(proxy.url(&path)).send().await.unwrap();
        let head_arrived = unix_nanos(SystemTime::now());
        let elapsed = started.elapsed();
        assert_eq!(response.status(), 200, "{path}");
        let echo: serde_json::Value = response.json().await.unwrap();
        assert_eq!(echo["path"], path.as_str());
        assert!(echo["headers"].get("x-paused").is_none(), "{echo}");
        // The origin answered at once; its head waited at the filter for three ticks, and
        // reached the client only once the filter resumed it.
        let resumed = resumed_at(&proxy, &path, "response headers", 3).await;
        let received = echo["received_at_unix_ns"].as_u64().unwrap();
        assert!(received < resumed, "{path}: {received} ns, {resumed} ns");
        assert!(
            head_arrived >= resumed,
            "{path}: the head arrived at {head_arrived} ns, before the resume at {resumed} ns"
        );
        assert!(elapsed >= Duration::from_millis(100), "{path}: {elapsed:?}");
    }
}

#[tokio::test]
async fn a_request_never_resumed_ends_at_the_route_timeout_with_504() {
    let origin = Origin::start("origin").await;
    let yaml = config(
        "  hold:\n    module: $pauser\n    config: {tick_ms: 20, resume: false}\n",
        &[("pauser", filters::PAUSER.to_string())],
    );
    let proxy = proxy_with(&origin, &yaml, "hold", ", timeout: 300ms").await;
    let response = client::http1()
        .get(proxy.url("/held"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 504);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"], "filter_timeout");
    assert_eq!(body["filter"], "hold");
    assert_eq!(origin.hits(), 0);
}

#[tokio::test]
async fn properties_read_back_through_response_headers_and_on_log_sees_the_final_status() {
    let origin = Origin::start("origin").await;
    let yaml = config(
        r#"
  props:
    module: $props
    root_id: props-root
    config:
      paths:
        - [request, path]
        - [request, url_path]
        - [request, method]
        - [request, host]
        - [request, scheme]
        - [request, protocol]
        - [request, id]
        - [request, useragent]
        - [request, headers, x-custom]
        - [request, query]
        - [source, address]
        - [source, port]
        - [destination, port]
        - [connection, mtls]
        - [connection, tls_version]
        - [upstream, address]
        - [response, code]
        - [plugin_name]
        - [plugin_root_id]
        - [plugin_vm_id]
        - [route_name]
        - [no, such, property]
"#,
        &[("props", filters::PROPERTIES.to_string())],
    );
    let proxy = proxy_with(&origin, &yaml, "props", ", name: web").await;
    let response = client::http1()
        .get(proxy.url("/status/201?a=1"))
        .header("x-custom", "hello")
        .header("user-agent", "edgeward-tests")
        .header("x-request-id", "req-42")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let prop = |path: &str| {
        response
            .headers()
            .get(format!("x-prop-{path}"))
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_else(|| panic!("no x-prop-{path} header"))
    };
    // The filter also set `request.path` (accepted, as by Envoy): reads still see the request's.
    assert_eq!(prop("request.path"), "/status/201?a=1");
    assert_eq!(prop("request.url_path"), "/status/201");
    assert_eq!(prop("request.method"), "GET");
    assert_eq!(prop("request.host"), proxy.addr().to_string());
    assert_eq!(prop("request.scheme"), "http");
    assert_eq!(prop("request.protocol"), "HTTP/1.1");
    assert_eq!(prop("request.id"), "req-42");
    assert_eq!(prop("request.useragent"), "edgeward-tests");
    assert_eq!(prop("request.headers.x-custom"), "hello");
    assert_eq!(prop("request.query"), "a=1");
    assert!(prop("source.address").starts_with("127.0.0.1:"));
    assert!(prop("source.port").parse::<u16>().unwrap() > 0);
    assert_eq!(prop("destination.port"), proxy.addr().port().to_string());
    assert_eq!(prop("connection.mtls"), "false");
    assert_eq!(
        prop("connection.tls_version"),
        "missing",
        "a cleartext listener"
    );
    assert_eq!(prop("upstream.address"), origin.addr().to_string());
    assert_eq!(prop("response.code"), "201");
    assert_eq!(prop("plugin_name"), "props");
    assert_eq!(prop("plugin_root_id"), "props-root");
    assert_eq!(prop("plugin_vm_id"), "properties.wasm");
    assert_eq!(prop("route_name"), "web");
    assert_eq!(prop("no.such.property"), "missing");
    // Set in the request phase with proxy_set_property, read back in the response phase.
    assert_eq!(prop("my.prop"), "v1");

    let line = wait_for_log(&proxy, "on_log status=").await;
    assert!(
        line.ends_with(
            "on_log status=201 path=/status/201?a=1 grpc_status=missing details=via_upstream flags=0"
        ),
        "{line}"
    );
}

#[tokio::test]
async fn filters_see_upstream_attempts_and_the_grpc_status() {
    let origin = Origin::start("origin").await;
    let dead = DeadEndpoint::new();
    let proxy = start_proxy(&config(
        r#"
listeners: [{address: "{{listen}}"}]
upstreams:
  live: {endpoints: ["$origin"]}
  pool: {endpoints: ["$dead", "$origin"], retries: 1}
filters:
  props:
    module: $props
    config: {paths: [[upstream, request_attempt_count], [response, grpc_status]]}
routes:
  - {match: {path_prefix: /pool}, upstream: pool, strip_prefix: true, filters: [props]}
  - {upstream: live, filters: [props]}
"#,
        &[
            ("origin", origin.addr().to_string()),
            ("dead", dead.addr().to_string()),
            ("props", filters::PROPERTIES.to_string()),
        ],
    ))
    .await;
    let attempts_of = |path: &'static str| {
        let url = proxy.url(path);
        async move {
            let response = client::http1().get(url).send().await.unwrap();
            assert_eq!(response.status(), 200);
            assert_eq!(
                header_values(&response, "x-prop-response.grpc_status"),
                vec!["7"]
            );
            header_values(&response, "x-prop-upstream.request_attempt_count")
        }
    };
    assert_eq!(attempts_of("/cache/g?h=grpc-status:7").await, vec!["1"]);
    // Over a dead endpoint and a live one, a request that tries the dead one first gets
    // there on its second attempt.
    let mut seen = Vec::new();
    while !seen.iter().any(|a| a == "2") {
        assert!(seen.len() < 20, "no second attempt in {seen:?}");
        seen.extend(attempts_of("/pool/cache/g?h=grpc-status:7").await);
    }
    assert!(seen.iter().all(|a| a == "1" || a == "2"), "{seen:?}");
}

async fn counts(proxy: &Proxy, n: usize) -> Vec<u64> {
    let mut counts = Vec::new();
    for _ in 0..n {
        let response = client::http1()
            .get(proxy.url("/count"))
            .send()
            .await
            .unwrap();
        counts.push(
            response.headers()["x-count"]
                .to_str()
                .unwrap()
                .parse()
                .unwrap(),
        );
    }
    counts
}

#[tokio::test]
async fn guest_memory_persists_across_requests_only_in_shared_isolation() {
    let origin = Origin::start("origin").await;
    for (isolation, expected) in [("shared", vec![1, 2, 3, 4]), ("request", vec![1, 1, 1, 1])] {
        let yaml = config(
            &format!("  count:\n    module: $counter\n    isolation: {isolation}\n"),
            &[("counter", filters::COUNTER.to_string())],
        );
        let proxy = proxy_with(&origin, &yaml, "count", "").await;
        assert_eq!(counts(&proxy, 4).await, expected, "{isolation} isolation");
        if isolation == "request" {
            // Fresh instances start from the pre-initialized snapshot, not a start-up each.
            wait_for_log(&proxy, "start from a snapshot of its configured start-up").await;
        }
    }
}

async fn hostile_proxy(origin: &Origin, on_error: &str, isolation: &str) -> Proxy {
    let yaml = config(
        &format!(
            r#"
  hostile:
    module: $hostile
    on_error: {on_error}
    isolation: {isolation}
    # Small enough that filling it stays far within the CPU limit on a slow machine.
    limits: {{memory: 8MiB, cpu: 100ms}}
"#
        ),
        &[("hostile", filters::HOSTILE.to_string())],
    );
    proxy_with(origin, &yaml, "hostile", "").await
}

async fn status_and_body(proxy: &Proxy, path: &str) -> (u16, serde_json::Value) {
    let response = client::http1().get(proxy.url(path)).send().await.unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)),
    )
}

#[tokio::test]
async fn crashing_looping_and_greedy_filters_are_contained_fail_closed() {
    for isolation in ["shared", "request"] {
        crashes_are_contained(isolation).await;
    }
}

async fn crashes_are_contained(isolation: &str) {
    let origin = Origin::start("origin").await;
    let proxy = hostile_proxy(&origin, "fail_closed", isolation).await;
    for (path, status, error) in [
        ("/loop", 503, "cpu_limit"),
        ("/oom", 503, "memory_limit"),
        ("/trap", 500, "trap"),
        // The host bounds what a request's properties hold; the SDK traps on the refusal.
        ("/property-flood", 500, "trap"),
    ] {
        let (got, body) = status_and_body(&proxy, path).await;
        assert_eq!(got, status, "{isolation} {path}: {body}");
        assert_eq!(body["error"], error, "{isolation} {path}: {body}");
        assert_eq!(body["filter"], "hostile", "{path}: {body}");
        // The next request gets a fresh instance and is served normally.
        let (got, body) = status_and_body(&proxy, "/ok").await;
        assert_eq!(got, 200, "{isolation}, after {path}: {body}");
        assert_eq!(body["origin"], "origin");
    }
    assert_eq!(
        origin.hits(),
        4,
        "only the normal requests reached the origin"
    );
    wait_for_log(
        &proxy,
        "filter `hostile` set property `flood.3` past the 1048576 bytes a request's properties may hold: refused",
    )
    .await;
    // A crash is one ERROR record: the filter, the callback, the route and request, the
    // policy; then the panic message, the trap, and the wasm backtrace with function names.
    let record = crash_report(
        &proxy,
        "filter `hostile` crashed in on_http_request_headers",
    )
    .await;
    assert!(
        record[0].contains(" ERROR ") && record[0].ends_with("; failing the request (fail_closed)"),
        "{record:#?}"
    );
    assert!(
        record[0].contains("(route `route-1`, request "),
        "{record:#?}"
    );
    assert!(
        record[1].trim_start().starts_with("panicked at "),
        "{record:#?}"
    );
    let trap = record
        .iter()
        .position(|l| l.contains("wasm trap: wasm `unreachable`"));
    let backtrace = record.iter().position(|l| l.trim() == "wasm backtrace:");
    assert!(trap.is_some() && backtrace > trap, "{record:#?}");
    let frames = &record[backtrace.unwrap_or_default() + 1..];
    assert!(
        frames.iter().any(|f| f.contains("on_http_request_headers")),
        "{record:#?}"
    );
    // The panic is not also logged on its own, and the WASI stderr of the out-of-memory
    // case is, tagged with the filter's name.
    assert!(!proxy
        .stderr_lines()
        .iter()
        .any(|l| l.contains("[filter hostile] panicked at")));
    wait_for_log(
        &proxy,
        "[filter hostile] memory allocation of 1048576 bytes failed",
    )
    .await;
}

/// The log record starting with the line that contains `needle`: that line and the indented
/// ones after it.
async fn crash_report(proxy: &Proxy, needle: &str) -> Vec<String> {
    wait_for_log(proxy, needle).await;
    let lines = proxy.stderr_lines();
    let start = lines
        .iter()
        .position(|l| l.contains(needle))
        .unwrap_or_default();
    let mut record = vec![lines[start].clone()];
    record.extend(
        lines[start + 1..]
            .iter()
            .take_while(|l| l.starts_with("  "))
            .cloned(),
    );
    record
}

#[tokio::test]
async fn failing_filters_are_skipped_fail_open() {
    let origin = Origin::start("origin").await;
    let proxy = hostile_proxy(&origin, "fail_open", "shared").await;
    for path in ["/trap", "/loop", "/oom", "/ok"] {
        let (status, body) = status_and_body(&proxy, path).await;
        assert_eq!(status, 200, "{path}: {body}");
        assert_eq!(body["origin"], "origin");
    }
    assert_eq!(origin.hits(), 4, "every request went on to the origin");
    // The filter did fail on the first three, and was skipped for the rest of each.
    metrics_showing(
        &proxy,
        &[
            ("edgeward_filter_traps_total{filter=\"hostile\"}", 1.0),
            (
                "edgeward_filter_limit_hits_total{filter=\"hostile\",limit=\"cpu\"}",
                1.0,
            ),
            (
                "edgeward_filter_limit_hits_total{filter=\"hostile\",limit=\"memory\"}",
                1.0,
            ),
        ],
    )
    .await;
    for fault in [
        "crashed in on_http_request_headers",
        "exceeded its CPU time limit",
        "exceeded its memory limit",
    ] {
        let line = wait_for_log(&proxy, &format!("filter `hostile` {fault}")).await;
        assert!(
            line.ends_with("; skipping it for this request (fail_open)"),
            "{line}"
        );
    }
}

#[tokio::test]
async fn cpu_time_adds_up_over_the_callbacks_of_a_request() {
    let origin = Origin::start("origin").await;
    // `limits.cpu: 100ms` for the whole request; each body callback spins for 20 ms of wall
    // clock, so none of them alone can use more than 20 ms of CPU time.
    let proxy = hostile_proxy(&origin, "fail_closed", "shared").await;
    // A body of 1 KiB chunks, one every 30 ms, for up to 6 s: far more CPU time than the limit
    // in all if the request's callbacks are counted together.
    let chunks = futures_util::stream::unfold(0u32, |sent| async move {
        if sent == 200 {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(30)).await;
        Some((Ok::<_, std::io::Error>(vec![b'x'; 1024]), sent + 1))
    });
    let response = client::http1()
        .post(proxy.url("/slow-body?ms=20"))
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 503);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"], "cpu_limit", "{body}");
    assert_eq!(body["filter"], "hostile", "{body}");
    let metrics = metrics_showing(
        &proxy,
        &[(
            "edgeward_filter_limit_hits_total{filter=\"hostile\",limit=\"cpu\"}",
            1.0,
        )],
    )
    .await;
    // 100 ms of CPU time took several callbacks of at most 20 ms each.
    let callbacks = metrics
        .value("edgeward_filter_calls_total{filter=\"hostile\",phase=\"on_http_request_body\"}");
    assert!(callbacks >= 5.0, "{callbacks} body callbacks");
    assert_eq!(
        metrics.value_or_zero("edgeward_filter_traps_total{filter=\"hostile\"}"),
        0.0
    );
}

/// Polls `/ok` until the filter serves it again, failing after `limit`; every refusal
/// meanwhile must pass `check_refusal`.
async fn serves_again_within(
    proxy: &Proxy,
    limit: Duration,
    check_refusal: impl Fn(&serde_json::Value),
) {
    within(limit, "the filter to serve again", || async {
        let (status, body) = status_and_body(proxy, "/ok").await;
        if status == 200 {
            return Ok(());
        }
        check_refusal(&body);
        Err(body.to_string())
    })
    .await
}

#[tokio::test]
async fn a_crash_back_off_ends_even_while_requests_keep_coming() {
    let origin = Origin::start("origin").await;
    let proxy = hostile_proxy(&origin, "fail_closed", "shared").await;
    // Crash after crash until the filter waits out a back-off: it is refused, not run.
    let mut refused = false;
    for _ in 0..30 {
        let (status, body) = status_and_body(&proxy, "/trap").await;
        if status == 503 {
            assert_eq!(body["error"], "unavailable", "{body}");
            refused = true;
            break;
        }
        assert_eq!((status, &body["error"]), (500, &"trap".into()), "{body}");
    }
    assert!(refused, "30 crashes in a row and no back-off");
    // Requests refused during the back-off do not prolong it: it ends (10 s at most) although
    // requests keep arriving every 20 ms.
    serves_again_within(&proxy, Duration::from_secs(15), |refusal| {
        assert_eq!(refusal["error"], "unavailable", "{refusal}");
    })
    .await;
}

#[tokio::test]
async fn ready_reports_a_filter_in_its_crash_back_off_until_it_ends() {
    let origin = Origin::start("origin").await;
    let proxy = hostile_proxy(&origin, "fail_closed", "shared").await;
    let ready = || admin_json(&proxy, "/ready");
    assert_eq!(
        ready().await,
        (
            200,
            json!({"ready": true, "draining": false, "unavailable_filters": []})
        )
    );
    // Crash until requests are refused (a back-off), and ask /ready while it lasts. A back-off
    // that ends before /ready answers is followed by another crash, and the next back-off is
    // twice as long (from 50 ms to 10 s), so it soon outlasts the question.
    let during = eventually("/ready during a crash back-off", || async {
        let (status, body) = status_and_body(&proxy, "/trap").await;
        if status != 503 {
            assert_eq!((status, &body["error"]), (500, &"trap".into()), "{body}");
            return None;
        }
        assert_eq!(body["error"], "unavailable", "{body}");
        let (status, readiness) = ready().await;
        (status == 503).then_some(readiness)
    })
    .await;
    assert_eq!(
        during,
        json!({"ready": false, "draining": false, "unavailable_filters": ["hostile"]})
    );
    // The back-off ends by itself: ready again, and the filter serves.
    let after = eventually("/ready after the back-off", || async {
        let (status, readiness) = ready().await;
        (status == 200).then_some(readiness)
    })
    .await;
    assert_eq!(
        after,
        json!({"ready": true, "draining": false, "unavailable_filters": []})
    );
    let (status, body) = status_and_body(&proxy, "/ok").await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn a_full_instance_pool_answers_503_without_counting_as_crashes() {
    let origin = Origin::start("origin").await;
    let proxy = start_proxy(&config(
        r#"
listeners: [{address: "{{listen}}"}]
admin: {address: "{{admin}}"}
workers: 1
wasm: {max_instances: 2}
upstreams:
  origin: {endpoints: ["$origin"]}
filters:
  hostile: {module: $hostile, isolation: request}
routes:
  - {upstream: origin, filters: [hostile]}
"#,
        &[
            ("origin", origin.addr().to_string()),
            ("hostile", filters::HOSTILE.to_string()),
        ],
    ))
    .await;
    // Two slow requests hold both instances until the origin answers.
    let slow: Vec<_> = (0..2)
        .map(|_| tokio::spawn(client::http1().get(proxy.url("/delay/3000")).send()))
        .collect();
    eventually("both slow requests at the origin", || async {
        (origin.hits() >= 2).then_some(())
    })
    .await;
    // More refusals than the crashes that start a back-off.
    for _ in 0..8 {
        let (status, body) = status_and_body(&proxy, "/ok").await;
        assert_eq!(status, 503, "{body}");
        assert_eq!(body["error"], "unavailable", "{body}");
        assert!(
            body["message"].as_str().unwrap().contains("max_instances"),
            "{body}"
        );
    }
    for request in slow {
        assert_eq!(request.await.unwrap().unwrap().status(), 200);
    }
    // Refusals are logged once a second at most, not once per request.
    let logged = proxy
        .stderr_lines()
        .iter()
        .filter(|l| l.contains("all instances are in use"))
        .count();
    assert!(
        (1..8).contains(&logged),
        "{logged} log lines for 8 refusals"
    );
    let refusals = r#"edgeward_filter_limit_hits_total{filter="hostile",limit="instances"}"#;
    assert_eq!(metric(&proxy, refusals).await, 8.0);
    // Once the slow requests have finished (just after their responses) the filter serves
    // again: no back-off was started, which would have lasted 10 s.
    serves_again_within(&proxy, Duration::from_secs(3), |refusal| {
        let message = refusal["message"].as_str().unwrap();
        assert!(message.contains("max_instances"), "{refusal}");
    })
    .await;
}

#[tokio::test]
async fn bad_pointers_and_absurd_sizes_get_status_codes_not_crashes() {
    let origin = Origin::start("origin").await;
    let proxy = hostile_proxy(&origin, "fail_closed", "shared").await;
    let response = client::http1()
        .get(proxy.url("/bad-pointers"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(header_values(&response, "x-still-alive"), vec!["yes"]);
    let statuses: Vec<u32> = response.headers()["x-statuses"]
        .to_str()
        .unwrap()
        .split(',')
        .map(|s| s.trim().parse().unwrap())
        .collect();
    // INVALID_MEMORY_ACCESS (6) for every out-of-bounds pointer or size, BAD_ARGUMENT (2) for
    // the bad map and buffer types and the map claiming a million pairs; never OK, never a trap.
    assert_eq!(statuses, vec![6, 6, 2, 6, 6, 6, 2, 2, 6, 6, 6, 6]);
}

#[tokio::test]
async fn buffered_bodies_over_the_limit_end_with_413() {
    let origin = Origin::start("origin").await;
    let yaml = config(
        r#"
  rewrite:
    module: $body
    limits: {body: 64KiB}
    config: {request: {find: a, replace: b}}
"#,
        &[("body", filters::BODY_REWRITER.to_string())],
    );
    let proxy = proxy_with(&origin, &yaml, "rewrite", "").await;
    let response = client::http1()
        .post(proxy.url("/big"))
        .body(client::generated_body(1 << 20))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 413);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"], "body_too_large");
    let response = client::http1()
        .post(proxy.url("/small"))
        .body("aaa")
        .send()
        .await
        .unwrap();
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["body_sha256"], hex::encode(Sha256::digest("bbb")));
}

#[tokio::test]
async fn a_reactor_with_main_has_it_called_after_initialize() {
    // Its on_vm_start fails, and so would the load, unless main ran after _initialize.
    let origin = Origin::start("origin").await;
    let yaml = config(
        "  reactor:\n    module: $wat\n",
        &[("wat", filters::MAIN_AFTER_INITIALIZE.to_string())],
    );
    let proxy = proxy_with(&origin, &yaml, "reactor", "").await;
    let response = client::http1().get(proxy.url("/x")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(header_values(&response, "x-main"), vec!["after-initialize"]);
}

#[tokio::test]
async fn modules_of_abi_0_2_0_run() {
    let origin = Origin::start("origin").await;
    let yaml = config(
        "  old:\n    module: $wat\n",
        &[("wat", filters::ABI_0_2_0.to_string())],
    );
    let proxy = proxy_with(&origin, &yaml, "old", "").await;
    let response = client::http1().get(proxy.url("/abi")).send().await.unwrap();
    assert_eq!(header_values(&response, "x-abi"), vec!["0.2.0"]);
    assert_eq!(
        origin
            .last_request_headers()
            .get("x-abi")
            .map(String::as_str),
        Some("0.2.0")
    );
}

#[test]
fn bad_modules_fail_the_load_with_a_message_naming_the_file() {
    use_built_binary();
    for (module, expected) in [
        (filters::ABI_0_1_0, "ABI 0.1.0"),
        (filters::NO_ABI_MARKER, "not a proxy-wasm module"),
        (filters::UNKNOWN_IMPORT, "env.proxy_does_not_exist"),
        (filters::CONFIGURE_FAILS, "on_configure returned false"),
        (
            filters::WRONG_CALLBACK_SIGNATURE,
            "export `proxy_on_response_headers` has the wrong signature",
        ),
    ] {
        let yaml = format!(
            "listeners: [{{address: 127.0.0.1:1}}]\nupstreams: {{u: {{builtin: echo}}}}\nfilters: {{bad: {{module: {module}}}}}\nroutes: [{{upstream: u, filters: [bad]}}]\n"
        );
        for command in ["validate", "run"] {
            let out = run_edgeward(&[command, "--config", "{dir}/c.yaml"], &[("c.yaml", &yaml)]);
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(1), "{command} {module}: {stderr}");
            assert!(stderr.contains(expected), "{command} {module}: {stderr}");
            assert!(
                stderr.contains(module) && stderr.contains("filter `bad`"),
                "{stderr}"
            );
        }
    }
}

#[tokio::test]
async fn vm_config_reaches_on_vm_start_in_both_isolation_modes() {
    let origin = Origin::start("origin").await;
    // A YAML mapping arrives as JSON text, a YAML string as that string.
    for (isolation, vm_config) in [
        ("shared", r#"{greeting: hello, n: 1}"#),
        ("request", r#""plain text""#),
    ] {
        let yaml = config(
            "  vm:\n    module: $vm\n    isolation: $isolation\n    vm_config: $vm_config\n",
            &[
                ("vm", filters::VM_STARTER.to_string()),
                ("isolation", isolation.to_string()),
                ("vm_config", vm_config.to_string()),
            ],
        );
        let proxy = proxy_with(&origin, &yaml, "vm", "").await;
        let response = client::http1().get(proxy.url("/vm")).send().await.unwrap();
        assert_eq!(response.status(), 200, "{isolation}");
        let received = header_values(&response, "x-vm-config");
        assert_eq!(received.len(), 1, "{isolation}: {:?}", response.headers());
        let received = &received[0];
        match isolation {
            "shared" => assert_eq!(
                serde_json::from_str::<serde_json::Value>(received).unwrap(),
                json!({"greeting": "hello", "n": 1}),
                "{isolation}: {received}"
            ),
            _ => assert_eq!(received, "plain text", "{isolation}"),
        }
        // on_vm_start was told the size of what it could read.
        assert_eq!(
            header_values(&response, "x-vm-config-size"),
            [received.len().to_string()],
            "{isolation}"
        );
    }
}

#[test]
fn on_vm_start_returning_false_fails_the_load() {
    use_built_binary();
    let module = filters::VM_STARTER;
    let yaml = format!(
        "listeners: [{{address: 127.0.0.1:1}}]\nupstreams: {{u: {{builtin: echo}}}}\n\
         filters: {{picky: {{module: {module}, vm_config: reject}}}}\n\
         routes: [{{upstream: u, filters: [picky]}}]\n"
    );
    for command in ["validate", "run"] {
        let out = run_edgeward(&[command, "--config", "{dir}/c.yaml"], &[("c.yaml", &yaml)]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{command}: {stderr}");
        // The filter saw the vm_config it rejected ...
        assert!(
            stderr.contains(r#"[filter picky] vm_starter: rejecting vm_config "reject""#),
            "{command}: {stderr}"
        );
        // ... and the load failed with a message naming the filter, its file and why.
        assert!(
            stderr.contains("on_vm_start returned false")
                && stderr.contains("filter `picky`")
                && stderr.contains(module),
            "{command}: {stderr}"
        );
    }
}

async fn wait_for_log_count(proxy: &Proxy, needle: &str, count: usize) {
    wait_for_log(proxy, needle).await;
    let found = proxy
        .stderr_lines()
        .iter()
        .filter(|l| l.contains(needle))
        .count();
    assert_eq!(
        found,
        count,
        "{needle:?} in:\n{}",
        proxy.stderr_lines().join("\n")
    );
}

#[tokio::test]
async fn compiled_code_is_shared_by_filters_of_one_module_and_cached_on_disk() {
    let origin = Origin::start("origin").await;
    let cache = tempfile::tempdir().unwrap();
    let template = r#"
listeners: [{address: "{{listen}}"}]
wasm: {module_cache: "$cache"}
upstreams: {origin: {endpoints: ["$origin"]}}
filters:
  one: {module: $module, config: {name: one}}
  two: {module: $module, config: {name: two}}
routes: [{upstream: origin, filters: [one, two]}]
"#;
    let yaml = config(
        template,
        &[
            ("cache", cache.path().display().to_string()),
            ("origin", origin.addr().to_string()),
            ("module", filters::HEADER_REWRITER.to_string()),
        ],
    );
    // First start: compiled once for both filters, and written to the cache.
    let first = start_proxy(&yaml).await;
    wait_for_log_count(&first, "header_rewriter.wasm: compiled in", 1).await;
    drop(first);
    let cached: Vec<_> = std::fs::read_dir(cache.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(cached.len(), 1, "{cached:?}");

    // Restart: loaded from the cache, not compiled.
    let second = start_proxy(&yaml).await;
    wait_for_log(
        &second,
        "header_rewriter.wasm: compiled code loaded from the module cache",
    )
    .await;
    assert!(!second
        .stderr_lines()
        .iter()
        .any(|l| l.contains("compiled in")));
    let response = client::http1().get(second.url("/x")).send().await.unwrap();
    assert_eq!(header_values(&response, "x-chain"), vec!["two", "one"]);
    drop(second);

    // A damaged cache file is ignored and replaced, never loaded.
    std::fs::write(&cached[0], b"not compiled code").unwrap();
    let third = start_proxy(&yaml).await;
    wait_for_log(&third, "ignoring cached module").await;
    wait_for_log_count(&third, "header_rewriter.wasm: compiled in", 1).await;
    let response = client::http1().get(third.url("/x")).send().await.unwrap();
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn perf_map_names_the_filters_compiled_functions_for_profilers() {
    let origin = Origin::start("origin").await;
    let yaml = config(
        r#"
listeners: [{address: "{{listen}}"}]
wasm: {perf_map: true}
upstreams: {origin: {endpoints: ["$origin"]}}
filters:
  rewriter: {module: $module, config: {name: one}}
routes: [{upstream: origin, filters: [rewriter]}]
"#,
        &[
            ("origin", origin.addr().to_string()),
            ("module", filters::HEADER_REWRITER.to_string()),
        ],
    );
    let proxy = start_proxy(&yaml).await;
    let response = client::http1().get(proxy.url("/x")).send().await.unwrap();
    assert_eq!(header_values(&response, "x-chain"), vec!["one"]);
    // perf's convention: `/tmp/perf-<pid>.map`, one `address size name` line per function.
    let map = std::path::PathBuf::from(format!("/tmp/perf-{}.map", proxy.pid()));
    let text = std::fs::read_to_string(&map).unwrap_or_default();
    drop(proxy);
    let _ = std::fs::remove_file(&map);
    assert!(
        text.lines()
            .any(|line| line.split(' ').nth(2) == Some("proxy_on_request_headers")),
        "no proxy_on_request_headers in {}:\n{text}",
        map.display()
    );
}

#[tokio::test]
async fn the_access_log_shows_the_properties_filters_set_that_it_lists() {
    let origin = Origin::start("origin").await;
    // `my.prop` is the one-segment property the filter sets; `request.path` a built-in it
    // writes (kept as the host has it, so not a property it set); `never.set` is not set.
    let proxy = start_proxy(&config(
        r#"
listeners: [{address: "{{listen}}"}]
workers: 1
access_log_properties: [my.prop, request.path, never.set]
upstreams:
  origin: {endpoints: ["$origin"]}
filters:
  props: {module: $properties, config: {paths: []}}
routes:
  - {upstream: origin, filters: [props]}
"#,
        &[
            ("origin", origin.addr().to_string()),
            ("properties", filters::PROPERTIES.to_string()),
        ],
    ))
    .await;
    let response = client::http1()
        .get(proxy.url("/logged"))
        .header("x-request-id", "logged-properties")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let entry = access_log_entry(&proxy, "logged-properties").await;
    assert_eq!(entry["properties"], json!({"my.prop": "v1"}), "{entry}");
}
