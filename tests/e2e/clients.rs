//! Clients that are slow, idle, hostile or just unusual: the `client:` timeouts and connection
//! cap, requests without `Host` or from HTTP/1.0 and 0.9, pipelining, `Expect: 100-continue`,
//! `Content-Length` lists, and clients that go away. Each sends the raw bytes over TCP.

use std::time::{Duration, Instant};

use edgeward_testkit::{client, Origin, Proxy};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::{self, config, metric, metric_if_exposed, metrics_showing, start_proxy};

/// One listener with short client timeouts, in front of a test origin, with the admin
/// listener for metrics.
async fn proxy_with_limits(origin: &Origin, client: &str) -> Proxy {
    start_proxy(&config(
        r#"
listeners: [{address: "{{listen}}", client: $client}]
admin: {address: "{{admin}}"}
upstreams: {o: {endpoints: ["$origin"]}}
routes: [{name: all, upstream: o}]
"#,
        &[
            ("client", client.to_string()),
            ("origin", origin.addr().to_string()),
        ],
    ))
    .await
}

/// Everything the proxy sends until it closes the connection (or `limit` passes), as text,
/// and when the connection closed.
async fn read_until_closed(stream: &mut TcpStream, limit: Duration) -> (String, Option<Instant>) {
    let (received, closed) = support::read_until_closed(stream, limit).await;
    (String::from_utf8_lossy(&received).into_owned(), closed)
}

/// The series counting connections of `proxy`'s listener closed by the `kind` timeout.
fn timeouts(proxy: &Proxy, kind: &str) -> String {
    format!(
        "edgeward_client_timeouts_total{{listener=\"{}\",timeout=\"{kind}\"}}",
        proxy.addr()
    )
}

async fn send(proxy: &Proxy, bytes: &[u8]) -> TcpStream {
    let mut stream = TcpStream::connect(proxy.addr()).await.unwrap();
    stream.write_all(bytes).await.unwrap();
    stream
}

