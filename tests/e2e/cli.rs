//! The `edgeward` command: `validate` reports every problem with file:line:column, `run`
//! refuses an invalid file, and every configuration shipped in config/ is valid.

use std::path::{Path, PathBuf};

use edgeward_testkit::run_edgeward;

use crate::demo::{demo_certificates, repository};
use crate::support::use_built_binary;

const THREE_MISTAKES: &str = r#"listeners:
  - address: 127.0.0.1:8080
upstreams:
  origin:
    endpoints: ["127.0.0.1:9001"]
    conect_timeout: 2s
    read_timeout: soon
routes:
  - match: { path_prefix: / }
    upstream: orign
  - match: { path_regex: "/items/(" }
    upstream: origin
"#;

#[test]
fn validate_reports_every_problem_with_its_position() {
    use_built_binary();
    let out = run_edgeward(
        &["validate", "--config", "{dir}/bad.yaml"],
        &[("bad.yaml", THREE_MISTAKES)],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    for (position, words) in [
        (
            "bad.yaml:6:5:",
            "unknown key `conect_timeout`; did you mean `connect_timeout`?",
        ),
        ("bad.yaml:7:19:", "`read_timeout`: expected a duration"),
        (
            "bad.yaml:10:15:",
            "names upstream `orign`, which is not defined (defined: origin)",
        ),
        ("bad.yaml:11:26:", "`path_regex` does not compile"),
    ] {
        let line = stderr
            .lines()
            .find(|l| l.contains(position))
            .unwrap_or_else(|| panic!("no problem reported at {position}:\n{stderr}"));
        assert!(line.contains(words), "{line}");
    }
    assert!(
        stderr.lines().any(|line| line == "4 problems found"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("panicked") && !stderr.contains("{ "),
        "{stderr}"
    );
}

#[test]
fn run_refuses_an_invalid_configuration_with_the_same_messages() {
    use_built_binary();
    let out = run_edgeward(
        &["run", "--config", "{dir}/bad.yaml"],
        &[("bad.yaml", THREE_MISTAKES)],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("bad.yaml:10:15:") && stderr.contains("not starting"),
        "{stderr}"
    );
}

#[test]
fn hostile_inputs_get_messages_never_panics() {
    use_built_binary();
    for text in [
        "",
        "[",
        "listeners: 7",
        "- just\n- a list",
        "listeners: [{address: nowhere}]\nupstreams: {u: {endpoints: []}}\nroutes: [{upstream: u}]",
        "upstreams: {u: {builtin: teapot}}\nroutes: {x: 1}",
        "listeners: &a [*a]",
        "\u{0}\u{1}binary",
    ] {
        let out = run_edgeward(
            &["validate", "--config", "{dir}/c.yaml"],
            &[("c.yaml", text)],
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{text:?}: {stderr}");
        assert!(stderr.contains("c.yaml"), "{text:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{text:?}: {stderr}");
    }
    let missing = run_edgeward(&["validate", "--config", "{dir}/missing.yaml"], &[]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("cannot read"));
}

/// config/edgeward.yaml byte for byte, in a copy of the repository's layout (`config/geo` and
/// `filters` linked to the real ones) whose `config/certs/` holds a certificate made here: the
/// real one is made by `make run` into the git-ignored config/certs/, which a fresh clone has
/// not.
fn demo_with_certificates(dir: &Path) -> PathBuf {
    let repository = repository();
    let config = dir.join("config");
    std::fs::create_dir_all(config.join("certs")).unwrap();
    std::os::unix::fs::symlink(repository.join("config/geo"), config.join("geo")).unwrap();
    std::os::unix::fs::symlink(repository.join("filters"), dir.join("filters")).unwrap();
    for (name, contents) in demo_certificates().files {
        std::fs::write(config.join(name), contents).unwrap();
    }
    let demo = config.join("edgeward.yaml");
    std::fs::copy(repository.join("config/edgeward.yaml"), &demo).unwrap();
    demo
}

#[test]
fn every_shipped_configuration_is_valid() {
    use_built_binary();
    let config_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config");
    let copy = tempfile::tempdir().unwrap();
    let mut files = vec![demo_with_certificates(copy.path())];
    for entry in std::fs::read_dir(config_dir.join("examples")).unwrap() {
        files.push(entry.unwrap().path());
    }
    for file in files {
        let path = file.display().to_string();
        let out = run_edgeward(&["validate", "--config", &path], &[]);
        assert!(
            out.status.success(),
            "{path}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "ok");
    }
}

#[test]
fn run_refuses_a_listener_address_in_use_naming_it_and_why() {
    use_built_binary();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = taken.local_addr().unwrap();
    let yaml = format!(
        "listeners: [{{address: \"{address}\"}}]\nupstreams: {{u: {{builtin: echo}}}}\nroutes: [{{upstream: u}}]\n"
    );
    let out = run_edgeward(&["run", "--config", "{dir}/c.yaml"], &[("c.yaml", &yaml)]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "cannot listen on {address}: Address already in use"
        )),
        "{stderr}"
    );
    // The cause is told once, after the error it caused.
    assert_eq!(
        stderr.matches("Address already in use").count(),
        1,
        "{stderr}"
    );
}

#[test]
fn validate_reports_every_filter_that_rejects_its_configuration_at_its_config() {
    use_built_binary();
    let yaml = format!(
        r#"listeners: [{{address: "127.0.0.1:8080"}}]
upstreams: {{origin: {{endpoints: ["127.0.0.1:9001"]}}}}
filters:
  fine:
    module: {rewriter}
  check:
    module: {callout}
    config: {{mode: fanout}}
  never:
    module: {configure_fails}
    config: whatever
routes: [{{upstream: origin, filters: [fine, check, never]}}]
"#,
        rewriter = edgeward_testkit::filters::HEADER_REWRITER,
        callout = edgeward_testkit::filters::CALLOUT,
        configure_fails = edgeward_testkit::filters::CONFIGURE_FAILS,
    );
    let out = run_edgeward(
        &["validate", "--config", "{dir}/filters.yaml"],
        &[("filters.yaml", &yaml)],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    // Both, each at its `config`, with what the filter said of it when it said something.
    let problems: Vec<&str> = stderr.lines().filter(|l| l.contains(": error: ")).collect();
    assert_eq!(problems.len(), 2, "{stderr}");
    assert!(
        problems[0].contains("filters.yaml:8:13: error: filter `check`")
            && problems[0].contains("on_configure returned false")
            && problems[0].contains("callout: invalid configuration: mode `fanout` needs `fanout`"),
        "{stderr}"
    );
    assert!(
        problems[1].contains("filters.yaml:11:13: error: filter `never`")
            && problems[1].contains("on_configure returned false"),
        "{stderr}"
    );
    assert!(stderr.ends_with("2 problems found\n"), "{stderr}");
}

#[test]
fn filter_inspect_shows_what_a_module_is_and_whether_it_loads() {
    use_built_binary();
    let out = run_edgeward(
        &["filter", "inspect", edgeward_testkit::filters::CALLOUT],
        &[],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    for line in [
        "proxy-wasm ABI:  0.2.1 (supported)",
        "initializer:     _initialize",
        "allocator:       proxy_on_memory_allocate",
        "  proxy_on_request_headers\n",
        "  proxy_on_grpc_receive  (never called by edgeward)",
        "  env.proxy_http_call  provided",
        "loads in edgeward: yes",
    ] {
        assert!(text.contains(line), "{line:?} in\n{text}");
    }
    // A module importing what edgeward lacks: said, and exit 1; the JSON says the same.
    let unknown = edgeward_testkit::filters::UNKNOWN_IMPORT;
    let out = run_edgeward(&["filter", "inspect", unknown], &[]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("NOT PROVIDED: the filter cannot load"),
        "{text}"
    );
    assert!(text.ends_with("loads in edgeward: no\n"), "{text}");
    let out = run_edgeward(&["filter", "inspect", "--json", unknown], &[]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let missing: Vec<&serde_json::Value> = json["imports"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["provided"] == false)
        .collect();
    assert_eq!(missing.len(), 1, "{json}");
    // A file that is no module: a clear error.
    let out = run_edgeward(
        &["filter", "inspect", "{dir}/x.wasm"],
        &[("x.wasm", "text")],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr.contains("x.wasm: not a valid WebAssembly module"),
        "{stderr}"
    );
}
