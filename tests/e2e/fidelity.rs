//! proxy-wasm behaviours real filters written for Envoy depend on, through the real proxy:
//! body callbacks while the request headers are paused, and what a paused request may still
//! change.

use std::time::Duration;

use edgeward_testkit::{client, filters, reqwest, DeadEndpoint, Origin, Proxy};
use futures_util::StreamExt;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::{config, metric, read_until_closed, start_proxy, wait_for_log};

/// A proxy whose one route sends requests to `origin` through the filter `inspect`
/// (`body_inspector` with `inspector_config`).
async fn inspecting_proxy(origin: &Origin, inspector_config: &str, route_extra: &str) -> Proxy {
    start_proxy(&config(
        &format!(
            r#"
listeners: [{{address: "{{{{listen}}}}"}}]
admin: {{address: "{{{{admin}}}}"}}
upstreams:
  origin: {{endpoints: ["$origin"]}}
filters:
  inspect: {{module: $inspector, config: {inspector_config}}}
routes:
  - {{upstream: origin, filters: [inspect]{route_extra}}}
"#
        ),
        &[
            ("origin", origin.addr().to_string()),
            ("inspector", filters::BODY_INSPECTOR.to_string()),
        ],
    ))
    .await
}

/// The digest `body_inspector` sets: `<size>:<FNV-1a 64, 16 hex digits>`.
fn digest(body: &[u8]) -> String {
    let hash = body.iter().fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3)
    });
    format!("{}:{hash:016x}", body.len())
}

fn sha256_hex(body: &[u8]) -> String {
    format!("{:x}", Sha256::digest(body))
}

/// A body sent in `pieces` separate chunks (HTTP/1.1 chunked, HTTP/2 DATA frames), each a
/// little after the one before, so the filter sees it in several callbacks.
fn trickled(body: &'static [u8], pieces: usize) -> reqwest::Body {
    let size = body.len().div_ceil(pieces);
    let chunks: Vec<&'static [u8]> = body.chunks(size).collect();
    let stream = futures_util::stream::iter(chunks).then(|chunk| async move {
        tokio::time::sleep(Duration::from_millis(20)).await;
        Ok::<_, std::io::Error>(chunk)
    });
    reqwest::Body::wrap_stream(stream)
}

#[tokio::test]
async fn a_filter_holding_the_headers_reads_the_whole_body_then_changes_the_headers() {
    let origin = Origin::start("origin").await;
    let proxy = inspecting_proxy(&origin, "{rewrite_path: true}", "").await;
    const SMALL: &[u8] = b"hello, world";
    let large: &'static [u8] = Box::leak(vec![b'x'; 40_000].into_boxed_slice());
    for (protocol, client) in [("h1", client::http1()), ("h2", client::h2c())] {
        // A small body with its length, in one piece; a larger one in several.
        for (body, pieces) in [(SMALL, 1), (large, 4)] {
            let request = client.post(proxy.url("/upload?v=1"));
            let request = match pieces {
                1 => request.body(body),
                n => request.body(trickled(body, n)),
            };
            let response = request.send().await.unwrap();
            let what = format!("{protocol}, {} bytes in {pieces}", body.len());
            assert_eq!(response.status(), 200, "{what}");
            let echo: serde_json::Value = response.json().await.unwrap();
            // The header and the request line set once the whole body was read reached the
            // upstream, and so did the body, once.
            assert_eq!(echo["headers"]["x-body-digest"], digest(body), "{what}");
            let expected_path = format!("/upload?v=1&inspected={}", body.len());
            assert_eq!(echo["path"], expected_path.as_str(), "{what}");
            assert_eq!(echo["body_bytes"], body.len(), "{what}");
            assert_eq!(echo["body_sha256"], sha256_hex(body), "{what}");
            let callbacks: u32 = echo["headers"]["x-body-callbacks"]
                .as_str()
                .unwrap()
                .parse()
                .unwrap();
            if pieces > 1 {
                assert!(callbacks > 1, "{what}: {callbacks} body callbacks");
            }
        }
    }
    // A request without a body is not held.
    let response = client::http1()
        .get(proxy.url("/plain"))
        .send()
        .await
        .unwrap();
    let echo: serde_json::Value = response.json().await.unwrap();
    assert!(echo["headers"].get("x-body-digest").is_none(), "{echo}");
    assert_eq!(echo["path"], "/plain");
}