#[tokio::test]
async fn a_request_head_sent_too_slowly_gets_408_and_is_closed_at_the_header_timeout() {
    let origin = Origin::start("origin").await;
    let proxy = proxy_with_limits(&origin, "{header_timeout: 1s}").await;
    // Slowloris: a head that never ends, one more header line every 200 ms, on 20 connections.
    let mut connections = Vec::new();
    let started = Instant::now();
    for _ in 0..20 {
        connections.push(send(&proxy, b"GET / HTTP/1.1\r\nHost: x\r\n").await);
    }
    let trickle = async {
        for i in 0..40 {
            tokio::time::sleep(Duration::from_millis(200)).await;
            for stream in &mut connections {
                let _ = stream.write_all(format!("x-{i}: y\r\n").as_bytes()).await;
            }
        }
    };
    tokio::time::timeout(Duration::from_millis(1500), trickle)
        .await
        .unwrap_err();
    for stream in &mut connections {
        let (answer, closed) = read_until_closed(stream, Duration::from_secs(10)).await;
        assert!(
            answer.starts_with("HTTP/1.1 408 Request Timeout\r\n"),
            "{answer:?}"
        );
        let closed = closed.expect("the connection stays open");
        let lived = closed - started;
        assert!(lived >= Duration::from_secs(1), "closed after {lived:?}");
    }
    metrics_showing(&proxy, &[(&timeouts(&proxy, "header"), 20.0)]).await;
    // The proxy serves the next client as usual.
    let response = client::http1()
        .get(proxy.url("/fine"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn a_connection_that_sends_nothing_is_closed_at_the_header_timeout_without_an_answer() {
    let origin = Origin::start("origin").await;
    let proxy = proxy_with_limits(&origin, "{header_timeout: 1s}").await;
    let started = Instant::now();
    let mut stream = TcpStream::connect(proxy.addr()).await.unwrap();
    let (answer, closed) = read_until_closed(&mut stream, Duration::from_secs(10)).await;
    assert_eq!(answer, "");
    let lived = closed.expect("the connection stays open") - started;
    assert!(lived >= Duration::from_secs(1), "closed after {lived:?}");
}

#[tokio::test]
async fn a_kept_alive_connection_is_closed_after_the_idle_timeout() {
    let origin = Origin::start("origin").await;
    let proxy = proxy_with_limits(&origin, "{header_timeout: 30s, idle_timeout: 1s}").await;
    let asked = Instant::now();
    let mut stream = send(&proxy, b"GET /first HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let (answer, closed) = read_until_closed(&mut stream, Duration::from_secs(10)).await;
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer:?}");
    let lived = closed.expect("the idle connection stays open") - asked;
    assert!(lived >= Duration::from_secs(1), "closed after {lived:?}");
    metrics_showing(&proxy, &[(&timeouts(&proxy, "idle"), 1.0)]).await;
}

#[tokio::test]
async fn a_request_body_that_stops_arriving_gets_408_at_the_body_timeout() {
    let origin = Origin::start("origin").await;
    let proxy = proxy_with_limits(&origin, "{body_timeout: 1s}").await;
    let started = Instant::now();
    let mut stream = send(
        &proxy,
        b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc",
    )
    .await;
    let (answer, closed) = read_until_closed(&mut stream, Duration::from_secs(10)).await;
    assert!(answer.starts_with("HTTP/1.1 408 "), "{answer:?}");
    assert!(answer.contains("\"error\":\"request_timeout\""), "{answer}");
    // The body was read before anything went upstream: the origin never saw the request.
    assert_eq!(origin.hits(), 0);
    let lived = closed.expect("the connection stays open") - started;
    assert!(lived >= Duration::from_secs(1), "closed after {lived:?}");
    metrics_showing(&proxy, &[(&timeouts(&proxy, "body"), 1.0)]).await;
}

#[tokio::test]
async fn connections_past_max_connections_are_closed_at_once_and_counted() {
    let origin = Origin::start("origin").await;
    let proxy = proxy_with_limits(&origin, "{max_connections: 3, header_timeout: 30s}").await;
    // The testkit's readiness probe connected and left; once its place is free, three clients
    // hold their connections with unfinished heads.
    let gauge = format!(
        "edgeward_client_connections{{listener=\"{}\"}}",
        proxy.addr()
    );
    metrics_showing(&proxy, &[(&gauge, 0.0)]).await;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(send(&proxy, b"GET / HTTP/1.1\r\n").await);
    }
    metrics_showing(&proxy, &[(&gauge, 3.0)]).await;
    let mut fourth = send(&proxy, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let (answer, closed) = read_until_closed(&mut fourth, Duration::from_secs(10)).await;
    assert_eq!(answer, "");
    assert!(closed.is_some());
    let refused = format!(
        "edgeward_client_connections_refused_total{{listener=\"{}\"}}",
        proxy.addr()
    );
    assert_eq!(metric(&proxy, &refused).await, 1.0);
    // A place frees up when a client leaves.
    drop(held.pop());
    metrics_showing(&proxy, &[(&gauge, 2.0)]).await;
    let mut next = send(
        &proxy,
        b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    let (answer, _) = read_until_closed(&mut next, Duration::from_secs(10)).await;
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer:?}");
}

#[tokio::test]
async fn each_listener_has_its_own_client_limits() {
    let origin = Origin::start("origin").await;
    let proxy = start_proxy(&config(
        r#"
listeners:
  - {address: "{{listen}}", client: {header_timeout: 1s}}
  - {address: "{{patient}}"}
client: {header_timeout: 20s}
upstreams: {o: {endpoints: ["$origin"]}}
routes: [{upstream: o}]
"#,
        &[("origin", origin.addr().to_string())],
    ))
    .await;
    let mut strict = TcpStream::connect(proxy.addr()).await.unwrap();
    let mut patient = TcpStream::connect(proxy.placeholder_addr("patient"))
        .await
        .unwrap();
    let (_, closed) = read_until_closed(&mut strict, Duration::from_secs(10)).await;
    assert!(closed.is_some(), "the 1 s listener keeps the connection");
    let (_, closed) = read_until_closed(&mut patient, Duration::from_secs(2)).await;
    assert!(closed.is_none(), "the 20 s listener closed the connection");
    patient
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let (answer, _) = read_until_closed(&mut patient, Duration::from_secs(10)).await;
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer:?}");
}

#[tokio::test]
async fn http2_connections_are_not_cut_by_the_http1_header_timeout() {
    let origin = Origin::start("origin").await;
    let proxy = proxy_with_limits(&origin, "{header_timeout: 1s, idle_timeout: 10s}").await;
    let h2 = client::h2c();
    let first = h2.get(proxy.url("/one")).send().await.unwrap();
    assert_eq!(first.version(), http::Version::HTTP_2);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let second = h2.get(proxy.url("/two")).send().await.unwrap();
    assert_eq!(second.status(), 200);
    // The connection lived through the header timeout: none was counted.
    let cut = metric_if_exposed(&proxy, &timeouts(&proxy, "header")).await;
    assert_eq!(cut, None);
    // A client that stops after the HTTP/2 preface does not hold its connection.
    let mut stalled = send(&proxy, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await;
    let (_, closed) = read_until_closed(&mut stalled, Duration::from_secs(10)).await;
    assert!(closed.is_some());
}

#[tokio::test]
async fn requests_without_host_get_400_but_http10_and_short_requests_are_answered() {
    let origin = Origin::start("origin").await;
    let proxy = proxy_with_limits(&origin, "{}").await;
    for (request, status) in [
        // RFC 9112 §3.2: an HTTP/1.1 request has exactly one Host.
        (&b"GET / HTTP/1.1\r\n\r\n"[..], "400"),
        (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", "400"),
        (b"GET / HTTP/1.1\r\nHost: bad host\r\n\r\n", "400"),
        // HTTP/1.0 has no Host requirement; the route needs no host. The request is shorter
        // than the HTTP/2 preface edgeward looks for, and must not wait for more.
        (b"GET / HTTP/1.0\r\n\r\n", "200"),
        // HTTP/0.9 is not spoken.
        (b"GET /\r\n", "400"),
    ] {
        let started = Instant::now();
        let mut stream = send(&proxy, request).await;
        let (answer, closed) = read_until_closed(&mut stream, Duration::from_secs(10)).await;
        let name = String::from_utf8_lossy(request);
        assert!(
            answer.starts_with(&format!("HTTP/1.1 {status} ")),
            "{name:?}: {answer:?}"
        );
        if status == "400" && !answer.contains("Pingora") {
            assert!(answer.contains("\"error\":\"bad_request\""), "{answer}");
        }
        assert!(closed.is_some(), "{name:?}: the connection stays open");
        assert!(started.elapsed() < Duration::from_secs(5), "{name:?}");
    }
    // None of the malformed requests reached the origin.
    assert_eq!(origin.hits(), 1);
}

#[tokio::test]
async fn pipelined_requests_are_all_answered_in_order() {
    let origin = Origin::start("origin").await;
    let proxy = proxy_with_limits(&origin, "{}").await;
    let mut stream = send(
        &proxy,
        b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nPOST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhiGET /c HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    let (answer, _) = read_until_closed(&mut stream, Duration::from_secs(10)).await;
    let paths: Vec<&str> = answer
        .match_indices("\"path\":\"")
        .map(|(i, m)| {
            let rest = &answer[i + m.len()..];
            &rest[..rest.find('"').unwrap()]
        })
        .collect();
    assert_eq!(paths, ["/a", "/b", "/c"], "{answer}");
    assert_eq!(answer.matches("HTTP/1.1 200 OK\r\n").count(), 3);
    assert_eq!(origin.hits(), 3);
}

#[tokio::test]
async fn expect_100_continue_is_answered_before_the_body_and_not_sent_upstream() {
    let origin = Origin::start("origin").await;
    let proxy = proxy_with_limits(&origin, "{}").await;
    let mut stream = send(
        &proxy,
        b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n",
    )
    .await;
    let mut interim = [0; 25];
    tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut interim))
        .await
        .expect("no 100 Continue")
        .unwrap();
    assert_eq!(&interim, b"HTTP/1.1 100 Continue\r\n\r\n");
    stream.write_all(b"hello").await.unwrap();
    let (answer, _) = read_until_closed(&mut stream, Duration::from_secs(10)).await;
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer:?}");
    assert!(answer.contains("\"body_bytes\":5"), "{answer}");
    assert!(!origin.last_request_headers().contains_key("expect"));
}

#[tokio::test]
async fn content_length_lists_go_upstream_as_one_value_and_conflicting_ones_are_refused() {
    let origin = Origin::start("origin").await;
    let proxy = proxy_with_limits(&origin, "{}").await;
    for head in [
        "Content-Length: 3, 3\r\n",
        "Content-Length: 3\r\nContent-Length: 3\r\n",
    ] {
        let request = format!("POST / HTTP/1.1\r\nHost: x\r\n{head}Connection: close\r\n\r\nabc");
        let mut stream = send(&proxy, request.as_bytes()).await;
        let (answer, _) = read_until_closed(&mut stream, Duration::from_secs(10)).await;
        assert!(
            answer.starts_with("HTTP/1.1 200 OK\r\n"),
            "{head:?}: {answer:?}"
        );
        assert_eq!(
            origin
                .last_request_headers()
                .get("content-length")
                .map(String::as_str),
            Some("3"),
            "{head:?}"
        );
    }
    let hits = origin.hits();
    let mut stream = send(
        &proxy,
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3, 4\r\n\r\nabc",
    )
    .await;
    let (answer, _) = read_until_closed(&mut stream, Duration::from_secs(10)).await;
    assert!(answer.starts_with("HTTP/1.1 400 "), "{answer:?}");
    assert_eq!(origin.hits(), hits);
}

#[tokio::test]
async fn a_client_that_goes_away_is_counted_and_not_logged_as_an_error() {
    let origin = Origin::start("origin").await;
    let proxy = proxy_with_limits(&origin, "{}").await;
    for _ in 0..3 {
        let stream = send(&proxy, b"GET /delay/1000 HTTP/1.1\r\nHost: x\r\n\r\n").await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        drop(stream);
    }
    metrics_showing(
        &proxy,
        &[("edgeward_client_aborts_total{route=\"all\"}", 3.0)],
    )
    .await;
    let errors: Vec<String> = proxy
        .stderr_lines()
        .into_iter()
        .filter(|line| line.contains("ERROR"))
        .collect();
    assert!(errors.is_empty(), "{errors:#?}");
}

/// An HTTP/2 frame: 9-byte header and payload.
fn h2_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let length = u32::try_from(payload.len()).unwrap().to_be_bytes();
    let mut frame = vec![length[1], length[2], length[3], kind, flags];
    frame.extend_from_slice(&stream.to_be_bytes());
    frame.extend_from_slice(payload);
    frame
}

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const GOAWAY: u8 = 0x7;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;

/// `GET /` in HPACK, from the static table (`:method GET`, `:scheme http`, `:path /`), with
/// a literal `:authority`.
fn h2_get_block() -> Vec<u8> {
    let mut block = vec![0x82, 0x86, 0x84, 0x41, 9];
    block.extend_from_slice(b"localhost");
    block
}

/// Whether the server sent a frame of `kind` among the `received` frames.
fn has_frame(received: &[u8], kind: u8) -> bool {
    let mut at = 0;
    while at + 9 <= received.len() {
        let length = usize::from(received[at]) << 16
            | usize::from(received[at + 1]) << 8
            | usize::from(received[at + 2]);
        if received[at + 3] == kind {
            return true;
        }
        at += 9 + length;
    }
    false
}

#[tokio::test]
async fn an_http2_client_resetting_streams_in_a_flood_is_sent_away() {
    let origin = Origin::start("origin").await;
    let proxy = proxy_with_limits(&origin, "{}").await;
    // "Rapid reset" (CVE-2023-44487): open a stream and cancel it at once, thousands of times.
    let mut bytes = H2_PREFACE.to_vec();
    bytes.extend(h2_frame(SETTINGS, 0, 0, &[]));
    for i in 0..5_000u32 {
        let stream = 2 * i + 1;
        bytes.extend(h2_frame(
            HEADERS,
            END_STREAM | END_HEADERS,
            stream,
            &h2_get_block(),
        ));
        bytes.extend(h2_frame(RST_STREAM, 0, stream, &8u32.to_be_bytes()));
    }
    let mut stream = TcpStream::connect(proxy.addr()).await.unwrap();
    let _ = stream.write_all(&bytes).await;
    let mut received = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        let mut buf = [0; 65536];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => received.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the connection stays open");
    assert!(has_frame(&received, GOAWAY), "no GOAWAY");
    // Far fewer requests than streams reached the origin, and the proxy serves on.
    assert!(
        origin.hits() < 1_000,
        "{} requests reached the origin",
        origin.hits()
    );
    let response = client::h2c().get(proxy.url("/fine")).send().await.unwrap();
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn an_http2_header_block_that_never_ends_is_refused() {
    let origin = Origin::start("origin").await;
    let proxy = proxy_with_limits(&origin, "{}").await;
    // "CONTINUATION flood": a header block continued for ever, each frame a valid header.
    let mut stream = TcpStream::connect(proxy.addr()).await.unwrap();
    let mut opening = H2_PREFACE.to_vec();
    opening.extend(h2_frame(SETTINGS, 0, 0, &[]));
    opening.extend(h2_frame(HEADERS, END_STREAM, 1, &h2_get_block()));
    stream.write_all(&opening).await.unwrap();
    // A literal header without indexing: `x-flood: aaa...`.
    let mut header = vec![0x00, 7];
    header.extend_from_slice(b"x-flood");
    header.push(100);
    header.extend_from_slice(&[b'a'; 100]);
    let continuation = h2_frame(CONTINUATION, 0, 1, &header);
    let flood = async {
        for _ in 0..100_000 {
            if stream.write_all(&continuation).await.is_err() {
                return true;
            }
        }
        false
    };
    let cut = tokio::time::timeout(Duration::from_secs(20), flood).await;
    assert_eq!(cut, Ok(true), "the proxy took 10 MB of one header block");
    assert_eq!(origin.hits(), 0);
    let response = client::h2c().get(proxy.url("/fine")).send().await.unwrap();
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn a_small_body_found_malformed_never_reaches_the_upstream() {
    let origin = Origin::start("origin").await;
    let proxy = proxy_with_limits(&origin, "{}").await;
    // A chunked body that is malformed from its first chunk (a size that is not hexadecimal),
    // and one whose length breaks its Content-Length, read ahead before going upstream.
    for request in [
        &b"POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n"[..],
        b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nshort",
    ] {
        let started = Instant::now();
        let mut stream = send(&proxy, request).await;
        stream.shutdown().await.unwrap();
        let (answer, closed) = read_until_closed(&mut stream, Duration::from_secs(10)).await;
        assert!(closed.is_some());
        assert!(started.elapsed() < Duration::from_secs(5));
        if request.starts_with(b"POST /upload HTTP/1.1\r\nHost: x\r\nTransfer") {
            assert!(answer.starts_with("HTTP/1.1 400 "), "{answer:?}");
        }
    }
    assert_eq!(
        origin.hits(),
        0,
        "the origin saw a malformed HTTP/1.1 request"
    );
    // HTTP/2: a body shorter than its content-length.
    let mut headers = vec![0x83, 0x86, 0x84, 0x41, 9];
    headers.extend_from_slice(b"localhost");
    headers.extend_from_slice(&[0x5c, 2]);
    headers.extend_from_slice(b"10");
    let mut bytes = H2_PREFACE.to_vec();
    bytes.extend(h2_frame(SETTINGS, 0, 0, &[]));
    bytes.extend(h2_frame(HEADERS, END_HEADERS, 1, &headers));
    bytes.extend(h2_frame(DATA, END_STREAM, 1, b"short"));
    let mut stream = send(&proxy, &bytes).await;
    let mut received = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(3), async {
        let mut buf = [0; 4096];
        while let Ok(n @ 1..) = stream.read(&mut buf).await {
            received.extend_from_slice(&buf[..n]);
        }
    })
    .await;
    assert!(
        has_frame(&received, RST_STREAM)
            || has_frame(&received, GOAWAY)
            || has_frame(&received, HEADERS),
        "no answer to the short body: {received:?}"
    );
    assert_eq!(origin.hits(), 0, "the origin saw a malformed request");
    // Well-formed small bodies still arrive whole.
    let response = client::h2c()
        .post(proxy.url("/upload"))
        .body("0123456789")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let echo: serde_json::Value = response.json().await.unwrap();
    assert_eq!(echo["body_bytes"], 10);
}
