//! The access log, the workers' runtimes, and graceful shutdown on SIGTERM and SIGINT.

use std::time::{Duration, Instant};

use edgeward_testkit::{client, Origin};

use crate::support::{config, eventually, start_proxy};

#[tokio::test]
async fn every_request_gets_a_json_access_log_line() {
    let proxy = start_proxy(
        r#"
listeners: [{address: "{{listen}}"}]
upstreams: {demo: {builtin: echo}}
routes: [{name: everything, upstream: demo}]
"#,
    )
    .await;
    let response = client::http1()
        .post(proxy.url("/logged?q=1"))
        .header("x-request-id", "log-me")
        .body("four")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let line = proxy
        .wait_for_stdout("log-me", Duration::from_secs(10))
        .await;
    let entry: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(entry["method"], "POST");
    assert_eq!(entry["path"], "/logged?q=1");
    assert_eq!(entry["host"], "127.0.0.1");
    assert_eq!(entry["status"], 200);
    assert_eq!(entry["bytes_received"], 4);
    assert!(entry["bytes_sent"].as_u64().unwrap() > 0);
    assert_eq!(entry["route"], "everything");
    assert_eq!(entry["upstream"], "demo");
    assert!(entry["endpoint"]
        .as_str()
        .unwrap()
        .starts_with("127.0.0.1:"));
    assert!(entry["client"].as_str().unwrap().starts_with("127.0.0.1:"));
    assert!(entry["duration_ms"].as_f64().unwrap() >= 0.0);
    assert!(entry["time"].as_str().unwrap().ends_with('Z'));

    // The writer sleeps once the buffer is written out; a later request wakes it again.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let later = client::http1()
        .get(proxy.url("/later"))
        .header("x-request-id", "log-me-later")
        .send()
        .await
        .unwrap();
    assert_eq!(later.status(), 200);
    proxy
        .wait_for_stdout("log-me-later", Duration::from_secs(10))
        .await;
}

/// Both runtime modes serve concurrent HTTP/1.1 and h2c requests on two workers: one shared
/// work-stealing runtime (the default) and a runtime per worker.
#[tokio::test]
async fn both_runtime_modes_serve_concurrent_requests_on_two_workers() {
    for stealing in [false, true] {
        let proxy = start_proxy(&format!(
            r#"
listeners: [{{address: "{{{{listen}}}}"}}]
workers: 2
work_stealing: {stealing}
upstreams: {{demo: {{builtin: echo}}}}
routes: [{{upstream: demo}}]
"#
        ))
        .await;
        let (http1, h2c) = (client::http1(), client::h2c());
        let requests = (0..40).map(|i| {
            let client = if i % 2 == 0 { &http1 } else { &h2c };
            client.get(proxy.url(&format!("/n/{i}"))).send()
        });
        let statuses: Vec<u16> = futures_util::future::join_all(requests)
            .await
            .into_iter()
            .map(|r| r.map_or(0, |r| r.status().as_u16()))
            .collect();
        assert!(
            statuses.iter().all(|s| *s == 200),
            "work_stealing: {stealing}: {statuses:?}"
        );
    }
}

async fn in_flight_request_survives(signal: &str) {
    let slow = Origin::start("slow").await;
    let mut proxy = start_proxy(&config(
        r#"
listeners: [{address: "{{listen}}"}]
shutdown_timeout: 20s
upstreams: {slow: {endpoints: ["$slow"]}}
routes: [{upstream: slow}]
"#,
        &[("slow", slow.addr().to_string())],
    ))
    .await;
    let url = proxy.url("/delay/1500");
    let in_flight = tokio::spawn(async move { client::http1().get(url).send().await });
    // Let the request reach the origin before signalling.
    eventually("the request at the origin", || async {
        (slow.hits() > 0).then_some(())
    })
    .await;
    let signalled = Instant::now();
    let status = proxy.signal_and_wait(signal, Duration::from_secs(15)).await;
    assert!(status.success(), "exit status after SIG{signal}: {status}");
    // It waited for the request, but not for the whole 20 s allowance.
    assert!(
        signalled.elapsed() < Duration::from_secs(10),
        "took {:?}",
        signalled.elapsed()
    );
    let response = in_flight
        .await
        .unwrap()
        .expect("the in-flight request completed");
    assert_eq!(response.status(), 200);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["origin"], "slow");
}

#[tokio::test]
async fn sigterm_lets_in_flight_requests_finish() {
    in_flight_request_survives("TERM").await;
}

#[tokio::test]
async fn sigint_lets_in_flight_requests_finish() {
    in_flight_request_survives("INT").await;
}
