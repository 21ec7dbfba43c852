//! Host services for filters, through the real proxy: HTTP callouts (to allowed upstreams
//! only, with timeouts, fan-out, from root contexts), ticks, shared data with CAS, queues,
//! filter metrics, and the admin listener.

use std::time::Duration;

use edgeward_testkit::{client, filters, DeadEndpoint, Origin, Proxy};

use crate::support::{config, eventually, metrics_showing, start_proxy, wait_for_log};

async fn get(proxy: &Proxy, path: &str, headers: &[(&str, &str)]) -> reqwest::Response {
    let mut request = client::http1().get(proxy.url(path));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.send().await.unwrap()
}

fn header(response: &reqwest::Response, name: &str) -> Option<String> {
    response
        .headers()
        .get(name)
        .map(|v| v.to_str().unwrap().to_string())
}

use edgeward_testkit::reqwest;

#[tokio::test]
async fn a_callout_answer_becomes_request_and_response_headers() {
    let origin = Origin::start("origin").await;
    let auth = Origin::start("auth").await;
    let proxy = start_proxy(&config(
        r#"
listeners: [{address: "{{listen}}"}]
upstreams:
  origin: {endpoints: ["$origin"]}
  auth: {endpoints: ["$auth"]}
filters:
  check: {module: $callout, callouts: [auth], config: {upstream: auth, path: /status/200}}
routes: [{upstream: origin, filters: [check]}]
"#,
        &[
            ("origin", origin.addr().to_string()),
            ("auth", auth.addr().to_string()),
            ("callout", filters::CALLOUT.to_string()),
        ],
    ))
    .await;
    let response = get(&proxy, "/protected", &[]).await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        header(&response, "x-callout-status").as_deref(),
        Some("200")
    );
    assert_eq!(
        header(&response, "x-callout-origin").as_deref(),
        Some("auth")
    );
    // Set on the paused request from on_http_call_response, before it went upstream.
    let seen = origin.last_request_headers();
    assert_eq!(
        seen.get("x-callout-origin").map(String::as_str),
        Some("auth")
    );
    assert_eq!(auth.hits(), 1);
    assert_eq!(
        auth.last_request_headers()
            .get("x-from-filter")
            .map(String::as_str),
        Some("callout")
    );
}

#[tokio::test]
async fn callouts_fail_cleanly_forbidden_refused_and_timed_out() {
    let origin = Origin::start("origin").await;
    let dead = DeadEndpoint::new();
    let slow = Origin::start("slow").await;
    let template = r#"
listeners: [{address: "{{listen}}"}]
upstreams:
  origin: {endpoints: ["$origin"]}
  secret: {endpoints: ["$origin"]}
  dead: {endpoints: ["$dead"], retries: 0}
  slow: {endpoints: ["$slow"]}
filters:
  forbidden: {module: $callout, callouts: [dead], config: {upstream: secret}}
  refused: {module: $callout, callouts: [dead], config: {upstream: dead}}
  late: {module: $callout, callouts: [slow], config: {upstream: slow, mode: timeout, path: /delay/3000, timeout_ms: 200}}
routes:
  - {match: {path_prefix: /forbidden}, upstream: origin, filters: [forbidden]}
  - {match: {path_prefix: /refused}, upstream: origin, filters: [refused]}
  - {match: {path_prefix: /late}, upstream: origin, filters: [late]}
"#;
    let proxy = start_proxy(&config(
        template,
        &[
            ("origin", origin.addr().to_string()),
            ("slow", slow.addr().to_string()),
            ("dead", dead.addr().to_string()),
            ("callout", filters::CALLOUT.to_string()),
        ],
    ))
    .await;

    // Not in the filter's `callouts`: refused at once with BAD_ARGUMENT, and logged.
    let response = get(&proxy, "/forbidden", &[]).await;
    assert_eq!(response.status(), 500);
    assert_eq!(
        header(&response, "x-callout-error").as_deref(),
        Some("BadArgument")
    );
    wait_for_log(&proxy, "filter `forbidden` may not call upstream `secret`").await;

    // Allowed but down, or too slow: an answer with no headers, and a log line with the reason.
    for (path, reason) in [
        ("/refused", "failed (refused)"),
        ("/late", "failed (timeout)"),
    ] {
        let started = std::time::Instant::now();
        let response = get(&proxy, path, &[]).await;
        assert_eq!(response.status(), 503, "{path}");
        assert_eq!(
            header(&response, "x-callout").as_deref(),
            Some("failed"),
            "{path}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{path} took {:?}",
            started.elapsed()
        );
        wait_for_log(&proxy, reason).await;
    }
    assert_eq!(origin.hits(), 0, "no request reached the origin");
}

