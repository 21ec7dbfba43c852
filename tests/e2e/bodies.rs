//! Bodies stream through both ways without being buffered whole, over HTTP/1.1 and h2c; only
//! small request bodies are held until complete.

use std::time::Duration;

use edgeward_testkit::{client, expected_bytes_sha256, filters, reqwest, Origin, Proxy};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::{config, metric, start_proxy};

const MIB: u64 = 1024 * 1024;

async fn proxy_to(origin: &Origin) -> Proxy {
    start_proxy(&config(
        r#"
listeners: [{address: "{{listen}}"}]
upstreams:
  origin: {endpoints: ["$origin"]}
  demo: {builtin: echo}
routes:
  - {match: {path_prefix: /bytes/}, upstream: origin}
  - {upstream: demo}
"#,
        &[("origin", origin.addr().to_string())],
    ))
    .await
}

async fn upload(http: &reqwest::Client, proxy: &Proxy, size: u64) -> serde_json::Value {
    let response = http
        .post(proxy.url("/upload"))
        .body(client::generated_body(size))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

async fn download(http: &reqwest::Client, proxy: &Proxy, size: u64) -> (u64, String) {
    let response = http
        .get(proxy.url(&format!("/bytes/{size}")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    client::sha256_of_body(response).await
}

#[tokio::test]
async fn hundred_mebibytes_pass_both_ways_byte_identical_in_constant_memory() {
    let origin = Origin::start("origin").await;
    let proxy = proxy_to(&origin).await;
    let http = client::http1();
    let size = 100 * MIB;

    let echoed = upload(&http, &proxy, size).await;
    assert_eq!(echoed["body_bytes"], size);
    assert_eq!(echoed["body_sha256"], expected_bytes_sha256(size));

    let (bytes, sha) = download(&http, &proxy, size).await;
    assert_eq!((bytes, sha), (size, expected_bytes_sha256(size)));

    // Buffering either body whole would push the peak far above this.
    let peak = proxy.peak_rss_bytes();
    assert!(
        peak < 60 * MIB,
        "peak RSS {} MiB after moving 200 MiB",
        peak / MIB
    );
}

#[tokio::test]
async fn cleartext_http2_requests_work() {
    let origin = Origin::start("origin").await;
    let proxy = proxy_to(&origin).await;
    let h2 = client::h2c();

    let response = h2.get(proxy.url("/hello")).send().await.unwrap();
    assert_eq!(response.version(), reqwest::Version::HTTP_2);
    assert_eq!(response.status(), 200);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["upstream"], "demo");
    assert_eq!(body["headers"]["via"], "2 edgeward");

    let size = 10 * MIB;
    let echoed = upload(&h2, &proxy, size).await;
    assert_eq!(echoed["body_sha256"], expected_bytes_sha256(size));
    assert_eq!(
        download(&h2, &proxy, size).await,
        (size, expected_bytes_sha256(size))
    );
}

/// POSTs `size` bytes announced with Content-Length, in two writes 200 ms apart (so the proxy
/// reads them apart); returns the answer's JSON body.
async fn post_in_two_parts(proxy: &Proxy, size: usize) -> serde_json::Value {
    let mut stream = tokio::net::TcpStream::connect(proxy.addr()).await.unwrap();
    let head = format!(
        "POST /upload HTTP/1.1\r\nhost: test\r\ncontent-length: {size}\r\nconnection: close\r\n\r\n"
    );
    let body = vec![b'x'; size];
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(&body[..size / 2]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    stream.write_all(&body[size / 2..]).await.unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.unwrap();
    let answer = String::from_utf8(answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
    let (_, json) = answer.split_once("\r\n\r\n").unwrap();
    serde_json::from_str(json).unwrap()
}

#[tokio::test]
async fn a_small_request_body_reaches_filters_and_origin_whole_a_large_one_streams() {
    let origin = Origin::start("origin").await;
    let proxy = start_proxy(&config(
        r#"
listeners: [{address: "{{listen}}"}]
admin: {address: "{{admin}}"}
upstreams: {origin: {endpoints: ["$origin"]}}
filters: {seen: {module: $rewriter, config: {name: seen}}}
routes: [{upstream: origin, filters: [seen]}]
"#,
        &[
            ("origin", origin.addr().to_string()),
            ("rewriter", filters::HEADER_REWRITER.to_string()),
        ],
    ))
    .await;
    let series = "edgeward_filter_calls_total{filter=\"seen\",phase=\"on_http_request_body\"}";

    // 10 KiB, read in two parts: one body callback, the whole body upstream.
    let small = post_in_two_parts(&proxy, 10 * 1024).await;
    assert_eq!(small["body_bytes"], 10 * 1024);
    // (Callbacks are counted before the body goes upstream, so before the answer.)
    assert_eq!(metric(&proxy, series).await, 1.0);

    // 1 MiB is over the 64 KiB bound: it streams, chunk by chunk.
    let large = post_in_two_parts(&proxy, 1024 * 1024).await;
    assert_eq!(large["body_bytes"], 1024 * 1024);
    let calls_for_large = metric(&proxy, series).await - 1.0;
    assert!(calls_for_large >= 2.0, "{calls_for_large} body callbacks");
}
