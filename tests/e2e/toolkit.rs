//! The filter author's tools, as an author uses them: `filter new` makes a project that builds
//! with cargo, passes its own tests and serves through edgeward with no edit.

use std::path::Path;
use std::process::Command;

use edgeward_testkit::{client, run_edgeward, Proxy};

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

    // The configuration it came with is valid as written (its module path included).
    let config = project.join("edgeward.yaml");
    let out = run_edgeward(&["validate", "--config", config.to_str().unwrap()], &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // And serves: only its port changes here, to one free for the test, and its module's
    // path becomes absolute, as the proxy runs from a folder of its own.
    let module = project.join("target/wasm32-wasip1/release/hello_filter.wasm");
    let yaml = std::fs::read_to_string(&config)
        .unwrap()
        .replace("127.0.0.1:8080", "{{listen}}")
        .replace(
            "target/wasm32-wasip1/release/hello_filter.wasm",
            module.to_str().unwrap(),
        );
    let proxy = Proxy::start(&yaml).await;
    let response = client::http1()
        .get(proxy.url("/hello"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-filtered-by"], "hello-filter");
    let echo: serde_json::Value = response.json().await.unwrap();
    assert_eq!(echo["headers"]["x-greeting"], "hello", "{echo}");
    let response = client::http1()
        .get(proxy.url("/forbidden/x"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403);
    assert_eq!(response.text().await.unwrap(), "denied by hello-filter\n");
}
