//! The access log, the workers' threads and event loops, and graceful shutdown on SIGTERM and
//! SIGINT (draining, and its timeout).

use std::os::unix::process::ExitStatusExt;
use std::time::{Duration, Instant};

use edgeward_testkit::{client, Origin};

use crate::support::{admin_json, config, eventually, eventually_explained, start_proxy};

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

/// Starts a proxy with `workers` and `work_stealing: stealing`, has it serve 40 concurrent
/// HTTP/1.1 and h2c requests, and returns what serves them: the names of its threads but the
/// main one (Pingora names the worker threads after the service, `edgeward`) and its open
/// epoll instances (event loops).
async fn serve_and_inspect(workers: usize, stealing: bool) -> (Vec<String>, usize) {
    let proxy = start_proxy(&format!(
        r#"
listeners: [{{address: "{{{{listen}}}}"}}]
workers: {workers}
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
        "workers: {workers}, work_stealing: {stealing}: {statuses:?}"
    );
    (proxy.thread_names(), proxy.event_polls())
}

/// `workers` sets how many threads serve requests, in both runtime modes; `work_stealing:
/// true` has them share one event loop (one tokio runtime), `false` gives each worker an
/// event loop of its own (docs/configuration.md).
#[tokio::test]
async fn workers_and_work_stealing_shape_the_threads_and_event_loops_that_serve() {
    for stealing in [true, false] {
        let (threads_with_one, polls_with_one) = serve_and_inspect(1, stealing).await;
        let (threads_with_three, polls_with_three) = serve_and_inspect(3, stealing).await;
        let workers = |threads: &[String]| threads.iter().filter(|t| *t == "edgeward").count();
        assert_eq!(
            (workers(&threads_with_one), workers(&threads_with_three)),
            (1, 3),
            "worker threads with workers 1 and 3, work_stealing: {stealing}: \
             {threads_with_one:?}, {threads_with_three:?}"
        );
        let (one, three) = (polls_with_one, polls_with_three);
        if stealing {
            assert_eq!(
                three, one,
                "epoll instances: one event loop for every worker"
            );
        } else {
            assert!(
                three > one,
                "epoll instances {one} and {three}: one per worker"
            );
        }
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

#[tokio::test]
async fn draining_refuses_new_connections_and_ends_at_the_shutdown_timeout() {
    let slow = Origin::start("slow").await;
    let mut proxy = start_proxy(&config(
        r#"
listeners: [{address: "{{listen}}"}]
admin: {address: "{{admin}}"}
shutdown_timeout: 5s
upstreams: {slow: {endpoints: ["$slow"], read_timeout: 120s}}
routes: [{upstream: slow}]
"#,
        &[("slow", slow.addr().to_string())],
    ))
    .await;
    // A request that would take a minute.
    let url = proxy.url("/delay/60000");
    let stuck = tokio::spawn(async move { client::http1().get(url).send().await });
    eventually("the request at the origin", || async {
        (slow.hits() > 0).then_some(())
    })
    .await;
    let signalled = Instant::now();
    proxy.signal("TERM");

    // While it drains, new connections are refused, and /ready (still answering, so this is
    // before the exit) says why.
    let addr = proxy.addr();
    eventually_explained("new connections refused", || async {
        match tokio::net::TcpStream::connect(addr).await {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    assert_eq!(
        admin_json(&proxy, "/ready").await,
        (
            503,
            serde_json::json!({"ready": false, "draining": true, "unavailable_filters": []})
        )
    );

    // The request does not finish: edgeward exits at the shutdown timeout all the same.
    let status = proxy
        .wait_for_exit(Duration::from_secs(30), "SIGTERM")
        .await;
    let waited = signalled.elapsed();
    assert!(
        waited >= Duration::from_secs(5),
        "exited {waited:?} after SIGTERM, before its 5 s shutdown_timeout"
    );
    assert_eq!(status.signal(), None, "it exited by itself: {status}");
    let cut = stuck.await.unwrap();
    assert!(
        cut.is_err(),
        "the unfinished request got an answer: {cut:?}"
    );
}