#[tokio::test]
async fn a_client_expecting_100_continue_is_told_to_send_its_body_once_when_a_filter_wants_it() {
    let origin = Origin::start("origin").await;
    let proxy = inspecting_proxy(&origin, "{}", "").await;
    let mut stream = TcpStream::connect(proxy.addr()).await.unwrap();
    stream
        .write_all(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut interim = [0; 25];
    tokio::time::timeout(Duration::from_secs(10), stream.read_exact(&mut interim))
        .await
        .expect("no 100 Continue")
        .unwrap();
    assert_eq!(&interim, b"HTTP/1.1 100 Continue\r\n\r\n");
    stream.write_all(b"hello").await.unwrap();
    let (answer, closed) = read_until_closed(&mut stream, Duration::from_secs(10)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(closed.is_some(), "{answer}");
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer:?}");
    assert!(answer.contains(&digest(b"hello")), "{answer}");
}

#[tokio::test]
async fn a_filter_holding_the_headers_can_refuse_a_request_on_its_body() {
    let origin = Origin::start("origin").await;
    let proxy = inspecting_proxy(&origin, "{deny: attack}", "").await;
    for (protocol, client) in [("h1", client::http1()), ("h2", client::h2c())] {
        let response = client
            .post(proxy.url("/form"))
            .body(trickled(b"name=x&payload=an attack here", 3))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 403, "{protocol}");
        assert_eq!(response.headers()["x-denied-by"], "body_inspector");
        assert_eq!(response.text().await.unwrap(), "denied by body_inspector\n");
        let fine = client
            .post(proxy.url("/form"))
            .body("name=x&payload=harmless")
            .send()
            .await
            .unwrap();
        assert_eq!(fine.status(), 200, "{protocol}");
    }
    // The refused requests never reached the origin.
    assert_eq!(origin.hits(), 2);
}

#[tokio::test]
async fn a_held_body_larger_than_edgeward_keeps_before_the_upstream_is_refused_with_413() {
    let origin = Origin::start("origin").await;
    let proxy = inspecting_proxy(&origin, "{}", "").await;
    let response = client::http1()
        .post(proxy.url("/big"))
        .body(edgeward_testkit::client::generated_body(200_000))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 413);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"], "body_too_large");
    assert_eq!(body["filter"], "inspect");
    assert_eq!(origin.hits(), 0);
    let hits = metric(
        &proxy,
        r#"edgeward_filter_limit_hits_total{filter="inspect",limit="body"}"#,
    )
    .await;
    assert_eq!(hits, 1.0);
}

#[tokio::test]
async fn a_filter_waiting_for_its_callout_is_not_bypassed_by_a_request_body() {
    // `callout` pauses the headers for an authorization callout and keeps the SDK's default
    // body callback, which answers Continue: the body must not let the request go on.
    let origin = Origin::start("origin").await;
    let auth = Origin::start("auth").await;
    let dead = DeadEndpoint::new();
    let proxy = start_proxy(&config(
        r#"
listeners: [{address: "{{listen}}"}]
upstreams:
  origin: {endpoints: ["$origin"]}
  auth: {endpoints: ["$auth"]}
  down: {endpoints: ["$dead"]}
filters:
  slow_check: {module: $callout, callouts: [auth], config: {upstream: auth, path: /delay/300}}
  failing_check: {module: $callout, callouts: [down], config: {upstream: down}}
routes:
  - {match: {path_prefix: /slow}, upstream: origin, filters: [slow_check]}
  - {upstream: origin, filters: [failing_check]}
"#,
        &[
            ("origin", origin.addr().to_string()),
            ("auth", auth.addr().to_string()),
            ("dead", dead.addr().to_string()),
            ("callout", filters::CALLOUT.to_string()),
        ],
    ))
    .await;
    for (protocol, client) in [("h1", client::http1()), ("h2", client::h2c())] {
        let refused = client
            .post(proxy.url("/guarded"))
            .body("a body that arrives before the callout's answer")
            .send()
            .await
            .unwrap();
        assert_eq!(refused.status(), 503, "{protocol}");
        assert_eq!(refused.headers()["x-callout"], "failed", "{protocol}");
        assert_eq!(origin.hits(), 0, "{protocol}");
    }
    // Allowed after the callout's answer: the headers it set and the whole body go upstream.
    let body = b"posted while the callout was out";
    let response = client::http1()
        .post(proxy.url("/slow/upload"))
        .body(&body[..])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let echo: serde_json::Value = response.json().await.unwrap();
    assert_eq!(echo["headers"]["x-callout-status"], "200");
    assert_eq!(echo["body_sha256"], sha256_hex(body));
}

