//! Live reloads, end to end: the configuration file rewritten under a running proxy, then
//! `SIGHUP` or `POST /config/reload`; what changes, what is refused, and requests that span
//! a reload.

use edgeward_testkit::{client, filters, Origin, Proxy};
use sha2::{Digest, Sha256};

use crate::support::{
    admin_json, config, eventually, metrics_showing, start_proxy, use_built_binary,
};

/// Routes `/{name}/...` to the origin `$name`; `names` picks which of `a`, `b`, `c` exist.
fn routing(names: &[&str], vars: &[(&str, String)]) -> String {
    let upstreams: String = names
        .iter()
        .map(|n| format!("  {n}: {{endpoints: [\"${n}\"]}}\n"))
        .collect();
    let routes: String = names
        .iter()
        .map(|n| format!("  - {{name: {n}, match: {{path_prefix: /{n}/}}, upstream: {n}}}\n"))
        .collect();
    config(
        &format!(
            "listeners: [{{address: \"{{{{listen}}}}\"}}]\nadmin: {{address: \"{{{{admin}}}}\"}}\nupstreams:\n{upstreams}routes:\n{routes}"
        ),
        vars,
    )
}

async fn status_of(client: &edgeward_testkit::reqwest::Client, proxy: &Proxy, path: &str) -> u16 {
    client
        .get(proxy.url(path))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// `POST /config/reload` on the admin listener: (status, JSON answer).
async fn reload(proxy: &Proxy) -> (u16, serde_json::Value) {
    let url = format!("http://{}/config/reload", proxy.placeholder_addr("admin"));
    let response = client::http1().post(url).send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

#[tokio::test]
async fn sighup_and_the_admin_endpoint_swap_the_routes_of_a_running_proxy() {
    let (a, b, c) = (
        Origin::start("a").await,
        Origin::start("b").await,
        Origin::start("c").await,
    );
    let vars = [
        ("a", a.addr().to_string()),
        ("b", b.addr().to_string()),
        ("c", c.addr().to_string()),
    ];
    let proxy = start_proxy(&routing(&["a"], &vars)).await;
    // One keep-alive connection throughout: reloads do not touch client connections.
    let http = client::http1();
    assert_eq!(status_of(&http, &proxy, "/a/x").await, 200);
    assert_eq!(status_of(&http, &proxy, "/b/x").await, 404);

    proxy.rewrite_config(&routing(&["b"], &vars));
    proxy.signal("HUP");
    eventually("the SIGHUP reload", || async {
        (status_of(&http, &proxy, "/b/x").await == 200).then_some(())
    })
    .await;
    assert_eq!(status_of(&http, &proxy, "/a/x").await, 404);
    assert_eq!(b.hits(), 1);

    let third = routing(&["a", "c"], &vars);
    proxy.rewrite_config(&third);
    let (status, answer) = reload(&proxy).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["generation"], 3, "{answer}");
    // The answer comes once the new generation serves.
    assert_eq!(status_of(&http, &proxy, "/c/x").await, 200);
    assert_eq!(status_of(&http, &proxy, "/a/x").await, 200);

    let (status, in_use) = admin_json(&proxy, "/config").await;
    assert_eq!(status, 200);
    assert_eq!(in_use["generation"], 3);
    let routes: Vec<&str> = in_use["config"]["routes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|route| route["name"].as_str().unwrap())
        .collect();
    assert_eq!(routes, ["a", "c"], "{in_use}");
    let written = third
        .replace("{{listen}}", &proxy.addr().to_string())
        .replace("{{admin}}", &proxy.placeholder_addr("admin").to_string());
    assert_eq!(
        in_use["source_sha256"],
        hex::encode(Sha256::digest(written.as_bytes())),
        "{in_use}"
    );
    metrics_showing(
        &proxy,
        &[
            (r#"edgeward_config_reloads_total{result="ok"}"#, 2.0),
            ("edgeward_config_generation", 3.0),
        ],
    )
    .await;
}

#[tokio::test]
async fn a_configuration_that_fails_anywhere_changes_nothing() {
    let a = Origin::start("a").await;
    let vars = [("a", a.addr().to_string())];
    let good = routing(&["a"], &vars);
    let proxy = start_proxy(&good).await;

    // Invalid: a route to an upstream that does not exist.
    proxy.rewrite_config(&good.replace("upstream: a}", "upstream: nowhere}"));
    let (status, answer) = reload(&proxy).await;
    assert_eq!(status, 422, "{answer}");
    assert_eq!(answer["reloaded"], false);
    assert_eq!(answer["generation"], 1);
    let problems = answer["problems"].to_string();
    assert!(
        problems.contains("edgeward.yaml:6:") && problems.contains("nowhere"),
        "{answer}"
    );

    // Valid, but a filter refuses its configuration when it starts.
    let failing = format!(
        "{good}filters:\n  broken: {{module: {}}}\n",
        filters::CONFIGURE_FAILS
    )
    .replace("upstream: a}", "upstream: a, filters: [broken]}");
    proxy.rewrite_config(&failing);
    let (status, answer) = reload(&proxy).await;
    assert_eq!(status, 422, "{answer}");
    assert!(
        answer["problems"].to_string().contains("on_configure"),
        "{answer}"
    );

    // Valid, but it moves the listener to an address another socket holds: a new process
    // could not open it, so none is started.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let moved = good.replace("{{listen}}", &taken.local_addr().unwrap().to_string());
    proxy.rewrite_config(&moved);
    let (status, answer) = reload(&proxy).await;
    assert_eq!(status, 422, "{answer}");
    assert!(
        answer["problems"]
            .to_string()
            .contains("which cannot be opened"),
        "{answer}"
    );

    // The first configuration serves throughout.
    assert_eq!(status_of(&client::http1(), &proxy, "/a/x").await, 200);
    let (_, in_use) = admin_json(&proxy, "/config").await;
    assert_eq!(in_use["generation"], 1);
    metrics_showing(
        &proxy,
        &[
            (r#"edgeward_config_reloads_total{result="error"}"#, 3.0),
            ("edgeward_config_generation", 1.0),
        ],
    )
    .await;
}

#[tokio::test]
async fn a_request_in_flight_finishes_on_the_configuration_it_started_with() {
    let (a, b) = (Origin::start("a").await, Origin::start("b").await);
    let every_path_to = |name: &str| {
        config(
            &format!(
                "listeners: [{{address: \"{{{{listen}}}}\"}}]\nadmin: {{address: \"{{{{admin}}}}\"}}\nupstreams: {{u: {{endpoints: [\"${name}\"]}}}}\nroutes: [{{upstream: u}}]\n"
            ),
            &[("a", a.addr().to_string()), ("b", b.addr().to_string())],
        )
    };
    let proxy = start_proxy(&every_path_to("a")).await;
    // The origin sends its head, then its body after a pause: the reload lands in between.
    let slow = client::http1()
        .get(proxy.url("/trickle/200000"))
        .send()
        .await
        .unwrap();
    assert_eq!(slow.status(), 200);
    proxy.rewrite_config(&every_path_to("b"));
    let (status, answer) = reload(&proxy).await;
    assert_eq!(status, 200, "{answer}");
    let fresh: serde_json::Value = client::http1()
        .get(proxy.url("/fresh"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(fresh["origin"], "b");
    // The slow response, begun on the old generation, arrives whole from `a`.
    assert_eq!(slow.headers()["x-origin"], "a");
    let body = slow.bytes().await.unwrap();
    assert_eq!(body.len(), 200_000);
}

#[tokio::test]
async fn a_filter_module_replaced_on_disk_is_picked_up_by_a_reload() {
    let origin = Origin::start("origin").await;
    let with_filter = |filter_config: &str| {
        config(
            &format!(
                "listeners: [{{address: \"{{{{listen}}}}\"}}]\nadmin: {{address: \"{{{{admin}}}}\"}}\nupstreams: {{u: {{endpoints: [\"$origin\"]}}}}\nfilters:\n  edit: {{module: filter.wasm, config: {filter_config}}}\nroutes: [{{upstream: u, filters: [edit]}}]\n"
            ),
            &[("origin", origin.addr().to_string())],
        )
    };
    let rewriter = std::fs::read(filters::HEADER_REWRITER).unwrap();
    let responder = std::fs::read(filters::LOCAL_RESPONDER).unwrap();
    crate::support::use_built_binary();
    let proxy = Proxy::builder(&with_filter(
        "{name: v1, response: {set: {x-version: \"1\"}}}",
    ))
    .file("filter.wasm", rewriter)
    .start()
    .await;
    let response = client::http1().get(proxy.url("/x")).send().await.unwrap();
    assert_eq!(response.headers()["x-version"], "1");

    proxy.write_file("filter.wasm", responder);
    proxy.rewrite_config(&with_filter(
        "{phase: request_headers, status: 418, body: v2}",
    ));
    proxy.signal("HUP");
    eventually("the new module", || async {
        let response = client::http1().get(proxy.url("/x")).send().await.unwrap();
        (response.status() == 418).then_some(())
    })
    .await;
    // The new module answers by itself: nothing more reaches the origin.
    let hits = origin.hits();
    let response = client::http1().get(proxy.url("/y")).send().await.unwrap();
    assert_eq!(response.status(), 418);
    assert_eq!(response.text().await.unwrap(), "v2");
    assert_eq!(origin.hits(), hits);
}

#[tokio::test]
async fn reloads_are_refused_to_cross_site_browsers() {
    let a = Origin::start("a").await;
    let proxy = start_proxy(&routing(&["a"], &[("a", a.addr().to_string())])).await;
    let url = format!("http://{}/config/reload", proxy.placeholder_addr("admin"));
    let form = client::http1()
        .post(&url)
        .header("content-type", "application/x-www-form-urlencoded")
        .body("x=1")
        .send()
        .await
        .unwrap();
    assert_eq!(form.status(), 415);
    let cross_site = client::http1()
        .post(&url)
        .header("origin", "http://evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(cross_site.status(), 403);
    let get = client::http1().get(&url).send().await.unwrap();
    assert_eq!(get.status(), 405);
    let (_, in_use) = admin_json(&proxy, "/config").await;
    assert_eq!(in_use["generation"], 1);
}

#[tokio::test]
async fn retired_generations_are_freed_once_their_requests_end() {
    let origin = Origin::start("origin").await;
    let yaml = config(
        "listeners: [{address: \"{{listen}}\"}]\nadmin: {address: \"{{admin}}\"}\nupstreams:\n  u: {endpoints: [\"$origin\"], health_check: {path: /healthz, interval: 100ms}}\nfilters:\n  edit: {module: $rewriter, config: {name: e, response: {set: {x-edit: \"1\"}}}}\nroutes: [{upstream: u, filters: [edit]}]\n",
        &[
            ("origin", origin.addr().to_string()),
            ("rewriter", filters::HEADER_REWRITER.to_string()),
        ],
    );
    let proxy = start_proxy(&yaml).await;
    let threads = |name: &str| {
        proxy
            .thread_names()
            .iter()
            .filter(|thread| thread.as_str() == name)
            .count()
    };
    assert_eq!((threads("wasm-reaper"), threads("wasm-epoch")), (1, 1));
    for generation in 2..=6 {
        let (status, answer) = reload(&proxy).await;
        assert_eq!(
            (status, answer["generation"].as_u64()),
            (200, Some(generation))
        );
        let response = client::http1().get(proxy.url("/x")).send().await.unwrap();
        assert_eq!(response.headers()["x-edit"], "1");
    }
    // Each generation has its own filter threads; the retired ones end with their generation.
    eventually("retired generations' threads to end", || async {
        (threads("wasm-reaper") == 1 && threads("wasm-epoch") == 1).then_some(())
    })
    .await;
    // Health checks run for the serving generation only: a few per interval, not six times
    // as many.
    let before = origin.requests() - origin.hits();
    tokio::time::sleep(std::time::Duration::from_millis(1000)).await;
    let checks = origin.requests() - origin.hits() - before;
    assert!(
        checks <= 15,
        "{checks} health checks in 1 s at one per 100 ms"
    );
}

#[tokio::test]
async fn run_watch_reloads_when_a_module_or_the_configuration_changes() {
    let (a, b) = (Origin::start("a").await, Origin::start("b").await);
    let every_path_to = |name: &str| {
        config(
            &format!(
                "listeners: [{{address: \"{{{{listen}}}}\"}}]\nadmin: {{address: \"{{{{admin}}}}\"}}\nupstreams: {{u: {{endpoints: [\"${name}\"]}}}}\nfilters: {{edit: {{module: filter.wasm}}}}\nroutes: [{{upstream: u, filters: [edit]}}]\n"
            ),
            &[("a", a.addr().to_string()), ("b", b.addr().to_string())],
        )
    };
    crate::support::use_built_binary();
    let proxy = Proxy::builder(&every_path_to("a"))
        .file(
            "filter.wasm",
            std::fs::read(filters::HEADER_REWRITER).unwrap(),
        )
        .arg("--watch")
        .start()
        .await;
    let get = || async {
        let response = client::http1().get(proxy.url("/x")).send().await.unwrap();
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .map(|v| v.to_str().unwrap_or_default().to_string())
        };
        (header("x-chain"), header("x-count"), header("x-origin"))
    };
    assert_eq!(
        get().await,
        (Some("header_rewriter".into()), None, Some("a".into()))
    );

    // Only the module changes: the same configuration, another filter in the file.
    proxy.write_file("filter.wasm", std::fs::read(filters::COUNTER).unwrap());
    eventually("the rebuilt module", || async {
        let (chain, count, _) = get().await;
        (chain.is_none() && count.is_some()).then_some(())
    })
    .await;

    // A broken configuration is reported once and not retried until it changes again.
    proxy.rewrite_config("listeners: [{address: \"{{listen}}\"}]\nroutes: []\n");
    metrics_showing(
        &proxy,
        &[(r#"edgeward_config_reloads_total{result="error"}"#, 1.0)],
    )
    .await;
    proxy.rewrite_config(&every_path_to("b"));
    eventually("the configuration change", || async {
        let (_, _, origin) = get().await;
        (origin.as_deref() == Some("b")).then_some(())
    })
    .await;
    metrics_showing(
        &proxy,
        &[
            (r#"edgeward_config_reloads_total{result="error"}"#, 1.0),
            (r#"edgeward_config_reloads_total{result="ok"}"#, 2.0),
        ],
    )
    .await;
}

#[tokio::test]
async fn with_an_admin_token_reloads_and_purges_need_it() {
    let a = Origin::start("a").await;
    let yaml = routing(&["a"], &[("a", a.addr().to_string())]).replace(
        "admin: {address: \"{{admin}}\"}",
        "admin: {address: \"{{admin}}\", token_file: admin.token}\ncache: {}",
    );
    crate::support::use_built_binary();
    let proxy = Proxy::builder(&yaml)
        .file("admin.token", "correct-horse-battery-staple\n")
        .start()
        .await;
    let admin = proxy.placeholder_addr("admin");
    let post = |path: &str, token: Option<&str>| {
        let mut request = client::http1()
            .post(format!("http://{admin}{path}"))
            .header("content-type", "application/json")
            .body(r#"{"surrogate_key": "k"}"#);
        if let Some(token) = token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        request.send()
    };
    for path in ["/config/reload", "/cache/purge"] {
        let missing = post(path, None).await.unwrap();
        assert_eq!(missing.status(), 401, "{path}");
        assert_eq!(missing.headers()["www-authenticate"], "Bearer");
        let wrong = post(path, Some("correct-horse-battery-stapler"))
            .await
            .unwrap();
        assert_eq!(wrong.status(), 401, "{path}");
        let right = post(path, Some("correct-horse-battery-staple"))
            .await
            .unwrap();
        assert_eq!(right.status(), 200, "{path}");
    }
    // Reading needs no token.
    let (status, _) = admin_json(&proxy, "/config").await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn an_unchanged_upstream_keeps_its_endpoints_health_across_a_reload() {
    let (a, b) = (Origin::start("a").await, Origin::start("b").await);
    b.set_healthy(false);
    // One check at start, the next an hour later: only the first check's verdict can count.
    let yaml = |route: &str| {
        config(
            &format!(
                "listeners: [{{address: \"{{{{listen}}}}\"}}]\nadmin: {{address: \"{{{{admin}}}}\"}}\nupstreams:\n  pool: {{endpoints: [\"$a\", \"$b\"], retries: 0, health_check: {{path: /healthz, interval: 1h}}}}\nroutes: [{{name: {route}, upstream: pool}}]\n"
            ),
            &[("a", a.addr().to_string()), ("b", b.addr().to_string())],
        )
    };
    let proxy = start_proxy(&yaml("first")).await;
    let origins_answering = || async {
        let mut seen = Vec::new();
        for _ in 0..6 {
            let response = client::http1().get(proxy.url("/x")).send().await.unwrap();
            seen.push(response.headers()["x-origin"].to_str().unwrap().to_string());
        }
        seen
    };
    eventually("b out of rotation", || async {
        origins_answering()
            .await
            .iter()
            .all(|o| o == "a")
            .then_some(())
    })
    .await;
    // b recovers, but no check will see it for an hour.
    let b_hits = b.hits();
    b.set_healthy(true);
    proxy.rewrite_config(&yaml("second"));
    let (status, answer) = reload(&proxy).await;
    assert_eq!(status, 200, "{answer}");
    // A fresh upstream would start with both healthy and check b at once; the kept one still
    // knows b as unhealthy.
    assert!(origins_answering().await.iter().all(|o| o == "a"));
    assert_eq!(b.hits(), b_hits);
}

#[tokio::test]
async fn a_request_paused_by_a_filter_resumes_on_its_generation_after_a_reload() {
    let (a, b) = (Origin::start("a").await, Origin::start("b").await);
    let vars = [
        ("a", a.addr().to_string()),
        ("b", b.addr().to_string()),
        ("pauser", filters::PAUSER.to_string()),
    ];
    let paused = config(
        "listeners: [{address: \"{{listen}}\"}]\nadmin: {address: \"{{admin}}\"}\nupstreams: {u: {endpoints: [\"$a\"]}}\nfilters: {hold: {module: $pauser, config: {tick_ms: 100, resume_after_ticks: 30}}}\nroutes: [{upstream: u, filters: [hold]}]\n",
        &vars,
    );
    let plain = config(
        "listeners: [{address: \"{{listen}}\"}]\nadmin: {address: \"{{admin}}\"}\nupstreams: {u: {endpoints: [\"$b\"]}}\nroutes: [{upstream: u}]\n",
        &vars,
    );
    let proxy = start_proxy(&paused).await;
    let held = tokio::spawn(client::http1().get(proxy.url("/held")).send());
    metrics_showing(&proxy, &[("edgeward_requests_in_flight", 1.0)]).await;
    proxy.rewrite_config(&plain);
    let (status, answer) = reload(&proxy).await;
    assert_eq!(status, 200, "{answer}");
    // Held for 3 s: still paused when the reload is done.
    assert_eq!(a.hits(), 0);
    let fresh = client::http1()
        .get(proxy.url("/fresh"))
        .send()
        .await
        .unwrap();
    assert_eq!(fresh.headers()["x-origin"], "b");
    assert!(fresh.headers().get("x-resumed-after-ticks").is_none());
    // The old generation's ticks resume the held request, which goes to the old upstream.
    let held = held.await.unwrap().unwrap();
    assert_eq!(held.status(), 200);
    assert_eq!(held.headers()["x-origin"], "a");
    assert_eq!(held.headers()["x-resumed-after-ticks"], "30");
    assert_eq!(a.last_request_headers()["x-paused"], "1");
}

#[tokio::test]
async fn filters_root_contexts_end_when_a_reload_retires_them_and_at_shutdown() {
    let origin = Origin::start("origin").await;
    let yaml = |route: &str| {
        config(
            &format!(
                "listeners: [{{address: \"{{{{listen}}}}\"}}]\nadmin: {{address: \"{{{{admin}}}}\"}}\nworkers: 1\nupstreams: {{u: {{endpoints: [\"$origin\"]}}}}\nfilters: {{count: {{module: $counter}}}}\nroutes: [{{name: {route}, upstream: u, filters: [count]}}]\n"
            ),
            &[
                ("origin", origin.addr().to_string()),
                ("counter", filters::COUNTER.to_string()),
            ],
        )
    };
    let mut proxy = start_proxy(&yaml("first")).await;
    for _ in 0..2 {
        let response = client::http1().get(proxy.url("/x")).send().await.unwrap();
        assert_eq!(response.status(), 200);
    }
    proxy.rewrite_config(&yaml("second"));
    let (status, answer) = reload(&proxy).await;
    assert_eq!(status, 200, "{answer}");
    // The first generation's one shared instance saw both requests.
    proxy
        .wait_for_stderr(
            "counter: root done after 2 requests",
            std::time::Duration::from_secs(30),
        )
        .await;
    let response = client::http1().get(proxy.url("/x")).send().await.unwrap();
    assert_eq!(response.headers()["x-count"], "1");
    let exit = proxy
        .signal_and_wait("TERM", std::time::Duration::from_secs(30))
        .await;
    assert!(exit.success(), "{exit:?}");
    assert!(proxy
        .stderr_lines()
        .iter()
        .any(|line| line.contains("counter: root done after 1 requests")));
}

/// The new process of `run --upgrade`, killed when the test ends.
struct Successor(std::process::Child);

impl Drop for Successor {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn run_upgrade_takes_the_listeners_over_without_refusing_a_connection() {
    let origin = Origin::start("origin").await;
    let yaml = config(
        "listeners: [{address: \"{{listen}}\"}]\nadmin: {address: \"{{admin}}\"}\nshutdown_timeout: 5s\ncache: {disk: {path: cache-disk, size: 16MiB}}\nupstreams: {u: {endpoints: [\"$origin\"]}}\nroutes: [{upstream: u, cache: {enabled: true}}]\n",
        &[("origin", origin.addr().to_string())],
    );
    let mut old = start_proxy(&yaml).await;
    let cached = "/cache/kept?h=Cache-Control:max-age=600";
    let fetch = |path: String| async move {
        // A connection per request: each one is accepted by whichever process listens.
        client::http1_connection_per_request()
            .get(path)
            .send()
            .await
    };
    for _ in 0..2 {
        let response = fetch(old.url(cached)).await.unwrap();
        assert_eq!(response.status(), 200);
    }
    assert_eq!(origin.hits_for("/cache/kept"), 1);
    // A keep-alive connection opened before the hand-over.
    let kept_alive = client::http1();
    assert_eq!(
        kept_alive.get(old.url("/x")).send().await.unwrap().status(),
        200
    );

    // Requests all through the hand-over, until the new process has served.
    let url = old.url("/during");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = tokio::spawn({
        let stop = stop.clone();
        async move {
            let (mut served, mut failed) = (0, Vec::new());
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                match fetch(url.clone()).await {
                    Ok(response) if response.status() == 200 => served += 1,
                    Ok(response) => failed.push(response.status().to_string()),
                    Err(e) => failed.push(e.to_string()),
                }
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            (served, failed)
        }
    });
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let successor = Successor(
        std::process::Command::new(env!("CARGO_BIN_EXE_edgeward"))
            .args(["run", "--upgrade", "--config"])
            .arg(old.dir().join("edgeward.yaml"))
            .current_dir(old.dir())
            .env("EDGEWARD_RUNTIME_DIR", old.dir())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    // While it hands over, the old process answers on its open keep-alive connections with
    // `Connection: close`, so that clients move to a new connection between requests.
    old.wait_for_stderr(
        "handing the listening sockets",
        std::time::Duration::from_secs(60),
    )
    .await;
    let answer = kept_alive.get(old.url("/x")).send().await.unwrap();
    assert_eq!(answer.status(), 200);
    assert_eq!(
        answer
            .headers()
            .get("connection")
            .map(|v| v.to_str().unwrap()),
        Some("close")
    );
    // The old process hands over, drains and exits by itself.
    let exit = old
        .wait_for_exit(std::time::Duration::from_secs(60), "the hand-over")
        .await;
    assert!(exit.success(), "{exit:?}");
    // The new one serves, from the disk tier the old one left.
    let response = eventually("the new process serving", || async {
        fetch(old.url(cached)).await.ok()
    })
    .await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        origin.hits_for("/cache/kept"),
        1,
        "served from the kept disk tier"
    );
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (served, failed) = load.await.unwrap();
    assert!(served > 0);
    assert!(failed.is_empty(), "{} served, failed: {failed:?}", served);
    drop(successor);
}

#[test]
fn run_upgrade_without_a_running_edgeward_says_so() {
    crate::support::use_built_binary();
    let output = edgeward_testkit::run_edgeward(
        &["run", "--upgrade", "--config", "edgeward.yaml"],
        &[(
            "edgeward.yaml",
            "listeners: [{address: 127.0.0.1:1}]\nupstreams: {u: {builtin: echo}}\nroutes: [{upstream: u}]\n",
        )],
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(stderr.contains("no edgeward runs"), "{stderr}");
    assert!(stderr.contains("start it without --upgrade"), "{stderr}");
}

#[tokio::test]
async fn cached_responses_stay_hits_across_a_reload() {
    let origin = Origin::start("origin").await;
    let yaml = |route: &str| {
        config(
            &format!(
                "listeners: [{{address: \"{{{{listen}}}}\"}}]\nadmin: {{address: \"{{{{admin}}}}\"}}\ncache: {{}}\nupstreams: {{u: {{endpoints: [\"$origin\"]}}}}\nroutes: [{{name: {route}, upstream: u, cache: {{enabled: true}}}}]\n"
            ),
            &[("origin", origin.addr().to_string())],
        )
    };
    let proxy = start_proxy(&yaml("before")).await;
    let path = "/cache/kept?h=Cache-Control:max-age=600";
    let cache_status = || async {
        let response = client::http1().get(proxy.url(path)).send().await.unwrap();
        assert_eq!(response.status(), 200);
        response.headers()["cache-status"]
            .to_str()
            .unwrap()
            .to_string()
    };
    assert!(cache_status().await.contains("fwd=miss"));
    assert!(cache_status().await.contains("hit"));
    proxy.rewrite_config(&yaml("after"));
    let (status, answer) = reload(&proxy).await;
    assert_eq!(status, 200, "{answer}");
    let after = cache_status().await;
    assert!(after.contains("hit"), "{after}");
    assert_eq!(origin.hits_for("/cache/kept"), 1);
}

/// A successor process started by edgeward itself (not the testkit's), ended with the test.
struct KillOnDrop(u32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = std::process::Command::new("kill")
            .arg(self.0.to_string())
            .status();
    }
}

/// The next datagram on `socket`, within a minute.
async fn notification(socket: &tokio::net::UnixDatagram) -> String {
    let mut buf = vec![0; 1024];
    let n = tokio::time::timeout(std::time::Duration::from_secs(60), socket.recv(&mut buf))
        .await
        .expect("no notification within a minute")
        .unwrap();
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[tokio::test]
async fn sigusr2_upgrades_from_inside_the_service_and_tells_the_service_manager() {
    let origin = Origin::start("origin").await;
    let yaml = config(
        "listeners: [{address: \"{{listen}}\"}]\nshutdown_timeout: 5s\nupstreams: {u: {endpoints: [\"$origin\"]}}\nroutes: [{upstream: u}]\n",
        &[("origin", origin.addr().to_string())],
    );
    // systemd's side of `Type=notify`: a datagram socket named in NOTIFY_SOCKET.
    let sockets = tempfile::tempdir().unwrap();
    let path = sockets.path().join("notify.sock");
    let manager = tokio::net::UnixDatagram::bind(&path).unwrap();
    use_built_binary();
    let mut old = Proxy::builder(&yaml)
        .env("NOTIFY_SOCKET", path.to_str().unwrap())
        .start()
        .await;
    assert_eq!(
        notification(&manager).await,
        format!("READY=1\nMAINPID={}", old.pid())
    );
    old.signal("USR2");
    // The successor says it is the service's process now; the old one, handing over, does
    // not say it stops.
    let said = notification(&manager).await;
    let new_pid: u32 = said
        .strip_prefix("READY=1\nMAINPID=")
        .and_then(|pid| pid.parse().ok())
        .unwrap_or_else(|| panic!("{said:?}"));
    assert_ne!(new_pid, old.pid());
    let _successor = KillOnDrop(new_pid);
    let exit = old
        .wait_for_exit(std::time::Duration::from_secs(60), "the hand-over")
        .await;
    assert!(exit.success(), "{exit:?}");
    let response = eventually("the new process serving", || async {
        client::http1_connection_per_request()
            .get(old.url("/after"))
            .send()
            .await
            .ok()
    })
    .await;
    assert_eq!(response.status(), 200);
    // A real stop says so.
    std::process::Command::new("kill")
        .arg(new_pid.to_string())
        .status()
        .unwrap();
    assert_eq!(notification(&manager).await, "STOPPING=1");
}

#[tokio::test]
async fn a_reload_that_changes_listeners_hands_over_to_a_process_that_opens_and_closes_them() {
    let origin = Origin::start("origin").await;
    let yaml = config(
        "listeners: [{address: \"{{listen}}\"}, {address: \"{{second}}\"}]\nadmin: {address: \"{{admin}}\"}\nshutdown_timeout: 5s\nupstreams: {u: {endpoints: [\"$origin\"]}}\nroutes: [{upstream: u}]\n",
        &[("origin", origin.addr().to_string())],
    );
    let mut old = start_proxy(&yaml).await;
    let file = old.dir().join("edgeward.yaml");
    let written = std::fs::read_to_string(&file).unwrap();
    let (first, second) = (old.addr(), old.placeholder_addr("second"));
    // The second listener becomes `address`.
    let listening_on = |address: std::net::SocketAddr| {
        let second = format!("{{address: \"{second}\"}}");
        assert!(written.contains(&second), "{written}");
        written.replace(&second, &format!("{{address: \"{address}\"}}"))
    };

    // A listener on a port another socket holds: the reload fails and changes nothing.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_address = taken.local_addr().unwrap();
    std::fs::write(&file, listening_on(taken_address)).unwrap();
    let (status, answer) = reload(&old).await;
    assert_eq!(status, 422, "{answer}");
    assert!(
        answer["problems"][0].as_str().unwrap().contains(&format!(
            "listens on {taken_address}, which cannot be opened"
        )),
        "{answer}"
    );
    let fetch = |url: String| async move {
        client::http1_connection_per_request()
            .get(url)
            .send()
            .await
            .ok()
            .map(|response| response.status().as_u16())
    };
    for address in [first, second] {
        assert_eq!(fetch(format!("http://{address}/still")).await, Some(200));
    }

    // A free one: the configuration goes to a new process, which keeps the first listener,
    // opens the new one and closes the second; the old process finishes and exits.
    let free = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    std::fs::write(&file, listening_on(free)).unwrap();
    let (status, answer) = reload(&old).await;
    assert_eq!(status, 200, "{answer}");
    let pid = answer["handed_over_to"].as_u64().unwrap();
    let _successor = KillOnDrop(u32::try_from(pid).unwrap());
    let exit = old
        .wait_for_exit(std::time::Duration::from_secs(60), "the hand-over")
        .await;
    assert!(exit.success(), "{exit:?}");
    for address in [first, free] {
        let url = format!("http://{address}/served");
        let status = eventually("the new process serving", || fetch(url.clone())).await;
        assert_eq!(status, 200, "{url}");
    }
    assert!(
        std::net::TcpStream::connect(second).is_err(),
        "the listener the file no longer names is closed"
    );
}