#[tokio::test]
async fn three_callouts_in_flight_at_once_merge_into_one_answer() {
    let origin = Origin::start("origin").await;
    let backends = [
        Origin::start("a").await,
        Origin::start("b").await,
        Origin::start("c").await,
    ];
    let proxy = start_proxy(&config(
        r#"
listeners: [{address: "{{listen}}"}]
upstreams:
  origin: {endpoints: ["$origin"]}
  a: {endpoints: ["$a"]}
  b: {endpoints: ["$b"]}
  c: {endpoints: ["$c"]}
filters:
  compose: {module: $callout, callouts: [a, b, c], config: {mode: fanout, fanout: [a, b, c], path: /delay/1000}}
routes: [{upstream: origin, filters: [compose]}]
"#,
        &[
            ("origin", origin.addr().to_string()),
            ("a", backends[0].addr().to_string()),
            ("b", backends[1].addr().to_string()),
            ("c", backends[2].addr().to_string()),
            ("callout", filters::CALLOUT.to_string()),
        ],
    ))
    .await;
    let started = std::time::Instant::now();
    let response = get(&proxy, "/composed", &[]).await;
    assert_eq!(response.status(), 200);
    let merged: serde_json::Value = response.json().await.unwrap();
    for name in ["a", "b", "c"] {
        let part: serde_json::Value = serde_json::from_str(merged[name].as_str().unwrap()).unwrap();
        assert_eq!(part["origin"], name);
    }
    // In flight together: three 1 s answers take well under three times that (one after the
    // other they would take 3 s; the bound leaves almost 2 s for a slow, shared machine).
    assert!(
        started.elapsed() < Duration::from_millis(2900),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(origin.hits(), 0);
}

#[tokio::test]
async fn callouts_share_the_upstreams_load_balancing() {
    let origin = Origin::start("origin").await;
    let auth = [Origin::start("auth-1").await, Origin::start("auth-2").await];
    let proxy = start_proxy(&config(
        r#"
listeners: [{address: "{{listen}}"}]
upstreams:
  origin: {endpoints: ["$origin"]}
  auth: {endpoints: ["$a1", "$a2"]}
filters:
  check: {module: $callout, callouts: [auth], config: {upstream: auth, path: /status/200}}
routes: [{upstream: origin, filters: [check]}]
"#,
        &[
            ("origin", origin.addr().to_string()),
            ("a1", auth[0].addr().to_string()),
            ("a2", auth[1].addr().to_string()),
            ("callout", filters::CALLOUT.to_string()),
        ],
    ))
    .await;
    let mut answered_by = Vec::new();
    for _ in 0..4 {
        answered_by.push(header(&get(&proxy, "/x", &[]).await, "x-callout-origin").unwrap());
    }
    assert_eq!((auth[0].hits(), auth[1].hits()), (2, 2), "{answered_by:?}");
}

#[tokio::test]
async fn root_contexts_make_callouts_from_on_tick_and_count_in_shared_data() {
    let origin = Origin::start("origin").await;
    let proxy = start_proxy(&config(
        r#"
listeners: [{address: "{{listen}}"}]
upstreams: {origin: {endpoints: ["$origin"]}}
filters:
  poller: {module: $root_callout, callouts: [origin], config: {upstream: origin, path: /status/204, tick_ms: 30}}
  ticks: {module: $tick_counter, config: {tick_ms: 20}}
routes: [{upstream: origin, filters: [poller, ticks]}]
"#,
        &[
            ("origin", origin.addr().to_string()),
            ("root_callout", filters::ROOT_CALLOUT.to_string()),
            ("tick_counter", filters::TICK_COUNTER.to_string()),
        ],
    ))
    .await;
    // What the filters report: (root callouts answered, ticks counted), from shared data.
    let figures = || async {
        let response = get(&proxy, "/status/200", &[]).await;
        assert_eq!(response.status(), 200);
        let count: u64 = header(&response, "x-root-callout-count")?.parse().ok()?;
        let ticks: u64 = header(&response, "x-ticks")?.parse().ok()?;
        let status = header(&response, "x-root-callout-status");
        Some((count, ticks, status))
    };
    let (count, ticks) = eventually("ticks and root callouts", || async {
        let (count, ticks, status) = figures().await?;
        (count >= 3 && ticks >= 5).then(|| {
            assert_eq!(status.as_deref(), Some("204"), "the callouts' answer");
            (count, ticks)
        })
    })
    .await;
    // Every answer counted was a real request to the origin, made from the root context.
    let callouts_seen = origin.hits_for("/status/204") as u64;
    assert!(
        callouts_seen >= count,
        "{count} answers counted, {callouts_seen} callouts at the origin"
    );
    // Ticks and callouts go on by themselves: the figures keep growing.
    eventually("more ticks and root callouts", || async {
        let (later_count, later_ticks, _) = figures().await?;
        (later_count > count && later_ticks > ticks).then_some(())
    })
    .await;
}

#[tokio::test]
async fn shared_data_compare_and_swap_detects_conflicts() {
    let origin = Origin::start("origin").await;
    let proxy = start_proxy(&config(
        r#"
listeners: [{address: "{{listen}}"}]
upstreams: {origin: {endpoints: ["$origin"]}}
filters: {cas: {module: $cas}}
routes: [{upstream: origin, filters: [cas]}]
"#,
        &[
            ("origin", origin.addr().to_string()),
            ("cas", filters::CAS.to_string()),
        ],
    ))
    .await;
    for _ in 0..3 {
        let response = get(&proxy, "/cas", &[]).await;
        assert_eq!(header(&response, "x-cas").as_deref(), Some("ok"));
        assert_eq!(header(&response, "x-cas-value").as_deref(), Some("v2"));
    }
}

#[tokio::test]
async fn a_queue_carries_items_between_two_filters() {
    let origin = Origin::start("origin").await;
    let proxy = start_proxy(&config(
        r#"
listeners: [{address: "{{listen}}"}]
upstreams: {origin: {endpoints: ["$origin"]}}
filters:
  consumer: {module: $consumer, vm_id: queues}
  producer: {module: $producer, vm_id: queues, config: {queue_vm_id: queues}}
routes: [{upstream: origin, filters: [consumer, producer]}]
"#,
        &[
            ("origin", origin.addr().to_string()),
            ("consumer", filters::QUEUE_CONSUMER.to_string()),
            ("producer", filters::QUEUE_PRODUCER.to_string()),
        ],
    ))
    .await;
    for job in ["job-1", "job-2", "job-3"] {
        let response = get(&proxy, "/enqueue", &[("x-job", job)]).await;
        assert_eq!(header(&response, "x-queue").as_deref(), Some("enqueued"));
    }
    eventually("the consumer to receive every job", || async {
        let received = header(&get(&proxy, "/read", &[]).await, "x-received")?;
        let mut items: Vec<&str> = received.split(',').collect();
        items.sort();
        (items == ["job-1", "job-2", "job-3"]).then_some(())
    })
    .await;
}

#[tokio::test]
async fn shared_data_survives_a_crashed_instance() {
    let origin = Origin::start("origin").await;
    let proxy = start_proxy(&config(
        r#"
listeners: [{address: "{{listen}}"}]
workers: 1
upstreams: {origin: {endpoints: ["$origin"]}}
filters: {keep: {module: $survivor}}
routes: [{upstream: origin, filters: [keep]}]
"#,
        &[
            ("origin", origin.addr().to_string()),
            ("survivor", filters::SURVIVOR.to_string()),
        ],
    ))
    .await;
    assert_eq!(get(&proxy, "/store?v=remembered", &[]).await.status(), 200);
    assert_eq!(get(&proxy, "/crash", &[]).await.status(), 500);
    let response = get(&proxy, "/read", &[]).await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        header(&response, "x-survivor").as_deref(),
        Some("remembered")
    );
}