#[tokio::test]
async fn a_retried_request_sends_its_filtered_body_once_per_attempt() {
    let origin = Origin::start("origin").await;
    let dead = DeadEndpoint::new();
    let proxy = start_proxy(&config(
        r#"
listeners: [{address: "{{listen}}"}]
upstreams:
  origin: {endpoints: ["$dead", "$origin"], retries: 1}
filters:
  inspect: {module: $inspector}
  rewrite: {module: $rewriter, config: {request: {find: secret, replace: "[redacted]"}}}
routes:
  - {match: {path_prefix: /held}, upstream: origin, filters: [inspect]}
  - {upstream: origin, filters: [rewrite]}
"#,
        &[
            ("origin", origin.addr().to_string()),
            ("dead", dead.addr().to_string()),
            ("inspector", filters::BODY_INSPECTOR.to_string()),
            ("rewriter", filters::BODY_REWRITER.to_string()),
        ],
    ))
    .await;
    // Round robin: every other request meets the dead endpoint first and is retried.
    for i in 0..4 {
        let body = format!("attempt {i}: a secret");
        let response = client::http1()
            .post(proxy.url(&format!("/held/{i}")))
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "held {i}");
        let echo: serde_json::Value = response.json().await.unwrap();
        assert_eq!(echo["body_sha256"], sha256_hex(body.as_bytes()), "held {i}");
        assert_eq!(echo["headers"]["x-body-digest"], digest(body.as_bytes()));

        let response = client::http1()
            .post(proxy.url(&format!("/rewritten/{i}")))
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "rewritten {i}");
        let echo: serde_json::Value = response.json().await.unwrap();
        let expected = body.replace("secret", "[redacted]");
        assert_eq!(
            echo["body_sha256"],
            sha256_hex(expected.as_bytes()),
            "rewritten {i}: {} bytes arrived",
            echo["body_bytes"]
        );
    }
}

#[tokio::test]
async fn a_callout_answer_to_a_request_paused_at_its_body_end_reads_and_rewrites_the_body() {
    let origin = Origin::start("origin").await;
    let auth = Origin::start("auth").await;
    let proxy = start_proxy(&config(
        r#"
listeners: [{address: "{{listen}}"}]
upstreams:
  origin: {endpoints: ["$origin"]}
  auth: {endpoints: ["$auth"]}
filters:
  check: {module: $callout, callouts: [auth], config: {upstream: auth, mode: body, path: /status/202}}
routes: [{upstream: origin, filters: [check]}]
"#,
        &[
            ("origin", origin.addr().to_string()),
            ("auth", auth.addr().to_string()),
            ("callout", filters::CALLOUT.to_string()),
        ],
    ))
    .await;
    for (protocol, client) in [("h1", client::http1()), ("h2", client::h2c())] {
        let response = client
            .post(proxy.url("/submit"))
            .body(trickled(b"the payload", 2))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{protocol}");
        let echo: serde_json::Value = response.json().await.unwrap();
        let expected = b"the payload [checked: 202]";
        assert_eq!(
            echo["body_sha256"],
            sha256_hex(expected),
            "{protocol}: {echo}"
        );
    }
    assert_eq!(auth.hits(), 2);
}

