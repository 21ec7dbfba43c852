//! Bodies stream through both ways without being buffered whole, over HTTP/1.1 and h2c.

use edgeward_testkit::{client, expected_bytes_sha256, reqwest, Origin, Proxy};

use crate::support::{config, start_proxy};

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