async fn admin_text(proxy: &Proxy, path: &str) -> (u16, String) {
    let url = format!("http://{}{path}", proxy.placeholder_addr("admin"));
    let response = client::http1().get(url).send().await.unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}

#[tokio::test]
async fn filter_metrics_and_proxy_metrics_are_on_the_admin_listener() {
    let origin = Origin::start("origin").await;
    let proxy = start_proxy(&config(
        r#"
listeners: [{address: "{{listen}}"}]
admin: {address: "{{admin}}"}
upstreams: {origin: {endpoints: ["$origin"]}}
filters: {counted: {module: $metrics}}
routes: [{name: web, upstream: origin, filters: [counted]}]
"#,
        &[
            ("origin", origin.addr().to_string()),
            ("metrics", filters::METRICS.to_string()),
        ],
    ))
    .await;
    let mut totals = Vec::new();
    for _ in 0..3 {
        totals.push(header(&get(&proxy, "/status/200", &[]).await, "x-requests-total").unwrap());
    }
    assert_eq!(totals, ["1", "2", "3"]);

    let expected = [
        ("wasmcustom_requests_total{filter=\"counted\"}", 3.0),
        // `proxy_record_metric` of 5 on a counter, three times: added, as in Envoy.
        ("wasmcustom_recorded_total{filter=\"counted\"}", 15.0),
        ("wasmcustom_in_flight{filter=\"counted\"}", 0.0),
        ("wasmcustom_body_size_count{filter=\"counted\"}", 3.0),
        // A tag in the metric's name became a label.
        (
            "wasmcustom_requests_by{filter=\"counted\",method=\"GET\"}",
            3.0,
        ),
        ("edgeward_requests_total{route=\"web\",status=\"200\"}", 3.0),
        (
            "edgeward_request_duration_seconds_count{route=\"web\"}",
            3.0,
        ),
        (
            "edgeward_upstream_latency_seconds_count{upstream=\"origin\"}",
            3.0,
        ),
        (
            "edgeward_filter_calls_total{filter=\"counted\",phase=\"on_http_request_headers\"}",
            3.0,
        ),
        (
            "edgeward_filter_calls_total{filter=\"counted\",phase=\"on_http_response_headers\"}",
            3.0,
        ),
        ("edgeward_requests_in_flight", 0.0),
    ];
    let metrics = metrics_showing(&proxy, &expected).await;
    // Every callback counted (by phase) is timed once.
    let calls = metrics
        .sum("edgeward_filter_calls_total", &[("filter", "counted")])
        .unwrap();
    assert_eq!(
        metrics.value("edgeward_filter_call_duration_seconds_count{filter=\"counted\"}"),
        calls,
        "{}",
        metrics.text()
    );
    let started = metrics.value("edgeward_filter_instances_started_total{filter=\"counted\"}");
    let alive = metrics.value("edgeward_filter_instances{filter=\"counted\"}");
    assert!(
        alive >= 1.0 && alive <= started,
        "{alive} instances alive, {started} started"
    );
    assert_eq!(
        admin_text(&proxy, "/healthz").await,
        (200, "ok\n".to_string())
    );
    let (status, ready) = admin_text(&proxy, "/ready").await;
    assert_eq!(status, 200, "{ready}");
    assert_eq!(admin_text(&proxy, "/nowhere").await.0, 404);
}