#[tokio::test]
async fn response_trailers_reach_the_filters_and_leave_as_they_edited_them() {
    // HTTP/2 end to end: an h2c origin (prior knowledge) and an h2c client.
    let origin = Origin::start("origin").await;
    let proxy = start_proxy(&config(
        r#"
listeners: [{address: "{{listen}}"}]
upstreams:
  origin: {endpoints: ["$origin"], http2: true}
filters:
  trail: {module: $rewriter, config: {name: trail, trailers: {set: {x-added: "1"}, remove: [x-internal]}}}
  late: {module: $rewriter, config: {name: late, trailers: {}}, response_phase: before_cache}
  buffer: {module: $body, config: {response: {find: body, replace: text}}}
  props: {module: $props}
routes:
  - {match: {path_prefix: /trailers/plain}, upstream: origin}
  - {match: {path_prefix: /trailers/buffered}, upstream: origin, filters: [buffer]}
  - {upstream: origin, filters: [props, trail, late]}
"#,
        &[
            ("origin", origin.addr().to_string()),
            ("rewriter", filters::HEADER_REWRITER.to_string()),
            ("body", filters::BODY_REWRITER.to_string()),
            ("props", filters::PROPERTIES.to_string()),
        ],
    ))
    .await;
    let query = "?t=grpc-status:0&t=x-internal:secret";
    let plain =
        client::h2c_get_with_trailers(proxy.addr(), &format!("/trailers/plain{query}")).await;
    assert_eq!(plain.status, 200);
    assert_eq!(&plain.body[..], b"trailed body\n");
    let trailers = plain.trailers.expect("the origin's trailers");
    assert_eq!(trailers["grpc-status"], "0");
    assert_eq!(trailers["x-internal"], "secret");

    let filtered =
        client::h2c_get_with_trailers(proxy.addr(), &format!("/trailers/f{query}")).await;
    assert_eq!(filtered.status, 200);
    assert_eq!(&filtered.body[..], b"trailed body\n");
    let trailers = filtered.trailers.expect("the filtered trailers");
    // `late` (before the cache) saw the origin's trailers; `trail` (after it) saw them with
    // `late`'s mark, added one and removed one.
    assert_eq!(trailers["grpc-status"], "0");
    assert_eq!(trailers["x-added"], "1");
    assert!(trailers.get("x-internal").is_none(), "{trailers:?}");
    assert_eq!(
        trailers["x-seen-trailers"],
        "grpc-status=0,x-internal=secret,x-seen-trailers=grpc-status=0,x-internal=secret"
    );
    assert!(filtered.cut_short.is_none());
    // `response.grpc_status` comes from the trailers once they came (the head has none).
    let line = wait_for_log(&proxy, "on_log status=200 path=/trailers/f").await;
    assert!(
        line.ends_with("grpc_status=0 details=via_upstream flags=0"),
        "{line}"
    );

    // A filter buffering the body waits for an end of stream that comes with the trailers,
    // not the body: the body it holds cannot go out before them, and the response is cut
    // short rather than delivered without its body or its trailers.
    let held =
        client::h2c_get_with_trailers(proxy.addr(), &format!("/trailers/buffered{query}")).await;
    // Pingora writes a head with the first body it sends: here none went, so the client
    // gets the filter's failure; had the head left, the stream would be reset.
    let failed = held.status == 502 && held.body.starts_with(b"{");
    assert!(failed || held.cut_short.is_some(), "{held:?}");
    if failed {
        let body: serde_json::Value = serde_json::from_slice(&held.body).unwrap();
        assert_eq!(body["error"], "body_held_at_trailers");
        assert_eq!(body["filter"], "buffer");
    }
    assert!(held.trailers.is_none(), "{held:?}");
}

