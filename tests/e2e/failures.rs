//! Upstream failures become clear JSON errors, and the proxy keeps serving afterwards.

use edgeward_testkit::{DeadEndpoint, Origin};

use crate::support::{config, eventually, get_json, start_proxy};

#[tokio::test]
async fn refused_connections_are_502_and_slow_upstreams_504() {
    let slow = Origin::start("slow").await;
    let dead = DeadEndpoint::new();
    let proxy = start_proxy(&config(
        r#"
listeners: [{address: "{{listen}}"}]
upstreams:
  down: {endpoints: ["$dead"], retries: 0}
  slow: {endpoints: ["$slow"], read_timeout: 300ms}
  demo: {builtin: echo}
routes:
  - {match: {path_prefix: /down/}, upstream: down}
  - {match: {path_prefix: /delay/}, upstream: slow}
  - {upstream: demo}
"#,
        &[
            ("dead", dead.addr().to_string()),
            ("slow", slow.addr().to_string()),
        ],
    ))
    .await;

    let (status, body) = get_json(&proxy, "/down/x", &[]).await;
    assert_eq!(status, 502, "{body}");
    assert_eq!(body["error"], "upstream_unavailable");
    assert!(
        body["message"].as_str().unwrap().contains("`down`"),
        "{body}"
    );

    let (status, body) = get_json(&proxy, "/delay/3000", &[]).await;
    assert_eq!(status, 504, "{body}");
    assert_eq!(body["error"], "upstream_timeout");

    // A fast answer from the same slow upstream still works, and so does everything else.
    let (status, _) = get_json(&proxy, "/delay/10", &[]).await;
    assert_eq!(status, 200);
    let (status, body) = get_json(&proxy, "/still-serving", &[]).await;
    assert_eq!((status, body["upstream"].as_str()), (200, Some("demo")));
}

#[tokio::test]
async fn all_endpoints_unhealthy_is_502_no_healthy_endpoint() {
    let origin = Origin::start("sick").await;
    origin.set_healthy(false);
    let proxy = start_proxy(&config(
        r#"
listeners: [{address: "{{listen}}"}]
upstreams:
  sick: {endpoints: ["$sick"], health_check: {path: /healthz, interval: 100ms}}
routes: [{upstream: sick}]
"#,
        &[("sick", origin.addr().to_string())],
    ))
    .await;
    let body = eventually("the failing health check to take effect", || async {
        let (status, body) = get_json(&proxy, "/x", &[]).await;
        (status == 502).then_some(body)
    })
    .await;
    assert_eq!(body["error"], "no_healthy_endpoint");
}