#[tokio::test]
async fn failures_are_counted_in_metrics() {
    let origin = Origin::start("origin").await;
    let dead = DeadEndpoint::new();
    let proxy = start_proxy(&config(
        r#"
listeners: [{address: "{{listen}}"}]
admin: {address: "{{admin}}"}
upstreams:
  origin: {endpoints: ["$origin"]}
  dead: {endpoints: ["$dead"], retries: 0}
filters:
  keep: {module: $survivor}
  refused: {module: $callout, callouts: [dead], config: {upstream: dead}}
routes:
  - {match: {path_prefix: /callout}, upstream: origin, filters: [refused]}
  - {match: {path_prefix: /down}, upstream: dead}
  - {upstream: origin, filters: [keep]}
"#,
        &[
            ("origin", origin.addr().to_string()),
            ("dead", dead.addr().to_string()),
            ("survivor", filters::SURVIVOR.to_string()),
            ("callout", filters::CALLOUT.to_string()),
        ],
    ))
    .await;
    assert_eq!(get(&proxy, "/crash", &[]).await.status(), 500);
    assert_eq!(get(&proxy, "/callout", &[]).await.status(), 503);
    assert_eq!(get(&proxy, "/down", &[]).await.status(), 502);
    metrics_showing(
        &proxy,
        &[
            (
                "edgeward_filter_callout_failures_total{filter=\"refused\",reason=\"refused\",upstream=\"dead\"}",
                1.0,
            ),
            ("edgeward_filter_traps_total{filter=\"keep\"}", 1.0),
            (
                "edgeward_filter_callouts_total{filter=\"refused\",upstream=\"dead\"}",
                1.0,
            ),
            (
                "edgeward_upstream_failures_total{reason=\"upstream_unavailable\",upstream=\"dead\"}",
                1.0,
            ),
            ("edgeward_requests_total{route=\"route-1\",status=\"503\"}", 1.0),
            ("edgeward_requests_total{route=\"route-2\",status=\"502\"}", 1.0),
            ("edgeward_requests_total{route=\"route-3\",status=\"500\"}", 1.0),
        ],
    )
    .await;
}
