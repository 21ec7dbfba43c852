//! Load balancing over real origins: round robin, consistent hashing, health checks and
//! retrying a refused connection on another endpoint.

use std::time::Duration;

use edgeward_testkit::{client, DeadEndpoint, Origin};

use crate::support::{config, get_json, start_proxy};

async fn origin_of(proxy: &edgeward_testkit::Proxy, path: &str) -> String {
    let (status, body) = get_json(proxy, path, &[]).await;
    assert_eq!(status, 200, "{path}: {body}");
    body["origin"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn round_robin_spreads_requests_evenly() {
    let a = Origin::start("a").await;
    let b = Origin::start("b").await;
    let proxy = start_proxy(&config(
        r#"
listeners: [{address: "{{listen}}"}]
upstreams:
  pool: {endpoints: ["$a", "$b"], load_balancing: round_robin}
routes: [{upstream: pool}]
"#,
        &[("a", a.addr().to_string()), ("b", b.addr().to_string())],
    ))
    .await;
    for i in 0..20 {
        origin_of(&proxy, &format!("/r/{i}")).await;
    }
    assert_eq!((a.hits(), b.hits()), (10, 10));
}

#[tokio::test]
async fn consistent_hashing_pins_each_uri_to_one_endpoint() {
    let origins = [
        Origin::start("a").await,
        Origin::start("b").await,
        Origin::start("c").await,
    ];
    let proxy = start_proxy(&config(
        r#"
listeners: [{address: "{{listen}}"}]
upstreams:
  pool: {endpoints: ["$a", "$b", "$c"], load_balancing: consistent_hash}
routes: [{upstream: pool}]
"#,
        &[
            ("a", origins[0].addr().to_string()),
            ("b", origins[1].addr().to_string()),
            ("c", origins[2].addr().to_string()),
        ],
    ))
    .await;
    let mut used = std::collections::BTreeSet::new();
    for i in 0..30 {
        let path = format!("/objects/{i}?v=1");
        let first = origin_of(&proxy, &path).await;
        for _ in 0..3 {
            assert_eq!(
                origin_of(&proxy, &path).await,
                first,
                "{path} moved between endpoints"
            );
        }
        used.insert(first);
    }
    assert!(used.len() >= 2, "30 URIs all hashed to {used:?}");
}

#[tokio::test]
async fn unhealthy_endpoints_leave_the_rotation_and_come_back() {
    let a = Origin::start("a").await;
    let b = Origin::start("b").await;
    let proxy = start_proxy(&config(
        r#"
listeners: [{address: "{{listen}}"}]
upstreams:
  pool:
    endpoints: ["$a", "$b"]
    health_check: {path: /healthz, interval: 100ms, timeout: 1s}
routes: [{upstream: pool}]
"#,
        &[("a", a.addr().to_string()), ("b", b.addr().to_string())],
    ))
    .await;

    b.set_healthy(false);
    // After a failed check, b gets nothing: wait for ten answers in a row from a.
    wait_for_streak(&proxy, "a", 10).await;
    let b_hits = b.hits();
    for i in 0..10 {
        assert_eq!(origin_of(&proxy, &format!("/after/{i}")).await, "a");
    }
    assert_eq!(b.hits(), b_hits, "an unhealthy endpoint still got traffic");

    b.set_healthy(true);
    wait_for_streak(&proxy, "b", 1).await;
}

/// Polls until `streak` consecutive requests were answered by `origin` (or fails after 20 s).
async fn wait_for_streak(proxy: &edgeward_testkit::Proxy, origin: &str, streak: usize) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let mut run = 0;
    while run < streak {
        assert!(
            tokio::time::Instant::now() < deadline,
            "never saw {streak} answers in a row from {origin}"
        );
        if origin_of(proxy, "/probe").await == origin {
            run += 1;
        } else {
            run = 0;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

#[tokio::test]
async fn a_refused_connection_is_retried_on_another_endpoint() {
    let a = Origin::start("a").await;
    let dead = DeadEndpoint::new();
    let template = r#"
listeners: [{address: "{{listen}}"}]
upstreams:
  retrying: {endpoints: ["$dead", "$a"], retries: 1}
  single-shot: {endpoints: ["$dead", "$a"], retries: 0}
routes:
  - {match: {path_prefix: /retry/}, upstream: retrying}
  - {upstream: single-shot}
"#;
    let proxy = start_proxy(&config(
        template,
        &[
            ("a", a.addr().to_string()),
            ("dead", dead.addr().to_string()),
        ],
    ))
    .await;
    for i in 0..10 {
        assert_eq!(origin_of(&proxy, &format!("/retry/{i}")).await, "a");
    }
    // Without retries, the requests that drew the dead endpoint fail with 502.
    let mut statuses = Vec::new();
    for i in 0..10 {
        let response = client::http1()
            .get(proxy.url(&format!("/once/{i}")))
            .send()
            .await
            .unwrap();
        statuses.push(response.status().as_u16());
    }
    assert!(
        statuses.contains(&502) && statuses.contains(&200),
        "{statuses:?}"
    );
}
