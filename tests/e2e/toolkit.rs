//! The filter author's tools, as an author uses them: `filter new` makes a project that builds
//! with cargo, passes its own tests and serves through edgeward with no edit.

use std::path::Path;
use std::process::Command;

use edgeward_testkit::{client, filters, run_edgeward, Origin, Proxy};

use crate::support::use_built_binary;

/// Runs cargo (the one building these tests) in `project` with `args`; panics on failure.
fn cargo(project: &Path, args: &[&str]) {
    // --offline: every crate the template needs is one the test filters built already.
    let out = Command::new(env!("CARGO"))
        .args(args)
        .arg("--offline")
        .current_dir(project)
        .env_remove("CARGO_TARGET_DIR")
        .output()
        .unwrap_or_else(|e| panic!("running cargo: {e}"));
    assert!(
        out.status.success(),
        "cargo {args:?} in {}:\n{}",
        project.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A new project's edgeward.yaml is valid as written (its module path included) and serves:
/// only its port changes here, to one free for the test, and its `module` path becomes
/// absolute, as the proxy runs from a folder of its own. The filter `name` greets requests
/// and answers `/forbidden` itself.
async fn serves_as_configured(project: &Path, module: &str, name: &str) {
    let config = project.join("edgeward.yaml");
    let out = run_edgeward(&["validate", "--config", config.to_str().unwrap()], &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let yaml = std::fs::read_to_string(&config)
        .unwrap()
        .replace("127.0.0.1:8080", "{{listen}}")
        .replace(module, project.join(module).to_str().unwrap());
    let proxy = Proxy::start(&yaml).await;
    let response = client::http1()
        .get(proxy.url("/hello"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-filtered-by"], name);
    let echo: serde_json::Value = response.json().await.unwrap();
    assert_eq!(echo["headers"]["x-greeting"], "hello", "{echo}");
    let response = client::http1()
        .get(proxy.url("/forbidden/x"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403);
    assert!(response.headers().get("grpc-status").is_none());
    assert_eq!(
        response.text().await.unwrap(),
        format!("denied by {name}\n")
    );
}

#[tokio::test]
async fn a_new_filter_project_builds_passes_its_tests_and_serves_with_no_edit() {
    use_built_binary();
    let parent = tempfile::tempdir().unwrap();
    let parent_str = parent.path().to_str().unwrap();
    let out = run_edgeward(&["filter", "new", "hello-filter", "--dir", parent_str], &[]);
    assert!(out.status.success(), "{out:?}");
    let project = parent.path().join("hello-filter");

    cargo(
        &project,
        &["build", "--target", "wasm32-wasip1", "--release"],
    );
    cargo(&project, &["test"]);

    serves_as_configured(
        &project,
        "target/wasm32-wasip1/release/hello_filter.wasm",
        "hello-filter",
    )
    .await;

    // `filter test` tells the same story without a proxy: what goes upstream, what the
    // client gets, and the filter's log.
    let module = project.join("target/wasm32-wasip1/release/hello_filter.wasm");
    let module = module.to_str().unwrap();
    let config = r#"{"greeting": "hello", "deny_path": "/forbidden"}"#;
    let files = [
        (
            "ok.http",
            "GET /hello HTTP/1.1\r\nHost: example.com\r\n\r\n",
        ),
        (
            "deny.http",
            "GET /forbidden/x HTTP/1.1\r\nHost: example.com\r\n\r\n",
        ),
    ];
    let out = run_edgeward(
        &[
            "filter",
            "test",
            module,
            "--config",
            config,
            "--request",
            "{dir}/ok.http",
            "--json",
        ],
        &files,
    );
    assert!(out.status.success(), "{out:?}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let upstream = &report["report"]["upstream_gets"];
    assert!(
        upstream["headers"]
            .as_array()
            .unwrap()
            .contains(&serde_json::json!(["x-greeting", "hello"])),
        "{report}"
    );
    // What the filter used: some CPU, and its instance's memory.
    let usage = &report["report"]["usage"][0];
    assert_eq!(usage["filter"], "hello_filter", "{report}");
    assert!(usage["cpu_microseconds"].as_u64().unwrap() > 0, "{report}");
    assert!(
        usage["memory_bytes"].as_u64().unwrap() >= 64 * 1024,
        "{report}"
    );
    let client = &report["report"]["client_gets"];
    assert_eq!(client["head"], "200");
    assert!(client["headers"]
        .as_array()
        .unwrap()
        .contains(&serde_json::json!(["x-filtered-by", "hello-filter"])));
    assert!(
        report["log"].as_array().unwrap().iter().any(|line| line
            .as_str()
            .unwrap()
            .contains("hello-filter: :path: /hello")),
        "{report}"
    );
    let out = run_edgeward(
        &[
            "filter",
            "test",
            module,
            "--config",
            config,
            "--request",
            "{dir}/deny.http",
        ],
        &files,
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.starts_with("on_http_request_headers: answered 403\n"),
        "{text}"
    );
    assert!(text.contains("the upstream is never asked"), "{text}");
    assert!(text.contains("  denied by hello-filter\n"), "{text}");

    // The same told as YAML and JSON, with a body each way and a scripted response.
    let files = [
        (
            "post.yaml",
            "method: POST\npath: /upload\nheaders: {host: example.com}\nbody: hello there\n",
        ),
        (
            "created.json",
            r#"{"status": 201, "headers": [["x-a", "1"], ["x-a", "2"]], "body": "made"}"#,
        ),
    ];
    let out = run_edgeward(
        &[
            "filter",
            "test",
            module,
            "--request",
            "{dir}/post.yaml",
            "--response",
            "{dir}/created.json",
            "--json",
        ],
        &files,
    );
    assert!(out.status.success(), "{out:?}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let report = &report["report"];
    assert_eq!(report["upstream_gets"]["head"], "POST /upload", "{report}");
    assert_eq!(report["upstream_gets"]["body"], "hello there", "{report}");
    assert_eq!(report["client_gets"]["head"], "201", "{report}");
    assert_eq!(report["client_gets"]["body"], "made", "{report}");
    let repeated = report["client_gets"]["headers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|h| h[0] == "x-a")
        .count();
    assert_eq!(repeated, 2, "{report}");
}

#[test]
fn filter_test_exits_1_with_the_crash_report_when_the_filter_traps() {
    use_built_binary();
    let out = run_edgeward(
        &[
            "filter",
            "test",
            edgeward_testkit::filters::HOSTILE,
            "--request",
            "{dir}/trap.http",
        ],
        &[("trap.http", "GET /trap HTTP/1.1\r\nHost: x\r\n\r\n")],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.starts_with("on_http_request_headers: failed 500 trap:"),
        "{text}"
    );
    assert!(text.contains("\"error\":\"trap\""), "{text}");
    assert!(text.contains("panicked at "), "{text}");
    assert!(text.contains("wasm backtrace:"), "{text}");
}

#[test]
fn filter_test_gives_the_filter_the_connection_facts_of_a_properties_file() {
    use_built_binary();
    let config = r#"{"paths": [["source", "address"], ["request", "protocol"], ["request", "scheme"], ["connection", "tls_version"], ["connection", "requested_server_name"], ["tenant"]]}"#;
    let out = run_edgeward(
        &[
            "filter",
            "test",
            edgeward_testkit::filters::PROPERTIES,
            "--config",
            config,
            "--request",
            "{dir}/get.http",
            "--properties",
            "{dir}/props.yaml",
            "--json",
        ],
        &[
            ("get.http", "GET /x HTTP/1.1\r\nHost: a.example\r\n\r\n"),
            (
                "props.yaml",
                "source.address: 203.0.113.7:51234\nrequest.protocol: HTTP/2\nconnection.tls_version: TLSv1.3\nconnection.requested_server_name: a.example\ntenant: acme\n",
            ),
        ],
    );
    assert!(out.status.success(), "{out:?}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let headers = report["report"]["client_gets"]["headers"]
        .as_array()
        .unwrap();
    let prop = |name: &str| {
        headers
            .iter()
            .find(|h| h[0] == format!("x-prop-{name}"))
            .map(|h| h[1].as_str().unwrap().to_string())
            .unwrap_or_else(|| panic!("no x-prop-{name} in {report}"))
    };
    assert_eq!(prop("source.address"), "203.0.113.7:51234");
    assert_eq!(prop("request.protocol"), "HTTP/2");
    assert_eq!(prop("request.scheme"), "https");
    assert_eq!(prop("connection.tls_version"), "TLSv1.3");
    assert_eq!(prop("connection.requested_server_name"), "a.example");
    assert_eq!(prop("tenant"), "acme");
}

#[test]
fn filter_test_answers_callouts_with_scripted_responses() {
    use_built_binary();
    let files = [
        ("get.http", "GET /protected HTTP/1.1\r\nHost: x\r\n\r\n"),
        ("auth.http", "HTTP/1.1 200 OK\r\nx-origin: auth\r\n\r\nok"),
    ];
    let test = |extra: &[&str]| {
        let mut args = vec![
            "filter",
            "test",
            edgeward_testkit::filters::CALLOUT,
            "--config",
            r#"{"upstream": "auth", "path": "/check"}"#,
            "--request",
            "{dir}/get.http",
        ];
        args.extend_from_slice(extra);
        let out = run_edgeward(&args, &files);
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    // Answered: the filter's callout handling shows, as in the proxy (host_services.rs).
    let (code, text) = test(&["--callout", "auth={dir}/auth.http"]);
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains("  + x-callout-status: 200\n  + x-callout-origin: auth\n"),
        "{text}"
    );
    assert!(text.contains("callout: auth answered (token 1, "), "{text}");
    // Without it the filter may not call `auth`: it answers 500 itself, as in the proxy.
    let (code, text) = test(&[]);
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.starts_with("on_http_request_headers: answered 500\n"),
        "{text}"
    );
    assert!(text.contains("x-callout-error: BadArgument"), "{text}");
}

#[tokio::test]
async fn filter_test_runs_a_routes_chain_from_a_configuration_as_the_proxy_does() {
    use_built_binary();
    let origin = Origin::start("origin").await;
    let auth = Origin::start("auth").await;
    // One configuration for both: a chain of four filters, one of which calls `auth` and one
    // rewrites the response body.
    let yaml = |listen: &str, origin: &str, auth: &str| {
        format!(
            r#"
listeners: [{{address: "{listen}"}}]
workers: 1
upstreams:
  origin: {{endpoints: ["{origin}"]}}
  auth: {{endpoints: ["{auth}"]}}
filters:
  first:
    module: {rewriter}
    config: {{name: first, request: {{set: {{x-edge: "1", ":path": /status/201}}}}, response: {{set: {{x-served-by: edgeward}}}}}}
  bodies:
    module: {body_rewriter}
    config: {{response: {{find: status, replace: answer}}}}
  check:
    module: {callout}
    config: {{upstream: auth, path: /check}}
    callouts: [auth]
  second:
    module: {rewriter}
    config: {{name: second}}
routes:
  - {{name: plain, match: {{path_prefix: /plain}}, upstream: origin}}
  - {{name: api, upstream: origin, filters: [first, bodies, check, second]}}
"#,
            rewriter = filters::HEADER_REWRITER,
            callout = filters::CALLOUT,
            body_rewriter = filters::BODY_REWRITER,
        )
    };
    let proxy = Proxy::start(&yaml(
        "{{listen}}",
        &origin.addr().to_string(),
        &auth.addr().to_string(),
    ))
    .await;
    let response = client::http1()
        .get(proxy.url("/original"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let proxy_chain: Vec<_> = response
        .headers()
        .get_all("x-chain")
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .collect();
    assert_eq!(proxy_chain, ["second", "first"]);
    let proxy_body = response.text().await.unwrap();
    assert_eq!(proxy_body, "answer 201\n");
    let seen = origin.last_request_headers();

    // `filter test` on the same file (its origin never asked, `auth` scripted) tells the same.
    let files = [
        (
            "edgeward.yaml",
            yaml("127.0.0.1:1", "127.0.0.1:9", "127.0.0.1:9"),
        ),
        (
            "get.http",
            "GET /original HTTP/1.1\r\nHost: x\r\n\r\n".to_string(),
        ),
        (
            "auth.http",
            "HTTP/1.1 200 OK\r\nx-origin: auth\r\n\r\nok".to_string(),
        ),
        // What the origin answers to `/status/201`.
        (
            "created.http",
            "HTTP/1.1 201 Created\r\ncontent-length: 11\r\n\r\nstatus 201\n".to_string(),
        ),
    ];
    let files: Vec<_> = files.iter().map(|(n, c)| (*n, c.as_str())).collect();
    let test = |extra: &[&str]| {
        let mut args = vec![
            "filter",
            "test",
            "{dir}/edgeward.yaml",
            "--request",
            "{dir}/get.http",
            "--callout",
            "auth={dir}/auth.http",
            "--response",
            "{dir}/created.http",
            "--json",
        ];
        args.extend_from_slice(extra);
        run_edgeward(&args, &files)
    };
    for route in [&[][..], &["--route", "api"][..]] {
        let out = test(route);
        assert!(out.status.success(), "{out:?}");
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let report = &report["report"];
        let values = |message: &serde_json::Value, name: &str| -> Vec<String> {
            message["headers"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|h| h[0] == name)
                .map(|h| h[1].as_str().unwrap().to_string())
                .collect()
        };
        let upstream = &report["upstream_gets"];
        assert_eq!(upstream["head"], "GET /status/201", "{report}");
        for name in ["x-edge", "x-callout-status", "x-callout-origin"] {
            assert_eq!(
                values(upstream, name),
                [seen[name].clone()],
                "{name}: {report}"
            );
        }
        assert_eq!(values(upstream, "x-chain").join(", "), seen["x-chain"]);
        let client = &report["client_gets"];
        assert_eq!(values(client, "x-chain"), proxy_chain, "{report}");
        assert_eq!(values(client, "x-served-by"), ["edgeward"], "{report}");
        assert_eq!(client["head"], "201", "{report}");
        assert_eq!(client["body"], proxy_body, "{report}");
        let used: Vec<_> = report["usage"]
            .as_array()
            .unwrap()
            .iter()
            .map(|u| u["filter"].as_str().unwrap())
            .collect();
        assert_eq!(used, ["first", "bodies", "check", "second"], "{report}");
    }
    // A route without filters, or none of that name, is said.
    let out = test(&["--route", "nowhere"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no route `nowhere`"),
        "{out:?}"
    );
}

#[tokio::test]
async fn a_new_assemblyscript_filter_builds_passes_its_tests_and_serves_with_no_edit() {
    use_built_binary();
    let parent = tempfile::tempdir().unwrap();
    let parent_str = parent.path().to_str().unwrap();
    let out = run_edgeward(
        &[
            "filter",
            "new",
            "as-filter",
            "--lang",
            "assemblyscript",
            "--dir",
            parent_str,
        ],
        &[],
    );
    assert!(out.status.success(), "{out:?}");
    let project = parent.path().join("as-filter");
    // `npm test` builds the module and checks it with `edgeward filter test`: this edgeward.
    let edgeward = Path::new(env!("CARGO_BIN_EXE_edgeward"));
    npm(&project, &["install", "--no-audit", "--no-fund"], edgeward);
    npm(&project, &["test"], edgeward);

    serves_as_configured(&project, "build/as-filter.wasm", "as-filter").await;
}

/// Runs npm in `project` with `args` and EDGEWARD set to `edgeward`; panics on failure.
fn npm(project: &Path, args: &[&str], edgeward: &Path) {
    let out = Command::new("npm")
        .args(args)
        .current_dir(project)
        .env("EDGEWARD", edgeward)
        .output()
        .unwrap_or_else(|e| panic!("running npm (`make test` installs it): {e}"));
    assert!(
        out.status.success(),
        "npm {args:?} in {}:\n{}\n{}",
        project.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn filter_test_reports_the_metrics_the_filter_defined() {
    use_built_binary();
    let out = run_edgeward(
        &[
            "filter",
            "test",
            filters::METRICS,
            "--request",
            "{dir}/post.http",
            "--json",
        ],
        &[("post.http", "POST /x HTTP/1.1\r\nHost: a\r\n\r\n")],
    );
    assert!(out.status.success(), "{out:?}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let metrics = report["report"]["metrics"].as_array().unwrap();
    let value = |name: &str| {
        metrics
            .iter()
            .find(|m| m["filter"] == "metrics" && m["name"] == name)
            .map(|m| m["value"].as_i64().unwrap())
            .unwrap_or_else(|| panic!("no {name} in {report}"))
    };
    // As the proxy counts them (host_services.rs): one request, its tag from its method, and
    // `in_flight` back to 0 once `on_log` ran.
    assert_eq!(value("requests_total"), 1);
    assert_eq!(value("requests_by_method=POST"), 1);
    assert_eq!(value("recorded_total"), 5);
    assert_eq!(value("body_size"), 1);
    assert_eq!(value("in_flight"), 0);
}