#[tokio::test]
async fn a_callout_answer_brings_its_trailers() {
    let origin = Origin::start("origin").await;
    let auth = Origin::start("auth").await;
    let proxy = start_proxy(&config(
        r#"
listeners: [{address: "{{listen}}"}]
upstreams:
  origin: {endpoints: ["$origin"]}
  auth: {endpoints: ["$auth"], http2: true}
filters:
  check: {module: $callout, callouts: [auth], config: {upstream: auth, path: "/trailers/auth?t=x-verdict:allow"}}
routes: [{upstream: origin, filters: [check]}]
"#,
        &[
            ("origin", origin.addr().to_string()),
            ("auth", auth.addr().to_string()),
            ("callout", filters::CALLOUT.to_string()),
        ],
    ))
    .await;
    let response = client::http1()
        .get(proxy.url("/guarded"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        origin
            .last_request_headers()
            .get("x-callout-trailers")
            .map(String::as_str),
        Some("x-verdict=allow")
    );
}

#[tokio::test]
async fn envoy_foreign_functions_declare_properties_and_route_again() {
    let old = Origin::start("old").await;
    let new = Origin::start("new").await;
    let proxy = start_proxy(&config(
        r#"
listeners: [{address: "{{listen}}"}]
upstreams:
  old: {endpoints: ["$old"]}
  new: {endpoints: ["$new"]}
filters:
  move: {module: $foreign, config: {path: /new/moved, clear_route_cache: true}}
  rewrite_only: {module: $foreign, config: {path: /new/rewritten}}
routes:
  - {match: {path_prefix: /new/}, upstream: new}
  - {match: {path_prefix: /stay/}, upstream: old, filters: [rewrite_only]}
  - {upstream: old, filters: [move]}
"#,
        &[
            ("old", old.addr().to_string()),
            ("new", new.addr().to_string()),
            ("foreign", filters::FOREIGN.to_string()),
        ],
    ))
    .await;
    // `clear_route_cache` after a `:path` change: the request goes where the new path
    // routes, and the filter, which already ran, still sees the response.
    let response = client::http1()
        .get(proxy.url("/old/x"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-origin"], "new");
    assert_eq!(response.headers()["x-clear-route-cache"], "Ok");
    // The property declared read-only is set once: the second set is refused, as in Envoy.
    assert_eq!(response.headers()["x-second-set"], "BadArgument");
    assert_eq!(response.headers()["x-tenant"], "a");
    // A foreign function edgeward lacks answers NOT_FOUND.
    assert_eq!(response.headers()["x-expr-create"], "NotFound");
    let echo: serde_json::Value = response.json().await.unwrap();
    assert_eq!(echo["path"], "/new/moved");

    // Without it, the route chosen first stays, whatever the filter made of the path.
    let response = client::http1()
        .get(proxy.url("/stay/x"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["x-origin"], "old");
    let echo: serde_json::Value = response.json().await.unwrap();
    assert_eq!(echo["path"], "/new/rewritten");
}

#[tokio::test]
async fn response_code_details_say_who_answered() {
    let origin = Origin::start("origin").await;
    let dead = DeadEndpoint::new();
    let proxy = start_proxy(&config(
        r#"
listeners: [{address: "{{listen}}"}]
upstreams:
  origin: {endpoints: ["$origin"]}
  down: {endpoints: ["$dead"]}
filters:
  props: {module: $props}
  teapot: {module: $local, config: {phase: request_headers, status: 418}}
  stuck: {module: $pauser, config: {resume: false}}
routes:
  - {match: {path_prefix: /local}, upstream: origin, filters: [props, teapot]}
  - {match: {path_prefix: /stuck}, upstream: origin, filters: [props, stuck], timeout: 300ms}
  - {match: {path_prefix: /down}, upstream: down, filters: [props]}
  - {upstream: origin, filters: [props]}
"#,
        &[
            ("origin", origin.addr().to_string()),
            ("dead", dead.addr().to_string()),
            ("props", filters::PROPERTIES.to_string()),
            ("local", filters::LOCAL_RESPONDER.to_string()),
            ("pauser", filters::PAUSER.to_string()),
        ],
    ))
    .await;
    // With Envoy's response flags: UpstreamConnectionFailure (0x20) for the dead upstream.
    for (path, status, details, flags) in [
        ("/upstream", 200, "via_upstream", 0),
        ("/local", 418, "filter_local_reply", 0),
        ("/stuck", 504, "filter_timeout", 0),
        ("/down", 502, "upstream_unavailable", 0x20),
    ] {
        let response = client::http1().get(proxy.url(path)).send().await.unwrap();
        assert_eq!(response.status(), status, "{path}");
        let line = wait_for_log(&proxy, &format!("on_log status={status} path={path} ")).await;
        let expected = format!("details={details} flags={flags}");
        assert!(line.ends_with(&expected), "{path}: {line}");
    }
}

#[tokio::test]
async fn a_root_context_not_done_at_on_done_is_deleted_after_its_proxy_done() {
    let origin = Origin::start("origin").await;
    let yaml = |done_after_ticks: u32| {
        config(
            &format!(
                r#"
listeners: [{{address: "{{{{listen}}}}"}}]
workers: 1
upstreams: {{origin: {{endpoints: ["$origin"]}}}}
filters: {{ticks: {{module: $ticker, config: {{tick_ms: 20, done_after_ticks: {done_after_ticks}}}}}}}
routes: [{{upstream: origin, filters: [ticks]}}]
"#
            ),
            &[
                ("origin", origin.addr().to_string()),
                ("ticker", filters::TICK_COUNTER.to_string()),
            ],
        )
    };
    // Done three ticks after on_done: deleted then, as cpp-host does.
    let mut proxy = start_proxy(&yaml(3)).await;
    let response = client::http1().get(proxy.url("/x")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let exit = proxy.signal_and_wait("TERM", Duration::from_secs(30)).await;
    assert!(exit.success(), "{exit:?}");
    let lines = proxy.stderr_lines();
    let at = |needle: &str| {
        lines
            .iter()
            .position(|line| line.contains(needle))
            .unwrap_or_else(|| panic!("no {needle:?} in {lines:#?}"))
    };
    let on_done = at("tick_counter: on_done, not done yet");
    let proxy_done = at("tick_counter: proxy_done after 3 ticks");
    let deleted = at("tick_counter: root deleted");
    assert!(on_done < proxy_done && proxy_done < deleted, "{lines:#?}");

    // Never done: deleted anyway once the wait is over, with a warning.
    let mut proxy = start_proxy(&yaml(1_000_000)).await;
    let exit = proxy.signal_and_wait("TERM", Duration::from_secs(30)).await;
    assert!(exit.success(), "{exit:?}");
    let lines = proxy.stderr_lines();
    assert!(
        lines.iter().any(|l| l.contains("did not call proxy_done")),
        "{lines:#?}"
    );
    assert!(lines
        .iter()
        .any(|l| l.contains("tick_counter: root deleted")));
}

#[tokio::test]
async fn node_metadata_and_connection_attributes_envoy_filters_read() {
    let origin = Origin::start("origin").await;
    let proxy = start_proxy(&config(
        r#"
listeners: [{address: "{{listen}}"}]
node: {id: edge-7, cluster: eu-west, metadata: {region: eu}}
upstreams:
  origin: {endpoints: ["$origin"], metadata: {acme: {tier: gold}}}
filters:
  props:
    module: $props
    config:
      paths:
        - [node, id]
        - [node, cluster]
        - [node, metadata, region]
        - [listener_direction]
        - [route_metadata, filter_metadata, acme, team]
        - [xds, route_metadata, filter_metadata, acme, team]
        - [cluster_metadata, filter_metadata, acme, tier]
        - [cluster_metadata, filter_metadata, acme, missing]
        - [upstream, local_address]
routes:
  - {upstream: origin, filters: [props], metadata: {acme: {team: web}}}
"#,
        &[
            ("origin", origin.addr().to_string()),
            ("props", filters::PROPERTIES.to_string()),
        ],
    ))
    .await;
    let response = client::http1().get(proxy.url("/x")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let prop = |name: &str| {
        response
            .headers()
            .get(format!("x-prop-{name}"))
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_else(|| panic!("no x-prop-{name}"))
    };
    assert_eq!(prop("node.id"), "edge-7");
    assert_eq!(prop("node.cluster"), "eu-west");
    assert_eq!(prop("node.metadata.region"), "eu");
    assert_eq!(prop("listener_direction"), "1");
    assert_eq!(prop("route_metadata.filter_metadata.acme.team"), "web");
    assert_eq!(prop("xds.route_metadata.filter_metadata.acme.team"), "web");
    assert_eq!(prop("cluster_metadata.filter_metadata.acme.tier"), "gold");
    assert_eq!(
        prop("cluster_metadata.filter_metadata.acme.missing"),
        "missing"
    );
    // The proxy's end of its connection to the origin.
    let local: std::net::SocketAddr = prop("upstream.local_address").parse().unwrap();
    assert!(local.ip().is_loopback(), "{local}");
    assert_ne!(local.port(), origin.addr().port());
}

#[tokio::test]
async fn a_grpc_local_response_answers_grpc_requests_only_as_envoy_does() {
    let origin = Origin::start("origin").await;
    let proxy = start_proxy(&config(
        r#"
listeners: [{address: "{{listen}}"}]
upstreams:
  origin: {endpoints: ["$origin"]}
filters:
  deny:
    module: $responder
    config: {phase: request_headers, status: 200, body: "no token: é", grpc_status: unauthenticated, headers: {x-denied: "1"}}
routes:
  - {upstream: origin, filters: [deny]}
"#,
        &[
            ("origin", origin.addr().to_string()),
            ("responder", filters::LOCAL_RESPONDER.to_string()),
        ],
    ))
    .await;
    // A gRPC request: a trailers-only answer, the message percent-encoded, no body.
    let response = client::h2c()
        .post(proxy.url("/pkg.Service/Method"))
        .header("content-type", "application/grpc")
        .body(&b"\0\0\0\0\0"[..])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let headers = response.headers().clone();
    assert_eq!(headers["content-type"], "application/grpc");
    assert_eq!(headers["grpc-status"], "16");
    assert_eq!(headers["grpc-message"], "no token: %C3%A9");
    assert_eq!(headers["x-denied"], "1");
    assert!(response.bytes().await.unwrap().is_empty());
    // Any other request: the plain response, the status ignored.
    let response = client::http1()
        .get(proxy.url("/page"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.headers().get("grpc-status").is_none());
    assert_eq!(response.text().await.unwrap(), "no token: é");
    assert_eq!(origin.requests(), 0);
}
